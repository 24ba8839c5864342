"""The job's SQS batch calls read SQS's answer entry by entry, against the embedded SQS."""

from __future__ import annotations

from unittest.mock import ANY

import boto3
import pytest

from pomona.core.contract import ImageMessage
from pomona.core.outputs import lock_key
from pomona.core.queues import queue_depth
from pomona.core.settings import Settings
from pomona.featurize.lock import RunLock
from pomona.featurize.queue import Heartbeat, delete_messages, drain_queue


def _received(settings: Settings, count: int) -> list[str]:
    sqs = boto3.client("sqs")
    for i in range(count):
        sqs.send_message(QueueUrl=settings.images_queue_url, MessageBody=f"m{i}")
    messages = sqs.receive_message(QueueUrl=settings.images_queue_url, MaxNumberOfMessages=10)["Messages"]
    assert len(messages) == count
    return [m["ReceiptHandle"] for m in messages]


def test_deletes_report_the_receipts_sqs_refused(
    deployment: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN 12 received messages, and one receipt SQS never issued among them (two batches of 10)
    receipts = _received(deployment, 10) + _received(deployment, 2)
    sent = [*receipts[:5], "not-a-receipt", *receipts[5:]]

    # WHEN they are deleted
    left = delete_messages(boto3.client("sqs"), deployment.images_queue_url, sent)

    # THEN every real one is gone, and the refused one is returned and logged, not ignored
    assert left == ["not-a-receipt"]
    assert queue_depth(boto3.client("sqs"), deployment.images_queue_url) == {"visible": 0, "in_flight": 0}
    assert "Messages not deleted" in caplog.text


def test_a_heartbeat_logs_the_messages_it_could_not_keep_hidden(
    deployment: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a run holding two messages and the lock, one receipt of which SQS does not know
    sqs, s3 = boto3.client("sqs"), boto3.client("s3")
    lock = RunLock(s3, deployment.bucket, lock_key(deployment.output_prefix))
    lock.acquire()
    heartbeat = Heartbeat(sqs, deployment.images_queue_url, lock, every_s=3600, visibility_timeout_s=60)
    heartbeat.receipts = [*_received(deployment, 1), "not-a-receipt"]

    # WHEN it beats
    heartbeat.beat()
    lock.release()

    # THEN the real message stays hidden, and the lapse is logged
    assert queue_depth(sqs, deployment.images_queue_url) == {"visible": 0, "in_flight": 1}
    assert "visibility was not extended" in caplog.text


def _message(settings: Settings, **changes: object) -> str:
    fields: dict[str, object] = {
        "bucket": settings.bucket,
        "key": "uploads/Apple Red/a.jpg",
        "version_id": "v1",
        "etag": '"e"',
        "sha256": "0" * 64,
        "size": 100,
        "format": "JPEG",
        "width": 100,
        "height": 100,
        "mode": "RGB",
        "label": "Apple Red",
        "uploaded_at": "2026-12-01T00:00:00.000Z",
        "validated_at": "2026-12-01T00:00:00.000Z",
    }
    return ImageMessage(**(fields | changes)).to_json()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"bucket": "someone-elses-bucket"}, id="foreign-bucket"),
        pytest.param({"key": "models/pca/LATEST"}, id="key-outside-uploads"),
        pytest.param({"key": "uploads/../models/x.jpg"}, id="key-escaping-uploads"),
        pytest.param({"label": "Apple\u202eRed"}, id="bidi-override-label"),
        pytest.param({"format": "TIFF"}, id="format-not-allowed"),
        pytest.param({"width": 100_000, "height": 100_000}, id="too-many-pixels"),
    ],
)
def test_hostile_messages_are_never_taken(deployment: Settings, changes: dict[str, object]) -> None:
    # GIVEN a message ingestion would have queued, and one naming what it never would
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=deployment.images_queue_url, MessageBody=_message(deployment))
    sqs.send_message(QueueUrl=deployment.images_queue_url, MessageBody=_message(deployment, **changes))

    # WHEN the job drains the queue
    received = drain_queue(sqs, deployment, visibility_timeout_s=60, wait_s=0)

    # THEN it takes the real one alone; the hostile one is refused (for the driver to quarantine), saying why
    assert [m.key for m, _ in received.messages] == ["uploads/Apple Red/a.jpg"]
    assert [(m.to_json(), detail.split(":")[0]) for m, _, detail in received.refused] == [
        (_message(deployment, **changes), ANY)
    ]
    assert received.malformed == 0


def test_a_message_that_is_no_image_message_is_counted_and_left_for_the_dlq(deployment: Settings) -> None:
    # GIVEN a message that is not JSON, and one that is JSON but no ImageMessage
    sqs = boto3.client("sqs")
    for body in ["not json {", '{"bucket": "b"}']:
        sqs.send_message(QueueUrl=deployment.images_queue_url, MessageBody=body)

    # WHEN the job drains the queue
    received = drain_queue(sqs, deployment, visibility_timeout_s=60, wait_s=0)

    # THEN both are counted as malformed, and stay on the queue (in flight) for the DLQ
    assert (received.messages, received.refused, received.malformed) == ([], [], 2)
    assert queue_depth(sqs, deployment.images_queue_url) == {"visible": 0, "in_flight": 2}
