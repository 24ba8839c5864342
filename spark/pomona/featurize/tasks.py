"""What runs in the executors: the featurize pass and the projection pass, one Spark task per message group.

The featurize pass fetches the exact object versions the messages name, decodes and featurizes them, writes each
group's features part file, and reports its failed images and the part's statistics as a `PartOutcome`
(`pomona.featurize.outcome`). The outcomes are merged on the executors (a tree reduction), so the driver receives a
few PCA states per run whatever the number of partitions. The features stay in S3, where the projection pass reads them
back after the driver's refit.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pomona.core.aws import RETRIES
from pomona.core.contract import ImageMessage, Reason
from pomona.core.outputs import Lineage, features_key, projections_key
from pomona.core.settings import Settings, injected_fault
from pomona.featurize.fetch import Fetched, ImageStores, fetch_image
from pomona.featurize.outcome import ImageFailure, PartOutcome, part_statistics
from pomona.ml.backends import get_backend
from pomona.ml.classifier import Classifier, distances, load_classifier, predict_proba
from pomona.ml.featurizer import get_featurizer
from pomona.ml.pca import load_model, project
from pomona.ml.preprocess import DecodeLimits, preprocess_batch

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from pyspark import Broadcast

log = logging.getLogger(__name__)

CHUNK = 64  # images decoded and featurized together in an executor
FETCH_THREADS = 8  # concurrent GETs per Python worker: S3 latency hides behind the model
# Each image's identity in a part file, beside its vector.
IDENTITY_COLUMNS = ("sha256", "key", "label", "version_id")


def featurize_partitions(
    settings: Settings,
    groups: Broadcast[list[list[ImageMessage]]],
    *,
    batch_id: str,
    pca_version: int,
    provenance: dict[str, str],
) -> Callable[[Iterable[int]], Iterator[PartOutcome]]:
    """The executor function, over the task ids `i` of an RDD of `range(len(groups))`: fetch, decode and featurize
    the images of message group `i`, write features part file `i` if any image succeeded,
    and yield its outcome."""

    def run(parts: Iterable[int]) -> Iterator[PartOutcome]:
        s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES)
        stores = ImageStores(settings)
        featurizer = get_featurizer(
            settings.weights,
            settings.backend,
            precision=settings.precision,
            cache_dir=settings.model_cache_dir,
            batch_size=get_backend(settings.backend).best_batch,
            num_threads=task_cores(),
        )
        # Untrusted bytes: only the allowed formats' decoders, and no more pixels than ingestion accepts.
        limits = DecodeLimits.for_uploads(settings)
        for part in parts:
            _inject_fault(groups.value[part])
            started = time.monotonic()
            outcome = _featurize_group(
                s3,
                stores,
                featurizer,
                limits,
                groups.value[part],
                bucket=settings.bucket,
                key=features_key(settings.output_prefix, batch_id, part),
                part=part,
                batch_id=batch_id,
                pca_version=pca_version,
                provenance=provenance,
            )
            log.info(
                "Part featurized",
                extra={"part": part, "images": len(groups.value[part]), "s": time.monotonic() - started},
            )
            yield outcome

    return run


def _inject_fault(images: Sequence[ImageMessage]) -> None:
    """Tests only (POMONA_FAULT): `hang_in_task`, a stage that never ends; `crash_on:<sha256>`, the Python worker
    dies on that image, as an out-of-memory kill would."""
    fault = injected_fault()
    if fault == "hang_in_task":
        time.sleep(24 * 3600)
    if fault.startswith("crash_on:") and any(m.sha256 == fault.removeprefix("crash_on:") for m in images):
        log.error("Injected fault", extra={"fault": fault})
        os._exit(137)


def task_cores() -> int:
    """The cores Spark gave this task (`spark.task.cpus`, 1 by default): the model's threads. An executor of N cores
    runs N / spark.task.cpus tasks at once, one per Python worker, so its cores are used and never oversubscribed."""
    from pyspark import TaskContext

    context = TaskContext.get()
    return context.cpus() if context is not None else 1


def _featurize_group(
    s3: S3Client,
    stores: ImageStores,
    featurizer: Any,
    limits: DecodeLimits,
    images: Sequence[ImageMessage],
    *,
    bucket: str,
    key: str,
    part: int,
    batch_id: str,
    pca_version: int,
    provenance: dict[str, str],
) -> PartOutcome:
    """Fetch, decode and featurize one group; write its features to `key` if any image succeeded (else make sure
    no file of an earlier attempt is left there); its outcome."""
    chunks = (images[i : i + CHUNK] for i in range(0, len(images), CHUNK))
    featurized: list[tuple[ImageMessage, np.ndarray]] = []
    failures: list[ImageFailure] = []
    with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
        for chunk, fetched in _fetch_ahead(s3, stores, chunks, pool):
            ok, failed = _featurize_chunk(chunk, fetched, featurizer, limits)
            featurized += ok
            failures += failed
    if not featurized:
        # An earlier attempt of this task may have written the file before its images went away: the manifest
        # lists the folder, so a stale file must not stay there.
        s3.delete_object(Bucket=bucket, Key=key)
        return PartOutcome(failures, [], None)
    done = [image for image, _ in featurized]
    vectors = [np.asarray(f, dtype=np.float32) for _, f in featurized]
    identity = {c: [getattr(image, c) for image in done] for c in IDENTITY_COLUMNS}
    table = _part_table(
        identity, "features", vectors, batch_id=batch_id, pca_version=pca_version, provenance=provenance
    )
    put_parquet(s3, bucket, key, table)
    state, training, holdout = part_statistics(done, np.stack(vectors))
    return PartOutcome(failures, [part], state, training, holdout)


def _fetch_ahead(
    s3: S3Client, stores: ImageStores, chunks: Iterator[Sequence[ImageMessage]], pool: ThreadPoolExecutor
) -> Iterator[tuple[Sequence[ImageMessage], list[Fetched]]]:
    """Each chunk with its images fetched, the next chunk's GETs in flight while the caller works on this one."""
    ahead: tuple[Sequence[ImageMessage], list[Future[Fetched]]] | None = None
    for chunk in itertools.chain(chunks, [None]):
        current = ahead
        if chunk is not None:
            ahead = (chunk, [pool.submit(fetch_image, stores, s3, image) for image in chunk])
        if current is not None:
            yield current[0], [future.result() for future in current[1]]


