"""The featurization job on local[2] Spark and the moto server: queue → job → committed outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest

from pomona.core.contract import ImageMessage, Reason, quarantine_key, sidecar_key
from pomona.core.outputs import CommittedOutputs, manifest_key, pca_latest_key, pca_prefix
from pomona.core.queues import queue_depth
from pomona.core.settings import Settings
from pomona.featurize.driver import JobOptions, run_job
from pomona.featurize.lineage import LineageError
from pomona.ingest import handler
from pomona.local.poller import EventSourcePoller
from pomona.ml.pca import PcaState, fit_pca, load_model, load_state
from pomona.testing.samples import SYNTHETIC_LABELS, fruit_image

pytestmark = pytest.mark.slow


@pytest.fixture
def ingest(ingest: Settings, random_model: Callable[[Settings], Settings]) -> Settings:
    return random_model(ingest)


def _upload(settings: Settings, images: dict[str, bytes]) -> None:
    s3 = boto3.client("s3")
    for key, body in images.items():
        s3.put_object(Bucket=settings.bucket, Key=key, Body=body)
    EventSourcePoller(settings.events_queue_url, handler.lambda_handler).drain()


def _synthetic(count: int, offset: int = 0) -> dict[str, bytes]:
    labels = SYNTHETIC_LABELS[:3]
    return {
        f"uploads/{labels[i % 3]}/img_{i}.jpg": fruit_image(labels[i % 3], i)
        for i in range(offset, offset + count)
    }


def _read_parquet(settings: Settings, keys: list[str]) -> dict[str, list[object]]:
    s3 = boto3.client("s3")
    tables = [
        pq.read_table(io.BytesIO(s3.get_object(Bucket=settings.bucket, Key=k)["Body"].read())) for k in keys
    ]
    merged: dict[str, list[object]] = {}
    for table in tables:
        for name, values in table.to_pydict().items():
            merged.setdefault(name, []).extend(values)
    return merged


def _queue_depth(settings: Settings) -> int:
    attrs = boto3.client("sqs").get_queue_attributes(
        QueueUrl=settings.images_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_queue_to_committed_outputs(spark: object, ingest: Settings, job_options: JobOptions) -> None:
    # GIVEN 24 accepted uploads on the images queue
    images = _synthetic(24)
    _upload(ingest, images)

    # WHEN the job runs
    result = run_job(spark, ingest, job_options)  # type: ignore[arg-type]

    # THEN one batch is committed: manifest, LATEST → v1, features and projections for every image
    manifest = result.manifest
    assert manifest is not None
    s3 = boto3.client("s3")
    stored = json.loads(
        s3.get_object(Bucket=ingest.bucket, Key=manifest_key("", manifest["batch_id"]))["Body"].read()
    )
    # scored unfamiliar by the classifier these 24 trained: a few at most (it depends on which are held out)
    assert 0 <= stored["counts"].pop("unfamiliar") <= 3
    assert stored["counts"] == {
        "received": 24,
        "malformed": 0,
        "duplicates": 0,
        "featurized": 24,
        "failed": {},
        "deferred": {},
        "labels": {"Apple Red": 8, "Banana": 8, "Lime": 8},
    }
    assert json.loads(s3.get_object(Bucket=ingest.bucket, Key=pca_latest_key(""))["Body"].read()) == {
        "version": 1,
        "batch_id": manifest["batch_id"],
    }
    features = _read_parquet(ingest, stored["files"]["features"])
    assert sorted(features["key"]) == sorted(images)  # type: ignore[type-var]
    assert {len(f) for f in features["features"]} == {1280}  # type: ignore[arg-type]
    assert set(features["pca_version"]) == {1}
    projections = _read_parquet(ingest, stored["files"]["projections"])
    assert {len(p) for p in projections["projection"]} == {stored["k"]}  # type: ignore[arg-type]
    metadata = json.loads(
        s3.get_object(Bucket=ingest.bucket, Key=pca_prefix("", 1, manifest["batch_id"]) + "metadata.json")[
            "Body"
        ].read()
    )
    assert metadata["n_seen"] == 24
    assert (metadata["weights"], metadata["weights_id"]) == ("random", "random")
    assert (
        (metadata["backend"], metadata["precision"])
        == (stored["backend"], stored["precision"])
        == ("litert", "f32")
    )
    assert _queue_depth(ingest) == 0


def test_part_files_record_their_weights_and_read_back_in_spark(
    spark: Any, ingest: Settings, job_options: JobOptions, tmp_path: Path
) -> None:
    # GIVEN a committed batch, its part files downloaded as a reader would fetch them
    _upload(ingest, _synthetic(8))
    manifest = run_job(spark, ingest, job_options).manifest
    assert manifest is not None
    s3 = boto3.client("s3")
    for kind in ("features", "projections"):
        for key in manifest["files"][kind]:
            (tmp_path / kind).mkdir(exist_ok=True)
            s3.download_file(ingest.bucket, key, str(tmp_path / kind / key.rsplit("/", 1)[1]))

    # WHEN Spark and pyarrow read them
    features = spark.read.parquet(str(tmp_path / "features"))
    projections = spark.read.parquet(str(tmp_path / "projections"))
    schemas = [pq.read_schema(path) for path in sorted(tmp_path.glob("*/*.parquet"))]

    # THEN every row is there with its documented types, and every file says which weights made it
    assert features.count() == projections.count() == 8
    assert dict(features.dtypes)["features"] == "array<float>"
    assert dict(projections.dtypes)["projection"] == "array<float>"
    provenance = {
        (s.metadata[b"pomona.weights_id"], s.metadata[b"pomona.backend"], s.metadata[b"pomona.precision"])
        for s in schemas
    }
    assert provenance == {(b"random", b"litert", b"f32")}


def test_duplicates_poison_and_malformed(spark: object, ingest: Settings, job_options: JobOptions) -> None:
    # GIVEN two uploads of the same bytes, one queued image whose bytes no longer decode, and a malformed message
    body = fruit_image("Plum", 1)
    _upload(ingest, {"uploads/Plum/a.jpg": body, "uploads/Plum/b.jpg": body, **_synthetic(6)})
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    broken = b"\xff\xd8\xff\xe0" + b"\x00" * 200
    put = s3.put_object(Bucket=ingest.bucket, Key="uploads/Plum/broken.jpg.raw", Body=broken)
    poison = ImageMessage(
        bucket=ingest.bucket,
        key="uploads/Plum/broken.jpg.raw",
        version_id=put["VersionId"],
        etag=put["ETag"],
        sha256=hashlib.sha256(broken).hexdigest(),
        size=len(broken),
        format="JPEG",
        width=100,
        height=100,
        mode="RGB",
        label="Plum",
        uploaded_at="2026-11-25T05:40:00.000Z",
        validated_at="2026-11-25T05:40:00.000Z",
    )
    EventSourcePoller(
        ingest.events_queue_url, handler.lambda_handler
    ).drain()  # the raw upload is quarantined
    sqs.send_message(QueueUrl=ingest.images_queue_url, MessageBody=poison.to_json())
    sqs.send_message(QueueUrl=ingest.images_queue_url, MessageBody='{"schema_version": 99}')

    # WHEN the job runs
    manifest = run_job(spark, ingest, job_options).manifest  # type: ignore[arg-type]

    # THEN the duplicate is counted once, the poison image is quarantined with its reason, the malformed one waits
    assert manifest is not None
    assert manifest["counts"] == {
        "received": 10,
        "malformed": 1,
        "duplicates": 1,
        "featurized": 7,
        "failed": {Reason.DECODE_FAILED.value: 1},
        "deferred": {},
        "labels": {"Plum": 1, "Apple Red": 2, "Banana": 2, "Lime": 2},
        "unfamiliar": None,  # no label has 5 training images yet: no classifier to score them
    }
    target = quarantine_key(
        Reason.DECODE_FAILED,
        poison.key,
        version_id=poison.version_id,
        quarantine_prefix=ingest.quarantine_prefix,
    )
    sidecar = json.loads(s3.get_object(Bucket=ingest.bucket, Key=sidecar_key(target))["Body"].read())
    assert sidecar["reason"] == "decode_failed"
    assert sidecar["sha256"] == poison.sha256
    assert _queue_depth(ingest) == 1  # the malformed message, left for the redrive policy


def test_two_runs_accumulate_into_one_shot_pca(
    spark: object, ingest: Settings, job_options: JobOptions
) -> None:
    # GIVEN two waves of uploads, each followed by a run
    _upload(ingest, _synthetic(12))
    first = run_job(spark, ingest, job_options).manifest  # type: ignore[arg-type]
    _upload(ingest, _synthetic(12, offset=12))
    second = run_job(spark, ingest, job_options).manifest  # type: ignore[arg-type]
    assert first is not None
    assert second is not None
    assert (first["pca_version"], second["pca_version"]) == (1, 2)

    # WHEN all committed features are read back and fitted at once
    keys = first["files"]["features"] + second["files"]["features"]
    features = np.asarray(_read_parquet(ingest, keys)["features"], dtype=np.float64)
    one_shot = fit_pca(PcaState.from_rows(features), n_components=second["k"])
    s3 = boto3.client("s3")
    version = pca_prefix("", 2, second["batch_id"])
    model = load_model(s3.get_object(Bucket=ingest.bucket, Key=version + "model.npz")["Body"].read())
    state = load_state(s3.get_object(Bucket=ingest.bucket, Key=version + "state.npz")["Body"].read())

    # THEN the incremental model is the one-shot model
    assert state.n == model.n_seen == 24
    np.testing.assert_allclose(model.mean, one_shot.mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(model.explained_variance, one_shot.explained_variance, rtol=1e-6)
    np.testing.assert_allclose(
        np.abs(model.components @ one_shot.components.T).diagonal()[:5], 1.0, atol=1e-6
    )


def test_a_new_stacks_single_first_upload_commits(
    spark: object, ingest: Settings, job_options: JobOptions
) -> None:
    # GIVEN a new deployment whose first upload is one photo
    _upload(ingest, _synthetic(1))

    # WHEN the job runs, and again after more uploads
    first = run_job(spark, ingest, job_options).manifest  # type: ignore[arg-type]
    _upload(ingest, _synthetic(5, offset=1))
    second = run_job(spark, ingest, job_options).manifest  # type: ignore[arg-type]

    # THEN the photo is committed at once (a point: one axis of no variance), and the next batch refits on all six
    assert first is not None
    assert second is not None
    assert (first["pca_version"], first["n_seen"], first["k"], first["counts"]["featurized"]) == (1, 1, 1, 1)
    assert (second["pca_version"], second["n_seen"]) == (2, 6)
    assert _queue_depth(ingest) == 0


def test_a_run_with_another_model_refuses_before_receiving_anything(
    spark: object, ingest: Settings, job_options: JobOptions, tmp_path: Path
) -> None:
    # GIVEN a PCA committed from random weights, and more uploads queued
    _upload(ingest, _synthetic(6))
    assert run_job(spark, ingest, job_options).manifest is not None  # type: ignore[arg-type]
    _upload(ingest, _synthetic(6, offset=6))
    queued = _queue_depth(ingest)

    # WHEN a run comes with other weights (any .h5 file: the check comes before the model is needed)
    other = tmp_path / "other.weights.h5"
    other.write_bytes(b"not the committed model")
    with pytest.raises(LineageError, match=r"expected features from the model of PCA v1 \(weights random"):
        run_job(spark, ingest.replace(weights=str(other), backend="tensorflow"), job_options)  # type: ignore[arg-type]

    # THEN nothing was received or committed: the messages wait, visible, for a run with the committed model
    assert queue_depth(boto3.client("sqs"), ingest.images_queue_url) == {"visible": queued, "in_flight": 0}
    s3 = boto3.client("s3")
    assert (
        json.loads(s3.get_object(Bucket=ingest.bucket, Key=pca_latest_key(""))["Body"].read())["version"] == 1
    )
    assert run_job(spark, ingest, job_options).manifest["pca_version"] == 2  # type: ignore[arg-type,index]


def _edit_committed_metadata(settings: Settings, edit: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite LATEST's version metadata.json through `edit`, as another run (or an older release) wrote it."""
    s3 = boto3.client("s3")
    latest = json.loads(s3.get_object(Bucket=settings.bucket, Key=pca_latest_key(""))["Body"].read())
    key = pca_prefix("", latest["version"], latest["batch_id"]) + "metadata.json"
    metadata = json.loads(s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read())
    edit(metadata)
    s3.put_object(Bucket=settings.bucket, Key=key, Body=json.dumps(metadata).encode())


