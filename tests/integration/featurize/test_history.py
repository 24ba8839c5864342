"""A run's cost does not grow with history: the dedupe index, recovery by leases, retention.

Against the moto server's S3 and DynamoDB; the job's runs on local[2] Spark.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import boto3
import numpy as np
import pytest

from pomona.bench.history_data import build_history, committer_for, synthetic_shas
from pomona.core.outputs import CommittedOutputs, pca_prefix
from pomona.core.settings import Settings
from pomona.featurize.driver import JobOptions, run_job
from pomona.featurize.recovery import Recovery
from pomona.ingest import handler
from pomona.local.poller import EventSourcePoller
from pomona.ml.pca import load_model, load_state, project
from pomona.testing.samples import SYNTHETIC_LABELS, fruit_image

pytestmark = pytest.mark.slow  # each history refits a 1280-d PCA; the job's runs start Spark tasks


@pytest.fixture
def ingest(ingest: Settings, random_model: Callable[[Settings], Settings]) -> Settings:
    return random_model(ingest)


def _upload(settings: Settings, count: int, offset: int = 0) -> None:
    s3 = boto3.client("s3")
    for i in range(offset, offset + count):
        label = SYNTHETIC_LABELS[i % 3]
        s3.put_object(Bucket=settings.bucket, Key=f"uploads/{label}/img_{i}.jpg", Body=fruit_image(label, i))
    EventSourcePoller(settings.events_queue_url, handler.lambda_handler).drain()


def _take_messages(settings: Settings) -> list[str]:
    """Every message body on the images queue, the messages deleted."""
    sqs, bodies = boto3.client("sqs"), []
    while batch := sqs.receive_message(QueueUrl=settings.images_queue_url, MaxNumberOfMessages=10).get(
        "Messages", []
    ):
        bodies += [m["Body"] for m in batch]
        sqs.delete_message_batch(
            QueueUrl=settings.images_queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
        )
    return bodies


def _send(settings: Settings, bodies: list[str]) -> None:
    sqs = boto3.client("sqs")
    for body in bodies:
        sqs.send_message(QueueUrl=settings.images_queue_url, MessageBody=body)


class Requests:
    """The calls a boto3 client made, by operation: botocore's own event, no stand-in."""

    def __init__(self, *clients: Any) -> None:
        self.calls: Counter[str] = Counter()
        for client in clients:
            client.meta.events.register("before-call", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1


def _counted_recovery(settings: Settings) -> tuple[Recovery, Requests]:
    committer = committer_for(settings)
    return Recovery(committer), Requests(committer.s3, committer.index.dynamodb)


# -- the dedupe index -------------------------------------------------------------------------------------------


def test_a_redelivered_message_of_a_committed_batch_is_a_duplicate(
    spark: object, ingest: Settings, job_options: JobOptions
) -> None:
    # GIVEN 6 images committed by a run
    _upload(ingest, 6)
    bodies = _take_messages(ingest)
    _send(ingest, bodies)
    first = run_job(spark, ingest, job_options)  # type: ignore[arg-type]
    assert first.manifest is not None

    # WHEN their messages come again (SQS delivers at least once), beside one new image
    _send(ingest, bodies)
    _upload(ingest, 1, offset=6)
    second = run_job(spark, ingest, job_options)  # type: ignore[arg-type]

    # THEN the 6 are duplicates, found in the index; only the new image is committed, and nothing is left queued
    assert second.manifest is not None
    assert (second.manifest["counts"]["duplicates"], second.manifest["counts"]["featurized"]) == (6, 1)
    assert second.manifest["n_seen"] == 7
    assert _take_messages(ingest) == []


def test_recovery_and_lookups_cost_the_same_whatever_the_history(ingest: Settings) -> None:
    # GIVEN a deployment with a history of 2 batches, and another of 6 batches
    requests = []
    for batches in (2, 6):
        # Each output prefix has tables of its own, so a Glue database of its own.
        settings = ingest.replace(
            output_prefix=f"h{batches}/", glue_database=f"{ingest.glue_database}_h{batches}"
        )
        boto3.client("glue").create_database(DatabaseInput={"Name": settings.glue_database})
        build_history(settings, seen=batches * 10, batch_images=10)
        recovery, counted = _counted_recovery(settings)

        # WHEN a run recovers and looks up a batch of 20 images, half of them committed
        recovery.recover()
        found = recovery.committer.index.committed(synthetic_shas(0, 10) + synthetic_shas(10_000, 10))
        assert found == set(synthetic_shas(0, 10))
        requests.append(counted.calls)

    # THEN it made the same requests after 6 batches as after 2
    assert requests[0] == requests[1]
    assert requests[0]["ListObjectsV2"] == 1  # the leases, and nothing else is listed


# -- retention --------------------------------------------------------------------------------------------------


def test_retention_keeps_the_latest_state_and_what_readers_of_every_version_need(
    spark: object, ingest: Settings, job_options: JobOptions
) -> None:
    # GIVEN a deployment keeping one full version, and three committed runs
    settings = ingest.replace(keep_full_versions=1)
    manifests = []
    for run in range(3):
        _upload(settings, 4, offset=4 * run)
        manifests.append(run_job(spark, settings, job_options).manifest)  # type: ignore[arg-type]
    s3 = boto3.client("s3")

    def files(manifest: dict[str, Any]) -> set[str]:
        base = pca_prefix("", manifest["pca_version"], manifest["batch_id"])
        found = s3.list_objects_v2(Bucket=settings.bucket, Prefix=base).get("Contents", [])
        return {item["Key"].removeprefix(base) for item in found}

    # THEN only the latest version keeps what the next refit starts from (merge state, classifier statistics and
    # holdout); every version keeps model, metadata and quality.json, the classifier's evaluation (12 images of 3
    # labels are too few for a classifier: it says why there)
    kept = {"model.npz", "metadata.json", "quality.json"}
    assert [files(m) for m in manifests] == [
        kept,
        kept,
        kept | {"state.npz", "training.npz", "holdout.npz"},
    ]
    outputs = CommittedOutputs.in_bucket(s3, settings)
    for manifest in manifests:
        quality = outputs.version_json(manifest["pca_version"], "quality.json")
        assert quality == manifest["quality"]
        assert quality is not None
        assert quality["skipped"].startswith("expected at least 2 labels with 5 or more images")
        assert manifest["classifier"] is None
    # AND a reader of each batch's projections can project its features again with that batch's version
    for manifest in manifests:
        model = load_model(outputs.version_file(manifest["pca_version"], "model.npz") or b"")
        table, missing = outputs.read_parts("features", ["features"], [manifest])
        stored, _ = outputs.read_parts("projections", ["projection"], [manifest])
        assert missing == []
        assert table is not None
        assert stored is not None
        again = project(model, table.column("features").to_pylist())
        # (random-weights features barely differ, so this holds the model's shape and readability, not its numbers)
        expected = np.array(stored.column("projection").to_pylist())
        assert again.shape == expected.shape
        np.testing.assert_allclose(again, expected, atol=1e-4)
    # AND the next run starts from the latest state
    latest = outputs.latest()
    assert latest.version == 3
    state = s3.get_object(Bucket=settings.bucket, Key=latest.folder("") + "state.npz")
    assert load_state(state["Body"].read()).n == 12
    _upload(settings, 4, offset=12)
    fourth = run_job(spark, settings, job_options).manifest  # type: ignore[arg-type]
    assert fourth is not None
    assert fourth["n_seen"] == 16
    assert files(manifests[2]) == kept
