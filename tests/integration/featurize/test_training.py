"""The classifier is retrained with every committed batch, from statistics, and never on its holdout.

Against the moto server's S3 and DynamoDB; the job's runs on local[2] Spark, random weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import boto3
import pytest

from pomona.core.outputs import pca_prefix
from pomona.core.settings import Settings
from pomona.featurize.commit import CLASSIFIER_FILE, HOLDOUT_FILE, TRAINING_FILE
from pomona.featurize.driver import JobOptions, run_job
from pomona.ingest import handler
from pomona.local.poller import EventSourcePoller
from pomona.ml.classifier import load_classifier, load_label_stats
from pomona.ml.holdout import is_holdout, load_reservoir
from pomona.testing.samples import SYNTHETIC_LABELS, fruit_image

pytestmark = pytest.mark.slow


@pytest.fixture
def ingest(ingest: Settings, random_model: Callable[[Settings], Settings]) -> Settings:
    return random_model(ingest)


def _upload(settings: Settings, indices: range) -> list[str]:
    """Upload a synthetic fruit of each label per index; their sha256s."""
    s3, shas = boto3.client("s3"), []
    for i in indices:
        for label in SYNTHETIC_LABELS[:3]:
            body = fruit_image(label, i)
            s3.put_object(Bucket=settings.bucket, Key=f"uploads/{label}/img_{i}.jpg", Body=body)
            shas.append(hashlib.sha256(body).hexdigest())
    EventSourcePoller(settings.events_queue_url, handler.lambda_handler).drain()
    return shas


def _version_file(settings: Settings, manifest: dict[str, object], name: str) -> bytes:
    key = pca_prefix(settings.output_prefix, manifest["pca_version"], manifest["batch_id"]) + name  # type: ignore[arg-type]
    return boto3.client("s3").get_object(Bucket=settings.bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]


def test_each_batch_retrains_on_every_training_image_and_none_held_out(
    spark: object, ingest: Settings, job_options: JobOptions
) -> None:
    # GIVEN two batches of synthetic fruits of 3 labels, 8 of each per batch
    first_shas = _upload(ingest, range(8))
    first = run_job(spark, ingest, job_options).manifest  # type: ignore[arg-type]
    second_shas = _upload(ingest, range(8, 16))

    # WHEN the second batch commits
    second = run_job(spark, ingest, job_options).manifest  # type: ignore[arg-type]
    assert first is not None
    assert second is not None

    # THEN its version holds a classifier of the 3 labels, trained on every image seen but the held-out ones
    shas = first_shas + second_shas
    held = {sha for sha in shas if is_holdout(sha)}
    classifier = load_classifier(_version_file(ingest, second, CLASSIFIER_FILE))
    training = load_label_stats(_version_file(ingest, second, TRAINING_FILE))
    holdout = load_reservoir(_version_file(ingest, second, HOLDOUT_FILE))
    assert classifier.labels == tuple(sorted(SYNTHETIC_LABELS[:3]))
    assert classifier.n_train == training.total.n == len(shas) - len(held)
    assert sum(training.counts.values()) == len(shas) - len(held)
    # AND the holdout holds exactly the held-out images, whichever batch brought them
    assert set(holdout.sha256.tolist()) == held
    # AND the manifest says what it was trained on and how it was scored
    summary = second["classifier"]
    assert isinstance(summary, dict)
    assert summary["n_train"] == classifier.n_train
    assert summary["labels"] == 3
    if held:
        assert summary["n"] == len(held)
        assert summary["threshold"] == classifier.threshold
    else:
        assert "skipped" in summary