def test_a_run_in_another_precision_refuses_before_receiving_anything(
    spark: object, ingest: Settings, job_options: JobOptions
) -> None:
    # GIVEN a PCA committed from bf16 features (the same weights and backend), and more uploads queued
    ingest = ingest.replace(backend="litert", precision="f32")
    _upload(ingest, _synthetic(6))
    assert run_job(spark, ingest, job_options).manifest is not None  # type: ignore[arg-type]
    _edit_committed_metadata(ingest, lambda metadata: metadata.update(precision="bf16"))
    _upload(ingest, _synthetic(6, offset=6))
    queued = _queue_depth(ingest)

    # WHEN a float32 run comes
    with pytest.raises(
        LineageError,
        match=r"\(weights random, backend litert, precision bf16\), got weights random, backend litert, "
        r"precision f32: one PCA never mixes features of two models\. Run with that model's POMONA_WEIGHTS, "
        r"POMONA_BACKEND and POMONA_PRECISION",
    ):
        run_job(spark, ingest, job_options)  # type: ignore[arg-type]

    # THEN nothing was received or committed
    assert queue_depth(boto3.client("sqs"), ingest.images_queue_url) == {"visible": queued, "in_flight": 0}
    s3 = boto3.client("s3")
    assert (
        json.loads(s3.get_object(Bucket=ingest.bucket, Key=pca_latest_key(""))["Body"].read())["version"] == 1
    )


