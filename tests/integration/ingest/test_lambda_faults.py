"""The ingestion Lambda under faults: a crash after queueing, a sandbox killed after queueing, poison records.

What holds at which layer, as these tests show it:
- Lambda + idempotency (powertools, keyed by bucket, key and version id): a repeated event that finds a
  COMPLETED record queues nothing. A crash (an exception) after `send_message` deletes the IN_PROGRESS
  record, so the retry queues the image again; a killed sandbox leaves the record IN_PROGRESS, retries are
  refused until it expires (the invocation's timeout), then the retry queues again. So the images queue is
  at least once: one message or more per object version, never none while the event is retried.
- The featurization job: images are identified by sha256, so the extra message is counted as a duplicate
  and the image is featurized once. Exactly once holds end to end, not on the queue.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest

from pomona.core.contract import ImageMessage
from pomona.core.resources import describe
from pomona.core.settings import Settings
from pomona.featurize.driver import JobOptions, run_job
from pomona.ingest import handler
from pomona.ingest.ingestor import Ingestor
from pomona.local.poller import EventSourcePoller, LambdaContext
from pomona.testing.samples import SYNTHETIC_LABELS, fruit_image


class SandboxKilledError(BaseException):
    """The Lambda sandbox dies (timeout, out of memory): no code of ours or of powertools runs after it.

    A BaseException, so powertools' `except Exception` cleanup does not run, as it would not on a kill.
    """


def _upload(settings: Settings, count: int, *, offset: int = 0) -> dict[str, bytes]:
    s3 = boto3.client("s3")
    images = {}
    for i in range(offset, offset + count):
        label = SYNTHETIC_LABELS[i % 3]
        images[f"uploads/{label}/img_{i}.jpg"] = body = fruit_image(label, i)
        s3.put_object(Bucket=settings.bucket, Key=f"uploads/{label}/img_{i}.jpg", Body=body)
    return images


def _peek_images(settings: Settings) -> list[ImageMessage]:
    """The messages on the images queue, left there (visible again at once) for the job."""
    sqs = boto3.client("sqs")
    batch = sqs.receive_message(
        QueueUrl=settings.images_queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0
    )
    return [ImageMessage.from_json(m["Body"]) for m in batch.get("Messages", [])]


def _depth(queue_url: str) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def _dlq_url(settings: Settings) -> str:
    name = settings.events_queue_url.rsplit("/", 1)[1] + "-dlq"
    return boto3.client("sqs").get_queue_url(QueueName=name)["QueueUrl"]


def _idempotency_records(settings: Settings) -> list[dict[str, Any]]:
    items = boto3.client("dynamodb").scan(TableName=settings.idempotency_table)["Items"]
    return [{name: next(iter(value.values())) for name, value in item.items()} for item in items]


def _crash_after_queueing(monkeypatch: pytest.MonkeyPatch, key: str, error: BaseException) -> list[str]:
    """The first time `key` is queued, the message is sent and then `error` ends the invocation.

    Returns the ids of the messages sent before the crash.
    """
    real = Ingestor._queue
    sent: list[str] = []

    def queue_then_crash(self: Ingestor, source: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        outcome = real(self, source, *args, **kwargs)
        if source["key"] == key and not sent:
            sent.append(outcome["message_id"])
            raise error
        return outcome

    monkeypatch.setattr(Ingestor, "_queue", queue_then_crash)
    return sent


@pytest.mark.slow
def test_a_crash_after_queueing_queues_twice_and_the_job_featurizes_once(
    spark: Any,
    ingest: Settings,
    monkeypatch: pytest.MonkeyPatch,
    random_model: Callable[[Settings], Settings],
    job_options: JobOptions,
) -> None:
    # GIVEN three uploads, and a Lambda that raises right after queueing the first, before it returns
    images = _upload(ingest, 3)
    crashing = next(iter(images))
    sent = _crash_after_queueing(monkeypatch, crashing, RuntimeError("crashed after send_message"))

    # WHEN the platform retries the failed record (at once here; after the visibility timeout on AWS)
    stats = EventSourcePoller(ingest.events_queue_url, handler.lambda_handler, retry_after_s=0).drain()

    # THEN the retry ran the ingestion again: two messages name the same object version
    assert sent
    assert stats.failed == 1
    messages = _peek_images(ingest)
    assert Counter(m.key for m in messages) == {crashing: 2} | dict.fromkeys(list(images)[1:], 1)
    first, second = (m for m in messages if m.key == crashing)
    assert (first.version_id, first.sha256) == (second.version_id, second.sha256)
    # ... and nothing was lost or dead-lettered on the way; the idempotency record is complete
    assert _depth(ingest.events_queue_url) == _depth(_dlq_url(ingest)) == 0
    assert [r["status"] for r in _idempotency_records(ingest)] == ["COMPLETED"] * 3

    # WHEN the job runs
    manifest = run_job(spark, random_model(ingest), job_options).manifest

    # THEN its sha256 dedupe featurizes the image once: exactly once holds end to end
    assert manifest is not None
    assert (manifest["counts"]["received"], manifest["counts"]["duplicates"]) == (4, 1)
    s3 = boto3.client("s3")
    shas = [
        sha
        for key in manifest["files"]["features"]
        for sha in pq.read_table(io.BytesIO(s3.get_object(Bucket=ingest.bucket, Key=key)["Body"].read()))
        .column("sha256")
        .to_pylist()
    ]
    assert Counter(shas) == Counter(hashlib.sha256(body).hexdigest() for body in images.values())
    assert _depth(ingest.images_queue_url) == 0


def test_a_sandbox_killed_after_queueing_is_retried_once_its_invocation_has_expired(
    ingest: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an upload, and a Lambda with a 5 s timeout whose sandbox dies right after queueing it
    boto3.client("sqs").purge_queue(QueueUrl=ingest.events_queue_url)  # the s3:TestEvent would ride along
    (key,) = _upload(ingest, 1)
    _crash_after_queueing(monkeypatch, key, SandboxKilledError())
    timeout_s = 5.0  # long enough that the early retry below lands within it on a loaded machine

    def invocation(event: dict[str, Any], _: Any) -> Any:
        try:
            return handler.lambda_handler(event, LambdaContext(timeout_s=timeout_s))
        except SandboxKilledError as err:
            raise RuntimeError("the invocation timed out") from err  # what the event source mapping sees

    poller = EventSourcePoller(ingest.events_queue_url, invocation, retry_after_s=0)
    poller.poll_once()
    (record,) = _idempotency_records(ingest)
    assert record["status"] == "INPROGRESS"  # nobody was left to delete or complete it

    # WHEN the platform retries before the killed invocation's timeout has passed
    early = poller.poll_once()

    # THEN the retry is refused (the record is in progress) and returns to the queue: nothing queued twice yet
    assert (early.received, early.failed) == (1, 1)
    assert [m.key for m in _peek_images(ingest)] == [key]

    # WHEN it is retried after the timeout
    time.sleep(timeout_s + 0.5)
    late = poller.poll_once()

    # THEN the ingestion runs again: a second message for the same version, for the job to dedupe
    assert (late.received, late.succeeded) == (1, 1)
    messages = _peek_images(ingest)
    assert [m.key for m in messages] == [key, key]
    assert len({(m.version_id, m.sha256) for m in messages}) == 1
    assert [r["status"] for r in _idempotency_records(ingest)] == ["COMPLETED"]
    # That was the 3rd receive, the events queue's redrive limit: a 4th failure would have dead-lettered the
    # event. On AWS the retry waits out the 180 s visibility timeout, past the 30 s function timeout.
    assert describe().events.max_receive_count == 3
    assert _depth(ingest.events_queue_url) == _depth(_dlq_url(ingest)) == 0


def test_poison_records_reach_the_dlq_and_hold_back_neither_their_batch_nor_later_uploads(
    ingest: Settings,
) -> None:
    # GIVEN two poison records in one batch with six good uploads: one not JSON, one JSON but no S3 event
    sqs = boto3.client("sqs")
    not_json = "{not json"
    not_an_event = json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]})
    sqs.send_message(QueueUrl=ingest.events_queue_url, MessageBody=not_json)
    images = _upload(ingest, 3)
    sqs.send_message(QueueUrl=ingest.events_queue_url, MessageBody=not_an_event)
    images |= _upload(ingest, 3, offset=3)
    poller = EventSourcePoller(ingest.events_queue_url, handler.lambda_handler, retry_after_s=0)

    # WHEN that batch is handled, more uploads arrive while the poison is retried, and the poller drains
    first = poller.poll_once()
    images |= _upload(ingest, 3, offset=6)
    rest = poller.drain()

    # THEN the good records of the poison's batch succeeded at once and were not redone; every upload is
    # queued exactly once; the two poison records failed 3 times each and wait in the DLQ, nothing else does
    assert (first.received, first.failed) == (9, 2)  # 6 uploads, 2 poison, the s3:TestEvent
    assert first.failed + rest.failed == 2 * describe().events.max_receive_count
    assert Counter(m.key for m in _peek_images(ingest)) == dict.fromkeys(images, 1)
    dead = sqs.receive_message(QueueUrl=_dlq_url(ingest), MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"] for m in dead) == sorted([not_json, not_an_event])
    assert _depth(ingest.events_queue_url) == 0