def _featurize_chunk(
    chunk: Sequence[ImageMessage], fetched: list[Fetched], featurizer: Any, limits: DecodeLimits
) -> tuple[list[tuple[ImageMessage, np.ndarray]], list[ImageFailure]]:
    """(each image featurized with its features, each image not featurized with why), in the chunk's order."""
    batch, decode_errors = preprocess_batch([f for f in fetched if isinstance(f, bytes)], limits)
    features, decode_iter = iter(featurizer(batch)), iter(decode_errors)
    ok: list[tuple[ImageMessage, np.ndarray]] = []
    failures: list[ImageFailure] = []
    for image, f in zip(chunk, fetched, strict=True):
        if isinstance(f, ImageFailure):
            failures.append(f)
        elif (error := next(decode_iter)) is not None:
            # Whatever raised in the decoder: its type is in the detail and the sidecar.
            failures.append(ImageFailure(image, Reason.DECODE_FAILED, str(error), error.error_type))
        else:
            ok.append((image, next(features)))
    return ok, failures


def project_partitions(
    settings: Settings,
    model_npz: bytes,
    *,
    parts: Sequence[int],
    batch_id: str,
    pca_version: int,
    provenance: dict[str, str],
    classifier_npz: bytes | None = None,
) -> Callable[[Iterable[int]], Iterator[pd.DataFrame]]:
    """The executor function of the second pass, over the task ids `i` of an RDD of `range(len(parts))`: read
    features part file `parts[i]` back from S3, project it with this batch's refit, write its projections part
    file, and yield (sha256, label, projection, distance) of its images: `distance` to the nearest label of the
    batch's new classifier (`classifier_npz`; NaN without one), which scores in a space of its own."""

    def run(tasks: Iterable[int]) -> Iterator[pd.DataFrame]:
        model = load_model(model_npz)
        classifier = None if classifier_npz is None else load_classifier(classifier_npz)
        s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES)
        for part in (parts[i] for i in tasks):
            key = features_key(settings.output_prefix, batch_id, part)
            features = pq.read_table(
                io.BytesIO(s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read())
            )
            meta = features.select(list(IDENTITY_COLUMNS)).to_pandas()
            rows = np.stack(features.column("features").to_numpy(zero_copy_only=False))
            projected = list(project(model, rows))
            distance = np.full(len(meta), np.nan) if classifier is None else distances(classifier, rows)
            table = _part_table(
                {c: meta[c] for c in IDENTITY_COLUMNS},
                "projection",
                projected,
                batch_id=batch_id,
                pca_version=pca_version,
                provenance=provenance,
                extra=_scored(classifier, rows, distance),
            )
            put_parquet(s3, settings.bucket, projections_key(settings.output_prefix, batch_id, part), table)
            yield pd.DataFrame(
                {
                    "sha256": meta["sha256"],
                    "label": meta["label"],
                    "projection": projected,
                    "distance": distance,
                }
            )

    return run