def test_a_version_without_a_precision_counts_as_f32(
    spark: object, ingest: Settings, job_options: JobOptions
) -> None:
    # GIVEN a PCA version whose metadata names no precision (`Lineage.from_json` reads it as f32)
    _upload(ingest, _synthetic(6))
    assert run_job(spark, ingest, job_options).manifest is not None  # type: ignore[arg-type]
    _edit_committed_metadata(ingest, lambda metadata: metadata.pop("precision"))
    _upload(ingest, _synthetic(6, offset=6))

    # WHEN a float32 run comes
    manifest = run_job(spark, ingest, job_options).manifest  # type: ignore[arg-type]

    # THEN it builds on it, and says f32 from then on
    assert manifest is not None
    assert (manifest["pca_version"], manifest["n_seen"], manifest["precision"]) == (2, 12, "f32")


def test_a_bf16_run_on_openvino_records_its_precision(
    spark: object, ingest: Settings, job_options: JobOptions
) -> None:
    from pomona.ml.backends.openvino import cpu_capabilities

    if "BF16" not in cpu_capabilities():
        pytest.skip("this CPU has no bf16 arithmetic (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16)")
    # GIVEN uploads, and a deployment on OpenVINO in bf16 (the random model's .tflite file, as LiteRT's)
    bf16 = ingest.replace(backend="openvino", precision="bf16")
    _upload(bf16, _synthetic(12))

    # WHEN the job runs, and a float32 run comes after it
    manifest = run_job(spark, bf16, job_options).manifest  # type: ignore[arg-type]
    _upload(bf16, _synthetic(3, offset=12))
    with pytest.raises(
        LineageError, match=r"precision bf16\), got weights random, backend openvino, precision f32"
    ):
        run_job(spark, bf16.replace(precision="f32"), job_options)  # type: ignore[arg-type]

    # THEN the batch is committed, and the manifest, the version's metadata and every part file say bf16
    assert manifest is not None
    assert (manifest["counts"]["featurized"], manifest["backend"], manifest["precision"]) == (
        12,
        "openvino",
        "bf16",
    )
    assert _recorded_models(bf16, manifest, version=1) == {("openvino", "bf16")}


