"""The ingestor's decisions that need no AWS: is the event's upload still current, which version of a key is the
newest, and how a failure is named."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from pomona.ingest.ingestor import failure_code, is_current_version, newest_version

ETAG = '"9dd4e461268c8034f5c8564e155c67a6"'  # pragma: allowlist secret (an ETag: md5 of a test body)


@pytest.mark.parametrize(
    ("version_id", "etag", "head", "current"),
    [
        pytest.param("v1", None, {"VersionId": "v1", "ETag": ETAG}, True, id="same-version"),
        pytest.param("v1", ETAG, {"VersionId": "v2", "ETag": ETAG}, False, id="replaced-with-the-same-bytes"),
        pytest.param("v1", None, {"ETag": ETAG}, False, id="versioning-gone-from-the-answer"),
        pytest.param(None, ETAG.strip('"'), {"ETag": ETAG}, True, id="unversioned-same-etag"),
        pytest.param(None, "0" * 32, {"ETag": ETAG}, False, id="unversioned-replaced"),
        pytest.param("null", ETAG, {"VersionId": "null", "ETag": ETAG}, True, id="null-version-same-etag"),
        pytest.param(
            "null", "0" * 32, {"VersionId": "null", "ETag": ETAG}, False, id="null-version-replaced"
        ),
        pytest.param(None, None, {"VersionId": "v2", "ETag": ETAG}, True, id="nothing-to-tell-by"),
    ],
)
def test_is_current_version(
    version_id: str | None, etag: str | None, head: dict[str, Any], current: bool
) -> None:
    assert is_current_version(version_id, etag, head) is current


def _client_error(status: int, code: str | None) -> ClientError:
    response: Any = {"ResponseMetadata": {"HTTPStatusCode": status}}
    if code is not None:
        response["Error"] = {"Code": code, "Message": ""}
    return ClientError(response, "HeadObject")


@pytest.mark.parametrize(
    ("err", "code"),
    [
        pytest.param(_client_error(403, "403"), "AccessDenied", id="head-403"),
        pytest.param(_client_error(403, "AccessDenied"), "AccessDenied", id="get-403"),
        pytest.param(_client_error(403, "InvalidObjectState"), "InvalidObjectState", id="archived"),
        pytest.param(_client_error(400, "400"), "BadRequest", id="head-400"),
        pytest.param(_client_error(418, "418"), "Http418", id="head-unnamed-status"),
        pytest.param(_client_error(500, None), "InternalError", id="no-error-document"),
        pytest.param(
            EndpointConnectionError(endpoint_url="https://s3"), "EndpointConnectionError", id="no-route"
        ),
    ],
)
def test_failure_code_is_s3s_code_or_named_from_the_status(err: Exception, code: str) -> None:
    assert failure_code(err) == code


class _Listing:
    """An S3 client whose ListObjectVersions answers `pages`, one per call, as the paginator would."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.read = 0

    def get_paginator(self, name: str) -> _Listing:
        assert name == "list_object_versions"
        return self

    def paginate(self, **kwargs: Any) -> Any:
        assert kwargs == {"Bucket": "b", "Prefix": "uploads/A/x.jpg"}
        for page in self.pages:
            self.read += 1
            yield page


KEY = "uploads/A/x.jpg"


def _version(version_id: str, key: str = KEY) -> dict[str, str]:
    return {"Key": key, "VersionId": version_id}


@pytest.mark.parametrize(
    ("pages", "newest", "read"),
    [
        pytest.param([{"Versions": [_version("v2"), _version("v1")]}], "v2", 1, id="newest-first"),
        pytest.param(
            [{"DeleteMarkers": [_version("m2"), _version("m1")]}, {"Versions": [_version("v1")]}],
            "v1",
            2,
            id="beneath-a-page-of-markers",
        ),
        pytest.param(
            [
                {"DeleteMarkers": [_version("m1")], "Versions": [_version("w1", KEY + ".bak")]},
                {"Versions": [_version("w2", KEY + ".bak")]},
            ],
            None,
            1,
            id="only-markers-then-a-longer-key",
        ),
        pytest.param([{}], None, 1, id="no-versions"),
    ],
)
def test_newest_version_is_the_keys_first_object_version_listed(
    pages: list[dict[str, Any]], newest: str | None, read: int
) -> None:
    s3 = _Listing(pages)
    assert newest_version(s3, "b", KEY) == newest  # type: ignore[arg-type]
    assert s3.read == read
