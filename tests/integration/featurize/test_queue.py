"""The job's SQS batch calls read SQS's answer entry by entry, against the embedded SQS."""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from unittest.mock import ANY

import boto3
import pytest

from pomona.core.aws import get_json
from pomona.core.contract import ImageMessage
from pomona.core.outputs import lock_key
from pomona.core.queues import queue_depth
from pomona.core.settings import Settings
from pomona.featurize.lock import RunLock
from pomona.featurize.queue import Heartbeat, delete_messages, drain_queue


def _held_by(heartbeat: Heartbeat, settings: Settings, count: int, *, visibility_timeout_s: int = 60) -> None:
    """`count` valid messages, drained as the job does into `heartbeat`."""
    sqs = boto3.client("sqs")
    for i in range(count):
        sqs.send_message(QueueUrl=settings.images_queue_url, MessageBody=_message(settings, key=_key(i)))
    drain_queue(sqs, settings, visibility_timeout_s=visibility_timeout_s, wait_s=0, on_receive=heartbeat.hold)


def _key(i: int) -> str:
    return f"uploads/Apple Red/{i}.jpg"


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


def test_a_heartbeat_without_progress_keeps_messages_hidden_but_lets_the_lock_lapse(
    deployment: Settings,
) -> None:
    # GIVEN a run holding a message and the lock, whose watchdog sees no progress
    sqs, s3 = boto3.client("sqs"), boto3.client("s3")
    lock = RunLock(s3, deployment.bucket, lock_key(deployment.output_prefix))
    lock.acquire()
    progressing = False
    heartbeat = Heartbeat(
        sqs,
        deployment.images_queue_url,
        lock,
        every_s=3600,
        visibility_timeout_s=60,
        progressing=lambda: progressing,
    )
    heartbeat.receipts = _received(deployment, 1)

    def expires_at() -> str:
        found = get_json(s3, deployment.bucket, lock_key(deployment.output_prefix))
        assert found is not None
        return str(found[0]["expires_at"])

    before = expires_at()

    # WHEN it beats, THEN the message stays hidden (the run is giving it back) but the lock is not renewed
    time.sleep(0.01)
    heartbeat.beat()
    assert expires_at() == before
    assert queue_depth(sqs, deployment.images_queue_url) == {"visible": 0, "in_flight": 1}

    # AND once progress is made again, the next beat renews it
    progressing = True
    heartbeat.beat()
    assert expires_at() > before
    lock.release()


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
        pytest.param({"size": Settings().max_bytes + 1}, id="size-over-the-limit"),
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
    assert [h.message.key for h in received.messages] == ["uploads/Apple Red/a.jpg"]
    assert [(r.message.to_json(), r.detail.split(":")[0]) for r in received.refused] == [
        (_message(deployment, **changes), ANY)
    ]
    assert received.malformed == 0


def test_a_message_that_is_no_image_message_is_counted_and_left_for_the_dlq(deployment: Settings) -> None:
    # GIVEN a message that is not JSON, one that is JSON but no ImageMessage, and one nested deeper than any parser
    sqs = boto3.client("sqs")
    for body in ["not json {", '{"bucket": "b"}', "[" * 100_000 + "]" * 100_000]:
        sqs.send_message(QueueUrl=deployment.images_queue_url, MessageBody=body)

    # WHEN the job drains the queue
    received = drain_queue(sqs, deployment, visibility_timeout_s=60, wait_s=0)

    # THEN all are counted as malformed, and stay on the queue (in flight) for the DLQ
    assert (received.messages, received.refused, received.malformed) == ([], [], 3)
    assert queue_depth(sqs, deployment.images_queue_url) == {"visible": 0, "in_flight": 3}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("key", "uploads/Apple Red/\ud800.jpg", id="key"),
        pytest.param("label", "Apple \udfff", id="label"),
        pytest.param("bucket", "\ud800", id="bucket"),
        pytest.param("etag", '"\ud800"', id="etag"),
        pytest.param("version_id", "v\ud800", id="version-id"),
        pytest.param("mode", "RGB\ud800", id="mode"),
    ],
)
def test_a_message_whose_text_is_no_unicode_is_malformed_not_refused(
    deployment: Settings, field: str, value: str
) -> None:
    # GIVEN a valid message, and one with a lone surrogate in a field (JSON's escape carries it; it would raise
    # UnicodeEncodeError wherever the driver or an executor wrote it, an S3 key or a sidecar included)
    sqs = boto3.client("sqs")
    body = json.dumps(json.loads(_message(deployment)) | {field: value})
    for message in [_message(deployment), body]:
        sqs.send_message(QueueUrl=deployment.images_queue_url, MessageBody=message)

    # WHEN the job drains the queue
    received = drain_queue(sqs, deployment, visibility_timeout_s=60, wait_s=0)

    # THEN the valid one is taken; the other is malformed, not refused (a sidecar under its key could not be
    # written), and stays on the queue (in flight) for the DLQ, where `pomona dlq list` shows why
    assert [h.message.key for h in received.messages] == ["uploads/Apple Red/a.jpg"]
    assert (received.refused, received.malformed) == ([], 1)
    assert queue_depth(sqs, deployment.images_queue_url) == {"visible": 0, "in_flight": 2}


