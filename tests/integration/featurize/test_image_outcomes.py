"""Each image's outcome is its own: one the decoder fails on is quarantined with the exception's type while its batch
commits, and a duplicate whose representative could not be committed is retried, never dropped."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import boto3
import pytest
from job_process import queue_depth

from pomona.core.contract import ImageMessage, Reason, utc_now
from pomona.core.outputs import CommittedOutputs
from pomona.core.settings import Settings
from pomona.featurize.driver import JobOptions, run_job
from pomona.ingest import handler
from pomona.local.poller import EventSourcePoller
from pomona.testing.samples import SYNTHETIC_LABELS, fruit_image

pytestmark = pytest.mark.slow


@pytest.fixture
def ingest(ingest: Settings, random_model: Callable[[Settings], Settings]) -> Settings:
    return random_model(ingest)


def _upload(settings: Settings, images: dict[str, bytes]) -> None:
    """Upload each image and run ingestion on its event, in order (the queue then holds them in that order)."""
    s3 = boto3.client("s3")
    for key, body in images.items():
        s3.put_object(Bucket=settings.bucket, Key=key, Body=body)
        EventSourcePoller(settings.events_queue_url, handler.lambda_handler).drain()


def test_an_image_the_decoder_fails_on_is_quarantined_with_the_errors_type_and_its_batch_commits(
    spark: object, ingest: Settings, job_options: JobOptions
) -> None:
    # GIVEN four accepted uploads, and a message naming a JPEG cut short (as a decoder surprise would look):
    # ingestion would have refused it, so it is queued by hand, with its true sha256, ETag and version
    labels = SYNTHETIC_LABELS[:2]
    _upload(ingest, {f"uploads/{labels[i % 2]}/img_{i}.jpg": fruit_image(labels[i % 2], i) for i in range(4)})
    cut = fruit_image(labels[0], 99)[:-400]
    s3 = boto3.client("s3")
    put = s3.put_object(Bucket=ingest.bucket, Key=f"uploads/{labels[0]}/cut.jpg", Body=cut)
    message = ImageMessage(
        bucket=ingest.bucket,
        key=f"uploads/{labels[0]}/cut.jpg",
        version_id=put["VersionId"],
        etag=put["ETag"],
        sha256=hashlib.sha256(cut).hexdigest(),
        size=len(cut),
        format="JPEG",
        width=224,
        height=224,
        mode="RGB",
        label=labels[0],
        uploaded_at=utc_now(),
        validated_at=utc_now(),
    )
    boto3.client("sqs").send_message(QueueUrl=ingest.images_queue_url, MessageBody=message.to_json())

    # WHEN the job runs
    manifest = run_job(spark, ingest, job_options).manifest  # type: ignore[arg-type]

    # THEN the four commit, the cut one is quarantined as decode_failed naming the exception, and no message is left
    assert manifest is not None
    assert manifest["counts"]["featurized"] == 4
    assert manifest["counts"]["failed"] == {Reason.DECODE_FAILED.value: 1}
    (sidecar,) = CommittedOutputs.in_bucket(s3, ingest).sidecars()
    assert (sidecar["reason"], sidecar["original_key"], sidecar["version_id"]) == (
        Reason.DECODE_FAILED.value,
        message.key,
        message.version_id,
    )
    assert sidecar["error_type"] == "OSError"
    assert sidecar["detail"].startswith(
        f"expected an image Pillow can decode, got {len(cut)} bytes: OSError: "
    )
    assert queue_depth(ingest) == (0, 0)

    # AND the run said so to CloudWatch, for the "no healthy run" alarm
    cloudwatch = boto3.client("cloudwatch")
    found = cloudwatch.list_metrics(Namespace=ingest.metrics_namespace, MetricName="RunsSucceeded")["Metrics"]
    assert {"Name": "Bucket", "Value": ingest.bucket} in [d for m in found for d in m["Dimensions"]]


def test_a_duplicate_whose_representative_is_gone_is_retried_and_committed(
    spark: object, ingest: Settings, job_options: JobOptions
) -> None:
    # GIVEN the same photo uploaded under two keys, both queued, the first one's version then deleted for good
    photo = fruit_image(SYNTHETIC_LABELS[0], 7)
    first, second = f"uploads/{SYNTHETIC_LABELS[0]}/a.jpg", f"uploads/{SYNTHETIC_LABELS[1]}/b.jpg"
    _upload(ingest, {first: photo})
    _upload(ingest, {second: photo})
    s3 = boto3.client("s3")
    (version,) = s3.list_object_versions(Bucket=ingest.bucket, Prefix=first)["Versions"]
    s3.delete_object(Bucket=ingest.bucket, Key=first, VersionId=version["VersionId"])

    # WHEN a run takes both: the first is the batch's representative of the photo, and is gone
    result = run_job(spark, ingest, job_options)  # type: ignore[arg-type]

    # THEN it is quarantined as gone, and the duplicate's message is back on the queue, not deleted with it
    assert result.manifest is None
    assert result.skipped == "no image featurized: 1 quarantined, 0 deferred"
    assert queue_depth(ingest) == (1, 0)

    # AND the next run commits the photo from the second upload
    manifest = run_job(spark, ingest, job_options).manifest  # type: ignore[arg-type]
    assert manifest is not None
    assert manifest["counts"]["featurized"] == 1
    committed, missing = CommittedOutputs.in_bucket(s3, ingest).read_parts("features", ["key"])
    assert committed is not None
    assert missing == []
    assert committed.column("key").to_pylist() == [second]
    assert queue_depth(ingest) == (0, 0)
