"""The classifier is retrained with every committed batch, from statistics, and never on its holdout; its
evaluation on the holdout is the version's quality.json, which status and the demo's summary show.

Against the moto server's S3 and DynamoDB; the job's runs on local[2] Spark, random weights.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pomona.core.outputs import CLASSIFIER_FILE, EVALUATION_FILE, HOLDOUT_FILE, TRAINING_FILE, pca_prefix
from pomona.core.settings import Settings
from pomona.demo.run import holdout_summary
from pomona.featurize.driver import JobOptions, run_job
from pomona.ingest import handler
from pomona.local.poller import EventSourcePoller
from pomona.ml.calibration import break_even
from pomona.ml.classifier import distances, load_classifier, load_label_stats, predict, predict_proba
from pomona.ml.familiarity import leave_labels_out
from pomona.ml.holdout import evaluate, is_holdout, load_reservoir
from pomona.ops.status import collect_status
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
    assert len(held) == 4  # these 48 images' hashes put 4 in the holdout, so it is scored
    classifier = load_classifier(_version_file(ingest, second, CLASSIFIER_FILE))
    training = load_label_stats(_version_file(ingest, second, TRAINING_FILE))
    holdout = load_reservoir(_version_file(ingest, second, HOLDOUT_FILE))
    assert classifier.labels == tuple(sorted(SYNTHETIC_LABELS[:3]))
    assert classifier.n_train == training.total.n == len(shas) - len(held)
    assert sum(training.counts.values()) == len(shas) - len(held)
    # AND the holdout holds exactly the held-out images, whichever batch brought them
    assert set(holdout.sha256.tolist()) == held
    # AND the manifest says what it was trained on and how it was scored
    facts, quality = second["classifier"], second["quality"]
    assert isinstance(facts, dict)
    assert isinstance(quality, dict)
    assert facts["n_train"] == classifier.n_train
    assert facts["labels"] == 3
    assert facts["threshold"] == classifier.threshold
    assert quality["n"] == len(held)
    assert quality["best_threshold"] == classifier.threshold
    # AND each projected image carries what that classifier makes of it: its label, that label's probability,
    # and its distance to the nearest label (the tables' `projections` columns)
    features = _parts(ingest, second["files"]["features"]).sort_by("sha256")  # type: ignore[index]
    projections = _parts(ingest, second["files"]["projections"]).sort_by("sha256")  # type: ignore[index]
    rows = np.stack(features.column("features").to_numpy(zero_copy_only=False))
    assert projections.column("sha256").to_pylist() == features.column("sha256").to_pylist()
    assert projections.column("prediction").to_pylist() == predict(classifier, rows).tolist()
    np.testing.assert_allclose(projections.column("confidence"), predict_proba(classifier, rows).max(axis=1))
    np.testing.assert_allclose(projections.column("distance"), distances(classifier, rows))


def _parts(settings: Settings, keys: list[str]) -> pa.Table:
    s3 = boto3.client("s3")
    return pa.concat_tables(
        pq.read_table(io.BytesIO(s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()))
        for key in keys
    )


def _upload_photos(settings: Settings, photos: list[Path]) -> list[str]:
    """Upload sample photos under their label folders; their sha256s."""
    s3, shas = boto3.client("s3"), []
    for photo in photos:
        body = photo.read_bytes()
        s3.put_object(Bucket=settings.bucket, Key=f"uploads/{photo.parent.name}/{photo.name}", Body=body)
        shas.append(hashlib.sha256(body).hexdigest())
    EventSourcePoller(settings.events_queue_url, handler.lambda_handler).drain()
    return shas


def test_quality_json_is_the_committed_classifier_scored_on_the_committed_holdout(
    spark: object, ingest: Settings, job_options: JobOptions, sample_dir: Path
) -> None:
    # GIVEN 120 real photos of 4 fruits, committed in two batches
    labels = sorted(p.name for p in sample_dir.iterdir() if p.is_dir())[:4]
    photos = [photo for label in labels for photo in sorted((sample_dir / label).glob("*.jpg"))]
    shas = _upload_photos(ingest, photos[::2])
    assert run_job(spark, ingest, job_options).manifest is not None  # type: ignore[arg-type]
    shas += _upload_photos(ingest, photos[1::2])

    # WHEN the second batch commits
    manifest = run_job(spark, ingest, job_options).manifest  # type: ignore[arg-type]
    assert manifest is not None

    # THEN quality.json is what evaluating classifier.npz on holdout.npz gives, curve and confusion included
    classifier = load_classifier(_version_file(ingest, manifest, CLASSIFIER_FILE))
    holdout = load_reservoir(_version_file(ingest, manifest, HOLDOUT_FILE))
    quality = json.loads(_version_file(ingest, manifest, EVALUATION_FILE))
    floor = break_even(gain=ingest.gain, loss=ingest.loss)
    recomputed = evaluate(classifier, holdout, gain=ingest.gain, loss=ingest.loss, min_threshold=floor)
    recomputed |= {
        "familiar_factor": ingest.familiar_factor,
        "leave_labels_out": leave_labels_out(classifier, holdout, factor=ingest.familiar_factor),
    }
    assert quality == json.loads(json.dumps(recomputed))
    assert set(holdout.sha256.tolist()) == {sha for sha in shas if is_holdout(sha)}
    assert quality["n"] == holdout.n > 0
    assert quality["confusion"]["labels"] == labels
    assert sum(map(sum, quality["confusion"]["matrix"])) == holdout.n
    assert quality["best_threshold"] == classifier.threshold >= floor
    # AND the manifest carries it without the curve and confusion, and the classifier's facts beside it
    assert manifest["quality"] == {k: v for k, v in quality.items() if k not in {"curve", "confusion"}}
    assert manifest["classifier"]["labels"] == len(labels)
    assert manifest["classifier"]["n_train"] == len(shas) - holdout.n
    assert manifest["classifier"]["threshold"] == classifier.threshold
    assert "quality_s" not in manifest["timings"]
    # AND the version names the weights spec it ran with beside their id, for serving to load the same
    metadata = json.loads(_version_file(ingest, manifest, "metadata.json"))
    assert (metadata["weights"], metadata["weights_id"]) == ("random", "random")
    # AND `pomona status` and the demo's summary show those holdout figures
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    shown = collect_status(s3, sqs, ingest)["batches"][-1]
    assert shown["accuracy"] == quality["accuracy"]
    assert shown["answered_fraction"] == quality["answered_fraction"]
    assert shown["answered_accuracy"] == quality["answered_accuracy"]
    assert shown["net_revenue_per_1000"] == quality["net_revenue_per_1000"]
    assert shown["threshold"] == quality["best_threshold"]
    assert shown["holdout_n"] == holdout.n
    summary = holdout_summary(manifest)
    assert summary is not None
    assert summary == {name: quality[name] for name in summary}
    assert set(summary) >= {"accuracy", "n", "best_threshold", "answered_fraction", "net_revenue_per_1000"}