def _recorded_models(settings: Settings, manifest: dict[str, Any], *, version: int) -> set[tuple[str, str]]:
    """The (backend, precision) pairs the committed version's metadata and every part file of its batch name."""
    s3 = boto3.client("s3")
    key = pca_prefix("", version, manifest["batch_id"]) + "metadata.json"
    metadata = json.loads(s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read())
    found = {(metadata["backend"], metadata["precision"])}
    for part in manifest["files"]["features"] + manifest["files"]["projections"]:
        body = s3.get_object(Bucket=settings.bucket, Key=part)["Body"].read()
        provenance = pq.read_schema(io.BytesIO(body)).metadata
        found.add((provenance[b"pomona.backend"].decode(), provenance[b"pomona.precision"].decode()))
    return found


def test_auto_keeps_the_committed_lineages_model(
    spark: object, ingest: Settings, job_options: JobOptions
) -> None:
    # GIVEN a lineage committed by OpenVINO in float32 (not what `auto` gives a new lineage), and more uploads
    explicit = ingest.replace(backend="openvino", precision="f32")
    _upload(explicit, _synthetic(6))
    assert run_job(spark, explicit, job_options).manifest is not None  # type: ignore[arg-type]
    _upload(explicit, _synthetic(6, offset=6))

    # WHEN a run comes with the defaults, POMONA_BACKEND=auto and POMONA_PRECISION=auto
    manifest = run_job(spark, ingest.replace(backend="auto", precision="auto"), job_options).manifest  # type: ignore[arg-type]

    # THEN it builds on the lineage with the lineage's model, and every record of the batch names that model
    assert manifest is not None
    assert (manifest["pca_version"], manifest["n_seen"]) == (2, 12)
    assert (manifest["backend"], manifest["precision"]) == ("openvino", "f32")
    assert _recorded_models(ingest, manifest, version=2) == {("openvino", "f32")}