def test_the_drain_hands_each_receive_to_the_callback_as_it_goes(deployment: Settings) -> None:
    # GIVEN 25 valid messages, and a callback noting what it is handed and what the queue holds then
    sqs, url = boto3.client("sqs"), deployment.images_queue_url
    for i in range(25):
        sqs.send_message(QueueUrl=url, MessageBody=_message(deployment, key=_key(i)))
    calls: list[tuple[list[str], dict[str, int]]] = []

    def note(receipts: list[str]) -> None:
        calls.append((receipts, queue_depth(sqs, url)))

    # WHEN the job drains the queue
    received = drain_queue(sqs, deployment, visibility_timeout_s=60, wait_s=0, on_receive=note)

    # THEN each receive's receipts were handed over as it was made, while the rest still waited on the queue
    assert [(len(receipts), depth) for receipts, depth in calls] == [
        (10, {"visible": 15, "in_flight": 10}),
        (10, {"visible": 5, "in_flight": 20}),
        (5, {"visible": 0, "in_flight": 25}),
    ]
    assert [r for receipts, _ in calls for r in receipts] == received.receipts


def test_the_drain_hands_over_refused_messages_but_not_malformed_ones(deployment: Settings) -> None:
    # GIVEN a valid message, one naming another bucket, and one that is no ImageMessage
    sqs = boto3.client("sqs")
    for body in [_message(deployment), _message(deployment, bucket="someone-elses-bucket"), "not json {"]:
        sqs.send_message(QueueUrl=deployment.images_queue_url, MessageBody=body)
    calls: list[list[str]] = []

    # WHEN the job drains the queue
    received = drain_queue(sqs, deployment, visibility_timeout_s=60, wait_s=0, on_receive=calls.append)

    # THEN the refused one is held too, until the driver quarantines and deletes it; the malformed one is left
    # alone, for the DLQ
    assert len(calls) == 1
    assert sorted(calls[0]) == sorted([*received.receipts, *(r.receipt for r in received.refused)])
    assert (len(received.messages), len(received.refused), received.malformed) == (1, 1, 1)


def test_a_heartbeat_keeps_hidden_all_it_holds_in_one_batch_call_per_10(deployment: Settings) -> None:
    # GIVEN a run whose drain handed its heartbeat 26 messages over three receives, each taken for 3 s, and
    # which then lets go of one (as the driver lets go of deferred images)
    sqs, s3, url = boto3.client("sqs"), boto3.client("s3"), deployment.images_queue_url
    lock = RunLock(s3, deployment.bucket, lock_key(deployment.output_prefix))
    lock.acquire()
    heartbeat = Heartbeat(sqs, url, lock, every_s=3600, visibility_timeout_s=30)
    taken = time.monotonic()
    _held_by(heartbeat, deployment, 26, visibility_timeout_s=3)
    drained = time.monotonic()
    heartbeat.receipts = heartbeat.receipts[:25]
    calls: list[int] = []

    def count(**_: Any) -> None:
        calls.append(1)

    sqs.meta.events.register("before-call.sqs.ChangeMessageVisibilityBatch", count)

    # WHEN it beats once, extending what it holds to 30 s
    heartbeat.beat()
    lock.release()
    assert time.monotonic() - taken < 3, "the beat came after the messages were back: this test tells nothing"

    # THEN it made one batch call per 10 receipts; and once their 3 s have passed, only the one let go is back
    assert len(calls) == 3
    time.sleep(drained + 3.5 - time.monotonic())
    assert queue_depth(sqs, url) == {"visible": 1, "in_flight": 25}


def test_a_heartbeat_makes_its_batch_calls_at_once(deployment: Settings) -> None:
    # GIVEN a heartbeat holding 30 messages, and a client whose batch calls each wait for two others to start
    sqs, s3, url = boto3.client("sqs"), boto3.client("s3"), deployment.images_queue_url
    lock = RunLock(s3, deployment.bucket, lock_key(deployment.output_prefix))
    lock.acquire()
    heartbeat = Heartbeat(sqs, url, lock, every_s=3600, visibility_timeout_s=60)
    _held_by(heartbeat, deployment, 30)
    together = threading.Barrier(3, timeout=10)

    def wait_for_the_others(**_: Any) -> None:
        together.wait()

    sqs.meta.events.register("before-call.sqs.ChangeMessageVisibilityBatch", wait_for_the_others)

    # WHEN it beats
    heartbeat.beat()
    lock.release()

    # THEN its three batch calls were in flight together (one at a time, the first would wait in vain and raise)
    assert not together.broken
    assert queue_depth(sqs, url) == {"visible": 0, "in_flight": 30}
