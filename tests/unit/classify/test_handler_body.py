"""The photo a Function URL event carries: base64-decoded when flagged, and whatever is not base64 is judged as an
empty photo (400), never a function error."""

from __future__ import annotations

import base64

import pytest
from aws_lambda_powertools.utilities.data_classes import LambdaFunctionUrlEvent

from pomona.classify.handler import _body


def _event(body: str, *, encoded: bool) -> LambdaFunctionUrlEvent:
    return LambdaFunctionUrlEvent({"body": body, "isBase64Encoded": encoded})


def test_a_base64_body_is_the_photo_and_a_plain_one_its_text() -> None:
    photo = bytes(range(256)) * 40
    assert _body(_event(base64.b64encode(photo).decode(), encoded=True)) == photo
    assert _body(_event("plain text", encoded=False)) == b"plain text"


@pytest.mark.parametrize("body", ["é", "ab=c", "abc", "YWJj\n", "YW Jj"])
def test_a_body_flagged_base64_that_is_not_is_an_empty_photo(body: str) -> None:
    assert _body(_event(body, encoded=True)) == b""
