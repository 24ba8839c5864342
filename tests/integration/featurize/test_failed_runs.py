"""A run that fails or hangs never costs its messages their place: it gives them back uncharged, the next runs
bisect towards the image that fails them, and only that image's message reaches the DLQ, with the failure recorded.

Each run is the job's own process (`spark/main.py`), as its pod runs it."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter

import boto3
import pyarrow.parquet as pq
import pytest
from job_process import Uploaded, finish, queue_depth, start_job

from pomona.core.outputs import CommittedOutputs
from pomona.core.queues import FAILED_RUNS, FAILURE, Suspicion
from pomona.core.settings import Settings
from pomona.featurize.liveness import EXIT_STOPPED
from pomona.ops.dlq import find_dlq
from pomona.ops.dlq_describe import peek
from pomona.testing.samples import SYNTHETIC_LABELS, fruit_image

pytestmark = pytest.mark.slow

MAX_RUNS = 10


def _committed(settings: Settings) -> Counter[str]:
    """Every committed image's sha256, counted over the committed features part files."""
    s3 = boto3.client("s3")
    shas: Counter[str] = Counter()
    for manifest in CommittedOutputs.in_bucket(s3, settings).manifests():
        for key in manifest["files"]["features"]:
            body = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
            shas.update(pq.read_table(io.BytesIO(body), columns=["sha256"]).column("sha256").to_pylist())
    return shas


def _dead_letters(settings: Settings) -> list[dict[str, object]]:
    """The images DLQ's messages, taken off it."""
    sqs = boto3.client("sqs")
    found = []
    while batch := sqs.receive_message(
        QueueUrl=settings.images_dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages", []):
        found += batch
        for message in batch:
            sqs.delete_message(QueueUrl=settings.images_dlq_url, ReceiptHandle=message["ReceiptHandle"])
    return found


def test_an_image_that_fails_every_run_it_is_in_is_isolated_and_alone_dead_lettered(
    uploaded: Uploaded,
) -> None:
    settings = uploaded.settings
    # GIVEN 13 queued messages, one of which names an image whose Python worker dies (as an OOM kill would)
    poison = hashlib.sha256(fruit_image(SYNTHETIC_LABELS[5 % 3], 5)).hexdigest()  # img_5, queued once
    assert poison in uploaded.shas

    # WHEN scheduled runs follow each other until the queue is empty
    codes = []
    for _ in range(MAX_RUNS):
        code, output = finish(start_job(settings, fault=f"crash_on:{poison}"))
        codes.append(code)
        if queue_depth(settings) == (0, 0):
            break
    else:
        pytest.fail(
            f"expected the queue to drain within {MAX_RUNS} runs, exit codes {codes}: {output[-3000:]}"
        )

    # THEN the failing batch halved run after run: every other image committed exactly once
    assert 1 in codes, f"expected runs to fail on the poison image, exit codes {codes}"
    assert _committed(settings) == Counter(uploaded.shas - {poison})

    # AND the poison's message alone is dead-lettered, saying which failure it caused, as `pomona dlq list` shows
    dlq = find_dlq(boto3.client("sqs"), settings, "images")
    listing = peek(boto3.client("sqs"), dlq, settings, limit=10, wait_s=0)
    assert [m.reason.split(":")[0] for m in listing.messages] == [
        "failed a run on its own (after 4 failed runs)"
    ]
    (dead,) = _dead_letters(settings)
    assert json.loads(str(dead["Body"]))["sha256"] == poison
    suspicion = Suspicion.of(dead)  # type: ignore[arg-type]
    assert suspicion.failed_runs >= 2
    assert suspicion.failure.startswith("Py4JJavaError: org.apache.spark.SparkException: Job aborted")
    assert "Python worker exited unexpectedly" in suspicion.failure
    assert {FAILED_RUNS, FAILURE} <= set(dead["MessageAttributes"])  # type: ignore[call-overload]


def test_a_hung_run_is_stopped_gives_its_messages_back_and_the_next_runs_commit_them(
    uploaded: Uploaded,
) -> None:
    # GIVEN a run whose featurize stage never ends, with no progress allowed for more than 20 s
    settings = uploaded.settings.replace(stall_s=20.0)

    # WHEN it runs
    code, output = finish(start_job(settings, fault="hang_in_task"))

    # THEN its watchdog stops it: non-zero exit, every message back on the queue at once, uncharged
    assert code == EXIT_STOPPED, output[-3000:]
    assert "Run stopped by its watchdog" in output
    assert queue_depth(settings) == (uploaded.queued, 0)
    sqs = boto3.client("sqs")
    back = sqs.receive_message(
        QueueUrl=settings.images_queue_url,
        MaxNumberOfMessages=10,
        VisibilityTimeout=0,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["ApproximateReceiveCount"],
    )["Messages"]
    assert {Suspicion.of(m).failed_runs for m in back} == {1}  # type: ignore[arg-type]
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in back} == {
        "1"
    }  # this look is the copy's first

    # AND the next runs, unhindered, commit every image once and leave nothing behind; each holds at most half the
    # stopped batch, since a stopped run's messages carry its batch cap
    runs = 0
    while queue_depth(settings) != (0, 0):
        runs += 1
        assert runs <= 3, f"expected the queue to drain in 3 runs of at most {uploaded.queued // 2} images"
        code, output = finish(start_job(uploaded.settings))
        assert code == 0, output[-3000:]
    assert _committed(settings) == Counter(uploaded.shas)
    assert queue_depth(settings) == (0, 0)
    assert _dead_letters(settings) == []

    # AND CloudWatch heard of both runs
    cloudwatch = boto3.client("cloudwatch")
    for metric in ("RunsFailed", "RunsSucceeded"):
        assert cloudwatch.list_metrics(Namespace=settings.metrics_namespace, MetricName=metric)["Metrics"], (
            metric
        )