def _queued(settings: Settings) -> list[ImageMessage]:
    """Take every message off the images queue (deleting it), to be sent back as the test needs."""
    sqs = boto3.client("sqs")
    messages = []
    while batch := sqs.receive_message(QueueUrl=settings.images_queue_url, MaxNumberOfMessages=10).get(
        "Messages", []
    ):
        for message in batch:
            messages.append(ImageMessage.from_json(message["Body"]))
            sqs.delete_message(QueueUrl=settings.images_queue_url, ReceiptHandle=message["ReceiptHandle"])
    return sorted(messages, key=lambda m: m.key)


def test_messages_naming_gone_or_changed_objects_are_reported_not_featurized(
    spark: object, ingest: Settings, job_options: JobOptions
) -> None:
    # GIVEN five validated uploads whose messages then stop matching the bucket in every way they can
    _upload(ingest, _synthetic(5))
    gone, other_etag, other_bytes, overwritten, intact = _queued(ingest)
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    s3.delete_object(Bucket=ingest.bucket, Key=gone.key, VersionId=gone.version_id)  # the version itself
    s3.put_object(Bucket=ingest.bucket, Key=overwritten.key, Body=fruit_image("Lime", 99))  # a newer version
    wrong_etag = '"0123456789abcdef0123456789abcdef"'  # pragma: allowlist secret (an ETag)
    forged = [
        gone,
        dataclasses.replace(other_etag, etag=wrong_etag),
        dataclasses.replace(other_bytes, sha256=hashlib.sha256(b"other bytes").hexdigest()),
        overwritten,
        intact,
    ]
    EventSourcePoller(ingest.events_queue_url, handler.lambda_handler).drain()
    for message in _queued(ingest):  # the overwrite's own message: not this test's subject
        assert message.key == overwritten.key
    for message in forged:
        sqs.send_message(QueueUrl=ingest.images_queue_url, MessageBody=message.to_json())

    # WHEN the job runs
    manifest = run_job(spark, ingest, job_options).manifest

    # THEN the overwritten key is featurized from the version its message names, the others are reported
    # with what was expected and what was found, quarantined with their reason, and their messages deleted
    assert manifest is not None
    assert manifest["counts"]["featurized"] == 2
    assert manifest["counts"]["failed"] == {Reason.OBJECT_GONE.value: 1, Reason.OBJECT_CHANGED.value: 2}
    features = _read_parquet(ingest, manifest["files"]["features"])
    assert sorted(zip(features["key"], features["version_id"], strict=True)) == sorted(
        [(overwritten.key, overwritten.version_id), (intact.key, intact.version_id)]
    )
    details = {}
    for message, reason in [
        (gone, Reason.OBJECT_GONE),
        (forged[1], Reason.OBJECT_CHANGED),
        (forged[2], Reason.OBJECT_CHANGED),
    ]:
        target = sidecar_key(
            quarantine_key(
                reason, message.key, version_id=message.version_id, quarantine_prefix=ingest.quarantine_prefix
            )
        )
        sidecar = json.loads(s3.get_object(Bucket=ingest.bucket, Key=target)["Body"].read())
        assert (sidecar["reason"], sidecar["version_id"]) == (reason.value, message.version_id)
        details[message.key] = sidecar["detail"]
    assert details[gone.key].startswith(f"expected version {gone.version_id} of {gone.key}, found none")
    assert details[other_etag.key] == f"expected ETag {wrong_etag}, found another"
    assert details[other_bytes.key].startswith(f"expected sha256 {forged[2].sha256}, got ")
    assert _queue_depth(ingest) == 0


