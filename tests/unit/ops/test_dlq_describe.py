"""The pure parts of `pomona dlq list`: what a DLQ message names and why it is there."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pomona.core.contract import ImageMessage
from pomona.core.queues import Suspicion
from pomona.core.settings import Settings
from pomona.ops.dlq_describe import describe_event_body, describe_image_body, describe_message, receive_reason

SETTINGS = Settings(
    bucket="b", images_queue_url="https://sqs/123/p-images", events_queue_url="https://sqs/123/p-events"
)


def _image(**changes: Any) -> str:
    fields: dict[str, Any] = {
        "bucket": "b", "key": "uploads/Fig/f.jpg", "version_id": "v7", "etag": '"e"', "sha256": "a" * 64,
        "size": 10, "format": "JPEG", "width": 40, "height": 40, "mode": "RGB", "label": "Fig",
        "uploaded_at": "2026-12-01T00:00:00.000Z", "validated_at": "2026-12-01T00:00:00.000Z",
    }  # fmt: skip
    return ImageMessage(**(fields | changes)).to_json()


# -- what a message names, and why it is there ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "payload", "keys", "problem"),
    [
        pytest.param(
            _image(), "uploads/Fig/f.jpg (version v7, label 'Fig')", ("uploads/Fig/f.jpg",), None, id="ok"
        ),
        pytest.param(
            "{oops", "'{oops'", (), "not an ImageMessage: expected a JSON object, got '{oops'", id="not-json"
        ),
        pytest.param(
            "[1]", "'[1]'", (), "not an ImageMessage: expected a JSON object, got list", id="a-list"
        ),
        pytest.param(
            json.dumps({"schema_version": 1, "key": "uploads/Fig/g.jpg"}),
            "uploads/Fig/g.jpg",
            ("uploads/Fig/g.jpg",),
            "not an ImageMessage: expected fields ['bucket', 'etag', 'format', 'height', 'label', 'mode', 'sha256', "
            "'size', 'uploaded_at', 'validated_at', 'version_id', 'width'], got none for them",
            id="fields-missing",
        ),
        pytest.param(
            _image(format="GIF"),
            "uploads/Fig/f.jpg (version v7, label 'Fig')",
            ("uploads/Fig/f.jpg",),
            "not what this deployment queues: format: expected one of ['JPEG', 'PNG', 'WEBP'], got 'GIF'",
            id="not-allowed-here",
        ),
    ],
)
def test_an_images_message_names_its_image_or_says_what_is_wrong(
    body: str, payload: str, keys: tuple[str, ...], problem: str | None
) -> None:
    assert describe_image_body(body, SETTINGS) == (payload, keys, problem)


def _notification(*keys: str) -> str:
    return json.dumps(
        {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": k}}} for k in keys]}
    )


@pytest.mark.parametrize(
    ("body", "payload", "keys", "problem"),
    [
        pytest.param(
            _notification("uploads/Apple+Red/caf%C3%A9+%2B1.jpg"),
            "uploads/Apple Red/café +1.jpg",
            ("uploads/Apple Red/café +1.jpg",),
            None,
            id="url-encoded",
        ),
        pytest.param(
            _notification("uploads/a/1", "uploads/a/2", "uploads/a/3", "uploads/a/4"),
            "uploads/a/1, uploads/a/2, uploads/a/3 (+1 more)",
            ("uploads/a/1", "uploads/a/2", "uploads/a/3", "uploads/a/4"),
            None,
            id="many",
        ),
        pytest.param(
            json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}),
            "s3:TestEvent (names no object)",
            (),
            None,
            id="test-event",
        ),
        pytest.param(
            "hello", "'hello'", (), "expected an S3 notification (a JSON object), got 'hello'", id="not-json"
        ),
        pytest.param(
            json.dumps({"detail": {}}),
            "",
            (),
            "expected an S3 notification with Records or s3:TestEvent, got keys ['detail']",
            id="not-a-notification",
        ),
        pytest.param(
            json.dumps({"Records": [{"s3": {}}]}),
            "",
            (),
            "expected Records[0].s3.object.key, got '{\"s3\": {}}'",
            id="record-without-key",
        ),
    ],
)
def test_an_events_message_names_its_decoded_keys_or_says_what_is_wrong(
    body: str, payload: str, keys: tuple[str, ...], problem: str | None
) -> None:
    assert describe_event_body(body) == (payload, keys, problem)


def test_a_well_formed_message_is_there_for_its_receives_and_the_look_is_not_counted() -> None:
    message = {
        "MessageId": "m-1",
        "Body": _image(),
        "Attributes": {"ApproximateReceiveCount": "6", "SentTimestamp": "1764547200123"},
    }

    peeked = describe_message("images", message, settings=SETTINGS, max_receive_count=5)

    assert (peeked.message_id, peeked.receives, peeked.sent_at) == ("m-1", 5, "2025-12-01T00:00:00.123Z")
    assert peeked.reason == "exceeded maxReceiveCount (5 receives, limit 5)"


def test_a_message_the_job_dead_lettered_shows_the_failure_it_caused() -> None:
    # GIVEN a message the job sent to the DLQ itself: it failed a run on its own, the third run it failed
    suspicion = Suspicion(2, 1, "Py4JJavaError: earlier").after_failure(
        1, "Py4JJavaError: Python worker exited"
    )
    message = {
        "MessageId": "m-2",
        "Body": _image(),
        "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1764547200123"},
        "MessageAttributes": suspicion.attributes(),
    }

    # WHEN `dlq list` describes it, THEN it says why, not "no stored reason"
    peeked = describe_message("images", message, settings=SETTINGS, max_receive_count=5)
    assert (
        peeked.reason == "failed a run on its own (after 3 failed runs): Py4JJavaError: Python worker exited"
    )


def test_a_key_that_is_not_unicode_text_is_shown_escaped() -> None:
    # GIVEN a malformed message whose key holds a lone surrogate (JSON's "\\ud800")
    body = '{"schema_version": 1, "key": "uploads/Fig/\\ud800.jpg"}'

    # WHEN `dlq list` describes it, THEN the key is shown escaped, so a terminal can print it
    payload, keys, problem = describe_image_body(body, SETTINGS)
    assert payload == "uploads/Fig/\\ud800.jpg"
    assert keys == (payload,)
    assert problem is not None
    assert problem.startswith("not an ImageMessage: ")


def test_receive_reason_under_the_limit_has_no_stored_reason() -> None:
    assert (
        receive_reason(0, 3)
        == "no stored reason: 0 receives, under maxReceiveCount 3 (sent to the DLQ directly?)"
    )
    assert receive_reason(7, 3) == "exceeded maxReceiveCount (7 receives, limit 3)"
