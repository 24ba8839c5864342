"""The ingestion Lambda under faults: a crash after queueing, a sandbox killed after queueing, poison records,
S3 denying access to an upload.

What holds at which layer, as these tests show it:
- Lambda + idempotency (powertools, keyed by bucket, key and version id): a repeated event that finds a
  COMPLETED record queues nothing. A crash (an exception) after `send_message` deletes the IN_PROGRESS
  record, so the retry queues the image again; a killed sandbox leaves the record IN_PROGRESS, retries are
  refused until it expires (the invocation's timeout), then the retry queues again. So the images queue is
  at least once: one message or more per object version, never none while the event is retried.
- The featurization job: images are identified by sha256, so the extra message is counted as a duplicate
  and the image is featurized once. Exactly once holds end to end, not on the queue.
- A denied read (403: IAM, bucket policy, KMS) or any other S3 error fails just its record, is counted in
  `ImagesFailed` by `ErrorCode`, and leaves no idempotency record: retried, then dead-lettered, and ingested
  once access is fixed (or the DLQ redriven). It is never taken for a deleted upload.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

import boto3
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from lambda_output import Emitted

from fault_proxy import Denials, Fault
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


# -- S3 denies access ----------------------------------------------------------------------------------------


def _notify(settings: Settings, event_factory: Callable[..., dict[str, Any]], keys: dict[str, str]) -> None:
    """Put S3's notifications for `keys` (key → version id) on the events queue, in AWS's shape: with version ids.

    moto's own notifications, which carry none, are purged first.
    """
    sqs = boto3.client("sqs")
    sqs.purge_queue(QueueUrl=settings.events_queue_url)
    for key, version_id in keys.items():
        event = event_factory(bucket=settings.bucket, key=key, version_id=version_id)
        sqs.send_message(QueueUrl=settings.events_queue_url, MessageBody=json.dumps(event))


def _versions(settings: Settings, images: dict[str, bytes]) -> dict[str, str]:
    s3 = boto3.client("s3")
    return {key: s3.head_object(Bucket=settings.bucket, Key=key)["VersionId"] for key in images}


def _key_of(record: dict[str, Any]) -> str:
    return unquote_plus(json.loads(record["body"])["Records"][0]["s3"]["object"]["key"])


@pytest.mark.parametrize(
    "methods",
    [
        pytest.param(("HEAD", "GET"), id="denied-head-and-get"),  # no s3:GetObject on the key
        pytest.param(("GET",), id="denied-get-only"),  # e.g. no kms:Decrypt on an SSE-KMS object
    ],
)
def test_a_denied_upload_fails_alone_is_counted_and_is_ingested_once_access_is_fixed(
    ingest: Settings,
    denying_s3: Denials,
    emitted: Emitted,
    s3_event_factory: Callable[..., dict[str, Any]],
    methods: tuple[str, ...],
) -> None:
    # GIVEN three uploads notified in one batch, and S3 answering 403 AccessDenied to the Lambda for one of them
    images = _upload(ingest, 3)
    versions = _versions(ingest, images)
    denied = list(images)[1]
    _notify(ingest, s3_event_factory, versions)
    denying_s3.deny(ingest.bucket, denied, methods=methods)
    batches: list[tuple[dict[str, Any], Any]] = []

    def invocation(event: dict[str, Any], context: Any) -> Any:
        response = handler.lambda_handler(event, context)
        batches.append((event, response))
        return response

    poller = EventSourcePoller(ingest.events_queue_url, invocation, retry_after_s=0)

    # WHEN the batch is handled
    first = poller.poll_once()

    # THEN the two readable uploads are queued, and the denied one alone is reported failed: not taken as gone
    assert (first.received, first.failed) == (3, 1)
    ((event, response),) = batches
    (failure,) = response["batchItemFailures"]
    (record,) = [r for r in event["Records"] if r["messageId"] == failure["itemIdentifier"]]
    assert _key_of(record) == denied
    assert sorted(m.key for m in _peek_images(ingest)) == sorted(set(images) - {denied})
    assert [call[0] for call in denying_s3.refused] == [methods[0]]
    # ... counted by its error code alone, and logged with the key, its version and the code
    assert emitted.metrics("ImagesFailed") == [
        {"service": "pomona-ingest", "ErrorCode": "AccessDenied", "value": 1}
    ]
    assert emitted.count("ImagesGone") == 0
    (log,) = emitted.logs("Ingestion failed")
    assert log.levelname == "ERROR"
    assert (log.key, log.version_id, log.error_code) == (denied, versions[denied], "AccessDenied")  # type: ignore[attr-defined]
    # ... and not remembered by the idempotency store: only the two others have a record
    assert [r["status"] for r in _idempotency_records(ingest)] == ["COMPLETED"] * 2

    # WHEN access is fixed and the platform redelivers the same event
    denying_s3.allow(ingest.bucket, denied)
    retry = poller.drain()

    # THEN it ingests the image, once; every upload is on the images queue once and nothing is dead-lettered
    assert (retry.received, retry.succeeded) == (1, 1)
    assert _key_of(batches[-1][0]["Records"][0]) == denied
    assert Counter(m.key for m in _peek_images(ingest)) == dict.fromkeys(images, 1)
    assert emitted.count("ImagesAccepted") == 3
    assert emitted.count("ImagesFailed") == 1
    assert _depth(ingest.events_queue_url) == _depth(_dlq_url(ingest)) == 0


def test_an_upload_denied_for_good_reaches_the_dlq_and_a_redrive_after_the_fix_ingests_it(
    ingest: Settings, denying_s3: Denials, emitted: Emitted
) -> None:
    # GIVEN an upload the Lambda may not read (moto's own notification: no version id, so the ETag places it)
    boto3.client("sqs").purge_queue(QueueUrl=ingest.events_queue_url)  # the s3:TestEvent would ride along
    (key,) = _upload(ingest, 1)
    denying_s3.deny(ingest.bucket, key)

    # WHEN the platform retries it up to the redrive limit
    stats = EventSourcePoller(ingest.events_queue_url, handler.lambda_handler, retry_after_s=0).drain()

    # THEN it failed every time, counted each time, and its event waits in the DLQ; nothing was queued
    assert stats.failed == describe().events.max_receive_count
    assert emitted.count("ImagesFailed", ErrorCode="AccessDenied") == stats.failed
    sqs = boto3.client("sqs")
    (dead,) = sqs.receive_message(QueueUrl=_dlq_url(ingest), MaxNumberOfMessages=10)["Messages"]
    assert _key_of({"body": dead["Body"]}) == key
    assert _peek_images(ingest) == []
    assert _idempotency_records(ingest) == []

    # WHEN access is fixed and the operator moves the DLQ's messages back to the events queue
    denying_s3.allow(ingest.bucket, key)
    sqs.send_message(QueueUrl=ingest.events_queue_url, MessageBody=dead["Body"])
    sqs.delete_message(QueueUrl=_dlq_url(ingest), ReceiptHandle=dead["ReceiptHandle"])
    redriven = EventSourcePoller(ingest.events_queue_url, handler.lambda_handler).drain()

    # THEN the upload is ingested, once
    assert (redriven.received, redriven.succeeded) == (1, 1)
    assert [m.key for m in _peek_images(ingest)] == [key]


def test_any_other_s3_error_raises_and_is_counted_by_its_code(
    ingest: Settings,
    denying_s3: Denials,
    emitted: Emitted,
    s3_event_factory: Callable[..., dict[str, Any]],
) -> None:
    # GIVEN an upload S3 will not serve: archived to Glacier, say (HEAD works, GET is 403 InvalidObjectState)
    (key,) = _upload(ingest, 1)
    event = s3_event_factory(bucket=ingest.bucket, key=key, version_id=_versions(ingest, {key: b""})[key])
    denying_s3.deny(ingest.bucket, key, methods=("GET",), fault=Fault.ARCHIVED)

    # WHEN S3 notifies the Lambda directly
    with pytest.raises(ClientError, match="InvalidObjectState"):
        handler.lambda_handler(event, LambdaContext())

    # THEN the invocation failed (Lambda retries it, then sends it to the on-failure destination), counted
    assert emitted.metrics("ImagesFailed") == [
        {"service": "pomona-ingest", "ErrorCode": "InvalidObjectState", "value": 1}
    ]
    assert _peek_images(ingest) == []
    assert _idempotency_records(ingest) == []
