"""The job's SQS batch calls read SQS's answer entry by entry, against the embedded SQS."""

from __future__ import annotations

import boto3
import pytest

from pomona.core.queues import queue_depth
from pomona.core.settings import Settings
from pomona.featurize.lock import RunLock
from pomona.featurize.queue import Heartbeat, delete_messages


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
    lock = RunLock(s3, deployment.bucket)
    lock.acquire()
    heartbeat = Heartbeat(sqs, deployment.images_queue_url, lock, every_s=3600, visibility_timeout_s=60)
    heartbeat.receipts = [*_received(deployment, 1), "not-a-receipt"]

    # WHEN it beats
    heartbeat.beat()
    lock.release()

    # THEN the real message stays hidden, and the lapse is logged
    assert queue_depth(sqs, deployment.images_queue_url) == {"visible": 0, "in_flight": 1}
    assert "visibility was not extended" in caplog.text