def _scored(classifier: Classifier | None, rows: np.ndarray, distance: np.ndarray) -> dict[str, pa.Array]:
    """The batch's classifier on each image: its most probable label, that label's probability, and the distance
    to the nearest label (what "not something I know" is judged by); nulls without a classifier."""
    if classifier is None:
        n = len(rows)
        return {
            "prediction": pa.nulls(n, pa.string()),
            "confidence": pa.nulls(n, pa.float64()),
            "distance": pa.nulls(n, pa.float64()),
        }
    proba = predict_proba(classifier, rows)
    best = proba.argmax(axis=1)
    return {
        "prediction": pa.array(np.asarray(classifier.labels)[best].tolist(), pa.string()),
        "confidence": pa.array(proba[np.arange(len(rows)), best], pa.float64()),
        "distance": pa.array(distance, pa.float64()),
    }


def file_provenance(lineage: Lineage) -> dict[str, str]:
    """Key-value metadata of every part file: which weights, backend and precision made its features (`random`
    shows)."""
    return {f"pomona.{name}": value for name, value in lineage.to_json().items()}


def _part_table(
    identity: Mapping[str, Sequence[str]],
    name: str,
    vectors: Sequence[np.ndarray],
    *,
    batch_id: str,
    pca_version: int,
    provenance: dict[str, str],
    extra: Mapping[str, pa.Array] | None = None,
) -> pa.Table:
    """A features or projections part file: the images' identity, the batch id and PCA version on every row, the
    vectors as float32 lists under `name`, any `extra` columns after them, and the provenance as file metadata.
    The columns are the Iceberg tables' (`pomona.featurize.tables.SCHEMAS`)."""
    n = len(vectors)
    return pa.table(
        {
            **{c: pa.array(identity[c], pa.string()) for c in IDENTITY_COLUMNS},
            "batch_id": pa.array([batch_id] * n, pa.string()),
            "pca_version": pa.array([pca_version] * n, pa.int32()),
            name: pa.array(vectors, pa.list_(pa.float32())),
            **(extra or {}),
        },
        metadata=provenance,
    )


def put_parquet(s3: S3Client, bucket: str, key: str, table: pa.Table) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    s3.put_object(Bucket=bucket, Key=key, Body=sink.getvalue(), ContentType="application/vnd.apache.parquet")