def test_a_batch_of_refused_and_gone_messages_commits_nothing_and_quarantines_each(
    spark: object, ingest: Settings, job_options: JobOptions
) -> None:
    # GIVEN a new stack's queue holding only a message naming another bucket and one naming a deleted version
    _upload(ingest, _synthetic(1))
    (gone,) = _queued(ingest)
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    s3.delete_object(Bucket=ingest.bucket, Key=gone.key, VersionId=gone.version_id)
    foreign = dataclasses.replace(gone, bucket="someone-elses-bucket", key="uploads/Lime/theirs.jpg")
    for message in (gone, foreign):
        sqs.send_message(QueueUrl=ingest.images_queue_url, MessageBody=message.to_json())

    # WHEN the job runs
    result = run_job(spark, ingest, job_options)

    # THEN nothing is committed, each message is quarantined by a sidecar saying why, and none is left
    assert result.manifest is None
    assert result.skipped == "no image featurized: 1 quarantined, 0 deferred"
    assert CommittedOutputs.in_bucket(s3, ingest).latest_version() == 0
    sidecars = {
        (sidecar["reason"], sidecar["original_key"]): sidecar["detail"]
        for sidecar in CommittedOutputs.in_bucket(s3, ingest).sidecars()
    }
    assert set(sidecars) == {(Reason.BAD_MESSAGE.value, foreign.key), (Reason.OBJECT_GONE.value, gone.key)}
    assert sidecars[(Reason.BAD_MESSAGE.value, foreign.key)] == (
        f"bucket: expected {ingest.bucket!r}, got 'someone-elses-bucket'"
    )
    assert s3.list_objects_v2(Bucket=ingest.bucket, Prefix="quarantine/bad_message/").get("KeyCount") == 1
    assert _queue_depth(ingest) == 0
