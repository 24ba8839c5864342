"""The featurization job: drain the images queue, featurize in Spark executors, refit the PCA, commit to S3.

Commit protocol (readers trust only batches with a manifest):
  1. outputs: features and projections part files, failed images quarantined;
  2. the PCA version `models/pca/v<N>/` (model, metadata holding the manifest to be, seen hashes, quality);
  3. `models/pca/LATEST` moved from N-1 to N with a conditional write (a concurrent run fails here, cleanly);
  4. `batches/<id>/manifest.json`;
  5. the messages deleted.
A crash before 3 leaves files no reader trusts; the next run deletes them and the messages come back. A crash
between 3 and 4 is rolled forward by the next run, which writes the manifest from the version's metadata. A crash
after 4 only redelivers messages, which dedupe finds committed. A lock in S3 keeps two runs from working at once.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import itertools
import logging
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from pomona.core.contract import (
    ImageMessage,
    Reason,
    features_key,
    manifest_key,
    new_batch_id,
    pca_prefix,
    projections_key,
    quarantine_key,
    sidecar_key,
    utc_now,
)
from pomona.core.errors import ContractError, PomonaError
from pomona.core.settings import Settings
from pomona.core.store import (
    RETRIES,
    ConcurrentRunError,
    RunLock,
    advance_latest,
    is_missing,
    is_precondition_failed,
    manifest_exists,
    put_json,
    read_latest,
    read_pca_metadata,
)
from pomona.ml.pca import PcaModel, PcaState, fit_pca, load_npz, merge_pca_state, project, state_to_npz

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient
    from pyspark import Broadcast
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
_T = TypeVar("_T")

EXIT_CONCURRENT_RUN = 75  # EX_TEMPFAIL: another run was working; retry later
FAULT_ENV = "POMONA_FAULT"  # names a phase at which the process kills itself: the fault-injection point
CHUNK = 64  # images decoded and featurized together in an executor
FETCH_THREADS = 8  # concurrent GETs per Python worker: S3 latency hides behind the model
META_COLUMNS = ("sha256", "key", "label", "version_id", "etag", "bucket")
# What a partition of the featurize pass tells the driver, besides the features part file it wrote: one row per
# image that failed (sha256, reason, detail), and one row for that part file (its number, and the PCA statistics
# of its features). The features themselves stay in S3, where the projection pass reads them back: they never
# travel through Spark.
OUTCOME_SCHEMA = "sha256 string, reason string, detail string, part int, state binary"
OUTCOME_COLUMNS = [field.split()[0] for field in OUTCOME_SCHEMA.split(", ")]
PROJECTED_SCHEMA = "sha256 string, label string, projection array<float>"


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    max_images: int = 50_000
    weights: str = "imagenet"
    backend: str = "litert"
    cache_dir: str | None = None
    visibility_timeout_s: int = 300
    heartbeat_s: float = 60.0
    wait_s: int = 1  # long-poll seconds per receive; the queue is empty after one empty receive
    # Each partition costs ~0.4 s here beyond its images (a task, a 13 MB PCA state to the driver): measured on
    # the 540 sample photos, 2 partitions of 270 took 6.9 s to featurize where 8 of ~67 took 10.0 s (first
    # session of 2026-11-30, when features still went through Spark's cache; not re-measured since).
    images_per_partition: int = 512


@dataclass
class Received:
    """What the drain took off the queue: valid messages with their receipts, and what it left for the DLQ."""

    messages: list[tuple[ImageMessage, str]] = field(default_factory=list)
    malformed: int = 0

    @property
    def receipts(self) -> list[str]:
        return [receipt for _, receipt in self.messages]


@dataclass(frozen=True)
class BatchResult:
    """The committed manifest, or why nothing was committed."""

    manifest: dict[str, Any] | None
    skipped: str | None = None


# -- the queue ---------------------------------------------------------------------------------------------------


def drain_queue(
    sqs: SQSClient, queue_url: str, *, max_images: int, visibility_timeout_s: int, wait_s: int
) -> Received:
    """Receive in batches of 10 until the queue is empty or `max_images` valid messages are held.

    A message that breaks the contract is counted and left alone: it comes back after its visibility timeout
    and the redrive policy moves it to the DLQ after the queue's receive limit.
    """
    received = Received()
    while len(received.messages) < max_images:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(10, max_images - len(received.messages)),
            VisibilityTimeout=visibility_timeout_s,
            WaitTimeSeconds=wait_s,
        ).get("Messages", [])
        if not batch:
            break
        for message in batch:
            try:
                received.messages.append((ImageMessage.from_json(message["Body"]), message["ReceiptHandle"]))
            except ContractError as err:
                received.malformed += 1
                log.warning(
                    "Message breaks the contract",
                    extra={"message_id": message["MessageId"], "error": str(err)},
                )
    return received


def delete_messages(sqs: SQSClient, queue_url: str, receipts: Sequence[str]) -> None:
    for start in range(0, len(receipts), 10):
        chunk = receipts[start : start + 10]
        _fault("mid_delete") if start > 0 else None
        sqs.delete_message_batch(
            QueueUrl=queue_url, Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)]
        )


class Heartbeat:
    """Keeps held messages invisible and the run lock alive while the job works."""

    def __init__(
        self, sqs: SQSClient, queue_url: str, lock: RunLock, *, every_s: float, visibility_timeout_s: int
    ) -> None:
        self.sqs, self.queue_url, self.lock = sqs, queue_url, lock
        self.every_s, self.visibility_timeout_s = every_s, visibility_timeout_s
        self.receipts: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pomona-heartbeat", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.beat()
            except Exception:  # a missed beat is survivable; the next one retries
                log.exception("Heartbeat failed")

    def beat(self) -> None:
        self.lock.renew()
        receipts = list(self.receipts)
        for start in range(0, len(receipts), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": self.visibility_timeout_s}
                for i, r in enumerate(receipts[start : start + 10])
            ]
            self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)  # type: ignore[arg-type]


def partition_count(images: int, *, images_per_partition: int, parallelism: int) -> int:
    """Partitions for a batch: about `images_per_partition` images each, in whole rounds over the `parallelism`
    task slots (a short last round would leave cores idle), at most 4 rounds, never more than the images."""
    wanted = math.ceil(images / images_per_partition)
    rounds = min(4, max(1, math.ceil(wanted / max(1, parallelism))))
    return max(1, min(images, rounds * max(1, parallelism)))


def split_evenly(items: Sequence[_T], parts: int) -> list[list[_T]]:
    """`items` in order, cut into `parts` runs whose lengths differ by at most one."""
    size, extra = divmod(len(items), parts)
    bounds = itertools.accumulate([0] + [size + (i < extra) for i in range(parts)])
    return [list(items[a:b]) for a, b in itertools.pairwise(bounds)]


# -- dedupe ------------------------------------------------------------------------------------------------------


def split_duplicates(
    messages: Sequence[tuple[ImageMessage, str]], seen: set[str]
) -> tuple[list[tuple[ImageMessage, str]], list[tuple[ImageMessage, str]]]:
    """(first occurrence of each image not yet committed, the rest). Images are identified by sha256."""
    fresh: list[tuple[ImageMessage, str]] = []
    duplicates: list[tuple[ImageMessage, str]] = []
    taken = set(seen)
    for message, receipt in messages:
        if message.sha256 in taken:
            duplicates.append((message, receipt))
        else:
            taken.add(message.sha256)
            fresh.append((message, receipt))
    return fresh, duplicates


# -- executor side -----------------------------------------------------------------------------------------------


def fetch_image(s3: S3Client, row: Any) -> tuple[bytes | None, Reason | None, str]:
    """The exact bytes the message names, or why they cannot be had (gone, or changed since validation)."""
    try:
        body = s3.get_object(Bucket=row.bucket, Key=row.key, VersionId=row.version_id, IfMatch=row.etag)[
            "Body"
        ].read()
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in {"PreconditionFailed", "412"}:
            return None, Reason.OBJECT_CHANGED, f"expected ETag {row.etag}, found another"
        if is_missing(err) or code in {"NoSuchVersion", "InvalidArgument", "400"}:
            return (
                None,
                Reason.OBJECT_GONE,
                f"expected version {row.version_id} of {row.key}, found none ({code})",
            )
        raise
    import hashlib

    digest = hashlib.sha256(body).hexdigest()
    if digest != row.sha256:
        return None, Reason.OBJECT_CHANGED, f"expected sha256 {row.sha256}, got {digest}"
    return body, None, ""


def featurize_partitions(
    settings: Settings,
    options: JobOptions,
    groups: Broadcast[list[list[tuple[str, ...]]]],
    *,
    batch_id: str,
    pca_version: int,
    provenance: dict[str, str],
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The executor function, over row ids `i` of `spark.range(len(groups))`: fetch, decode and featurize the
    images of message group `i` (rows of META_COLUMNS), write features part file `i` if any image succeeded, and
    yield the outcome rows (OUTCOME_SCHEMA)."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pomona.ml.featurizer import BEST_BATCH, get_featurizer

        s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES)
        cache_dir = Path(options.cache_dir) if options.cache_dir else None
        featurizer = get_featurizer(
            options.weights,
            options.backend,  # type: ignore[arg-type]
            cache_dir=cache_dir,
            batch_size=BEST_BATCH[options.backend],  # type: ignore[index]
        )
        for part in _task_ids(frames):
            started = time.monotonic()
            outcomes = _featurize_group(
                s3,
                featurizer,
                pd.DataFrame(groups.value[part], columns=META_COLUMNS),
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
            yield outcomes

    return run


def _task_ids(frames: Iterator[pd.DataFrame]) -> Iterator[int]:
    """The row ids of a `spark.range` partition, as the pandas UDF receives them."""
    for frame in frames:
        yield from (int(i) for i in frame["id"])


def _featurize_group(
    s3: S3Client,
    featurizer: Any,
    messages: pd.DataFrame,
    *,
    bucket: str,
    key: str,
    part: int,
    batch_id: str,
    pca_version: int,
    provenance: dict[str, str],
) -> pd.DataFrame:
    """Fetch, decode and featurize one group; write its features to `key` if any image succeeded (else make sure
    no file of an earlier attempt is left there); its outcome rows (OUTCOME_SCHEMA)."""
    from pomona.ml.featurizer import preprocess_batch

    chunks = (messages.iloc[i : i + CHUNK] for i in range(0, len(messages), CHUNK))
    with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
        result = pd.concat(
            [
                _featurize_chunk(chunk, fetched, featurizer, preprocess_batch)
                for chunk, fetched in _fetch_ahead(s3, chunks, pool)
            ],
            ignore_index=True,
        )
    ok = result[result["reason"].isna()]
    outcomes = [result.loc[result["reason"].notna(), ["sha256", "reason", "detail"]]]
    if len(ok):
        vectors = [np.asarray(f, dtype=np.float32) for f in ok["features"]]
        table = _part_table(
            ok, "features", vectors, batch_id=batch_id, pca_version=pca_version, provenance=provenance
        )
        _put_parquet(s3, bucket, key, table)
        state = PcaState.from_rows(np.stack(vectors))
        outcomes.append(pd.DataFrame({"part": [part], "state": [_state_bytes(state)]}))
    else:
        # An earlier attempt of this task may have written the file before its images went away: the manifest
        # lists the folder, so a stale file must not stay there.
        s3.delete_object(Bucket=bucket, Key=key)
    return pd.concat(outcomes, ignore_index=True).reindex(columns=OUTCOME_COLUMNS)


def _fetch_ahead(
    s3: S3Client, chunks: Iterator[pd.DataFrame], pool: ThreadPoolExecutor
) -> Iterator[tuple[pd.DataFrame, list[tuple[bytes | None, Reason | None, str]]]]:
    """Each chunk with its images fetched, the next chunk's GETs in flight while the caller works on this one."""
    ahead: tuple[pd.DataFrame, list[Future[tuple[bytes | None, Reason | None, str]]]] | None = None
    for chunk in itertools.chain(chunks, [None]):
        current = ahead
        if chunk is not None:
            ahead = (chunk, [pool.submit(fetch_image, s3, row) for row in chunk.itertuples(index=False)])
        if current is not None:
            yield current[0], [future.result() for future in current[1]]


def _featurize_chunk(
    chunk: pd.DataFrame,
    fetched: list[tuple[bytes | None, Reason | None, str]],
    featurizer: Any,
    preprocess_batch: Any,
) -> pd.DataFrame:
    rows = list(chunk.itertuples(index=False))
    images = [body for body, _, _ in fetched if body is not None]
    batch, decode_errors = preprocess_batch(images)
    features = iter(featurizer(batch))
    decode_iter = iter(decode_errors)
    out_features: list[np.ndarray | None] = []
    reasons: list[str | None] = []
    details: list[str | None] = []
    for body, reason, detail in fetched:
        if body is None:
            out_features.append(None)
            reasons.append(reason.value if reason else Reason.OBJECT_GONE.value)
            details.append(detail)
            continue
        error = next(decode_iter)
        if error is not None:
            out_features.append(None)
            reasons.append(Reason.DECODE_FAILED.value)
            details.append(error)
        else:
            out_features.append(next(features))
            reasons.append(None)
            details.append(None)
    return pd.DataFrame(
        {
            "sha256": [r.sha256 for r in rows],
            "key": [r.key for r in rows],
            "label": [r.label for r in rows],
            "version_id": [r.version_id for r in rows],
            "features": out_features,
            "reason": reasons,
            "detail": details,
        }
    )


def project_partitions(
    settings: Settings,
    model_npz: bytes,
    *,
    parts: Sequence[int],
    batch_id: str,
    pca_version: int,
    provenance: dict[str, str],
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The executor function of the second pass, over row ids `i` of `spark.range(len(parts))`: read features
    part file `parts[i]` back from S3, project it with this batch's refit, write its projections part file."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model, _ = load_npz(model_npz)
        s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES)
        for part in (parts[i] for i in _task_ids(frames)):
            key = features_key(settings.output_prefix, batch_id, part)
            features = pq.read_table(
                io.BytesIO(s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read())
            )
            meta = features.select(["sha256", "key", "label", "version_id"]).to_pandas()
            projected = list(
                project(model, np.stack(features.column("features").to_numpy(zero_copy_only=False)))
            )
            table = _part_table(
                meta,
                "projection",
                projected,
                batch_id=batch_id,
                pca_version=pca_version,
                provenance=provenance,
            )
            _put_parquet(s3, settings.bucket, projections_key(settings.output_prefix, batch_id, part), table)
            yield pd.DataFrame({"sha256": meta["sha256"], "label": meta["label"], "projection": projected})

    return run


def file_provenance(*, weights_id: str, backend: str) -> dict[str, str]:
    """Key-value metadata of every part file: which weights and backend made its features (`random` shows)."""
    return {"pomona.weights_id": weights_id, "pomona.backend": backend}


def _part_table(
    frame: pd.DataFrame,
    name: str,
    vectors: Sequence[np.ndarray],
    *,
    batch_id: str,
    pca_version: int,
    provenance: dict[str, str],
) -> pa.Table:
    """A features or projections part file: the images' identity, the batch id and PCA version on every row, the
    vectors as float32 lists under `name`, and the provenance as file metadata."""
    n = len(frame)
    return pa.table(
        {
            **{c: pa.array(frame[c], pa.string()) for c in ("sha256", "key", "label", "version_id")},
            "batch_id": pa.array([batch_id] * n, pa.string()),
            "pca_version": pa.array([pca_version] * n, pa.int32()),
            name: pa.array(vectors, pa.list_(pa.float32())),
        },
        metadata=provenance,
    )


def _put_parquet(s3: S3Client, bucket: str, key: str, table: pa.Table) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    s3.put_object(Bucket=bucket, Key=key, Body=sink.getvalue(), ContentType="application/vnd.apache.parquet")


def _state_bytes(state: PcaState) -> bytes:
    sink = io.BytesIO()
    np.savez(sink, n=np.int64(state.n), mean=state.mean, scatter=state.scatter)
    return sink.getvalue()


def _state_from_bytes(data: bytes) -> PcaState:
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return PcaState(n=int(arrays["n"]), mean=arrays["mean"], scatter=arrays["scatter"])


# -- the driver --------------------------------------------------------------------------------------------------


class Job:
    """One run of the featurization job against one deployment."""

    def __init__(self, spark: SparkSession, settings: Settings, options: JobOptions) -> None:
        self.spark = spark
        self.settings = settings
        self.options = options
        self.s3: S3Client = boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES)
        self.sqs: SQSClient = boto3.client("sqs", endpoint_url=settings.endpoint_url, config=RETRIES)
        self.bucket = settings.bucket
        self.prefix = settings.output_prefix

    def run(self) -> BatchResult:
        started = time.monotonic()
        # The quality probe's scikit-learn takes ~0.7 s of CPU to import. Imported while the run takes its lock
        # and drains the queue, mostly waiting, it is off the batch's path (`_quality` waits for it if needed).
        threading.Thread(target=importlib.import_module, args=("pomona.ml.quality",)).start()
        lock = RunLock(self.s3, self.bucket)
        lock.acquire()
        try:
            self.recover()
            with Heartbeat(
                self.sqs,
                self.settings.images_queue_url,
                lock,
                every_s=self.options.heartbeat_s,
                visibility_timeout_s=self.options.visibility_timeout_s,
            ) as heartbeat:
                return self._run_batch(heartbeat, started)
        finally:
            lock.release()

    def recover(self) -> None:
        """Finish a commit a crash interrupted after LATEST moved, and delete what uncommitted runs left."""
        version, _ = read_latest(self.s3, self.bucket, self.prefix)
        metadata = read_pca_metadata(self.s3, self.bucket, self.prefix, version) if version else None
        if metadata and not manifest_exists(self.s3, self.bucket, self.prefix, metadata["batch_id"]):
            log.warning(
                "Rolling forward a batch committed to LATEST without a manifest",
                extra={"batch_id": metadata["batch_id"]},
            )
            put_json(
                self.s3, self.bucket, manifest_key(self.prefix, metadata["batch_id"]), metadata["manifest"]
            )
        self._delete_orphans(latest=version)

    def _delete_orphans(self, *, latest: int) -> None:
        orphans: list[str] = []
        for folder in ("features/", "projections/"):
            for batch_prefix in self._folders(f"{self.prefix}{folder}"):
                batch_id = batch_prefix.rstrip("/").rsplit("batch_id=", 1)[-1]
                if not manifest_exists(self.s3, self.bucket, self.prefix, batch_id):
                    orphans += self._keys(batch_prefix)
        for version_prefix in self._folders(f"{self.prefix}models/pca/"):
            name = version_prefix.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("v") and name[1:].isdigit() and int(name[1:]) > latest:
                orphans += self._keys(version_prefix)
        for start in range(0, len(orphans), 1000):
            chunk = orphans[start : start + 1000]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk]})
        if orphans:
            log.warning("Deleted files of uncommitted runs", extra={"files": len(orphans)})

    def _folders(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        )
        return [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]

    def _keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def _run_batch(self, heartbeat: Heartbeat, started: float) -> BatchResult:
        timings: dict[str, float] = {}
        with timed(timings, "drain_s"):
            received = drain_queue(
                self.sqs,
                self.settings.images_queue_url,
                max_images=self.options.max_images,
                visibility_timeout_s=self.options.visibility_timeout_s,
                wait_s=self.options.wait_s,
            )
        heartbeat.receipts = received.receipts
        _fault("after_receive")
        if not received.messages:
            return BatchResult(manifest=None, skipped=f"no valid messages ({received.malformed} malformed)")

        latest, latest_etag = read_latest(self.s3, self.bucket, self.prefix)
        stored_state, seen = self._load_version(latest)
        fresh, duplicates = split_duplicates(received.messages, seen)
        version = latest + 1
        batch_id = new_batch_id(entropy=os.urandom(8))
        counts: dict[str, Any] = {
            "received": len(received.messages) + received.malformed,
            "malformed": received.malformed,
            "duplicates": len(duplicates),
        }
        if not fresh:
            delete_messages(self.sqs, self.settings.images_queue_url, [r for _, r in duplicates])
            return BatchResult(manifest=None, skipped=f"all {len(duplicates)} images already committed")

        with timed(timings, "featurize_s"):
            outcomes = self._featurize([m for m, _ in fresh], batch_id=batch_id, version=version)
        written = outcomes[outcomes["part"].notna()]
        failures = outcomes[outcomes["sha256"].notna()]
        _fault("after_features")

        with timed(timings, "refit_s"):
            state = stored_state or PcaState.empty(_feature_dim())
            for state_bytes in written["state"]:
                state = merge_pca_state(state, _state_from_bytes(state_bytes))
            if state.n < 2:
                raise PomonaError(f"expected at least 2 images seen to fit a PCA, got {state.n}")
            model = fit_pca(
                state,
                variance_target=self.settings.variance_target,
                max_components=self.settings.max_components,
                n_components=self.settings.n_components,
            )
            model_npz = state_to_npz(model, state)

        with timed(timings, "project_s"):
            parts = sorted(written["part"].astype(int))
            projected = self._project(parts, model_npz, batch_id=batch_id, version=version)

        clock = time.monotonic()
        by_sha = {m.sha256: m for m, _ in fresh}
        for failure in failures.itertuples(index=False):
            self._quarantine(by_sha[failure.sha256], Reason(failure.reason), failure.detail)
        with timed(timings, "quality_s"):
            quality = self._quality(projected)
        counts |= {
            "featurized": len(projected),
            "failed": dict(Counter(failures["reason"])),
            "labels": dict(Counter(projected["label"])),
        }
        timings["total_s"] = time.monotonic() - started
        manifest: dict[str, Any] = {
            "batch_id": batch_id,
            "created_at": utc_now(),
            "pca_version": version,
            "n_seen": model.n_seen,
            "k": model.n_components,
            "explained_variance": float(model.explained_variance_ratio.sum()),
            "weights_id": self._provenance["pomona.weights_id"],
            "backend": self.options.backend,
            "counts": counts,
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "images_per_s": round(len(fresh) / max(timings["featurize_s"] + timings["project_s"], 1e-9), 2),
            "quality": {k: v for k, v in quality.items() if k != "curve"},
            "files": {
                "features": self._keys(f"{self.prefix}features/batch_id={batch_id}/"),
                "projections": self._keys(f"{self.prefix}projections/batch_id={batch_id}/"),
            },
        }
        # Fencing: a run whose lease lapsed and was taken over stops here, before it writes models/; the renewal
        # gives it a full TTL for the few writes left, so no run can take over in between.
        heartbeat.lock.renew()
        self._write_version(version, model, model_npz, seen | set(projected["sha256"]), manifest, quality)
        _fault("after_pca_version")
        advance_latest(
            self.s3, self.bucket, self.prefix, version=version, etag=latest_etag, batch_id=batch_id
        )
        _fault("after_latest")
        self._write_manifest(manifest)
        _fault("after_manifest")
        delete_messages(self.sqs, self.settings.images_queue_url, [r for _, r in received.messages])
        manifest["timings"]["commit_s"] = round(time.monotonic() - clock, 3)
        log.info("Batch committed", extra={"batch_id": batch_id, "pca_version": version, **counts})
        return BatchResult(manifest=manifest)

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        key = manifest_key(self.prefix, manifest["batch_id"])
        try:
            put_json(self.s3, self.bucket, key, manifest, if_none_match=True)
        except ClientError as err:
            # The key is this batch's alone: a manifest there is this one, written by our own first attempt
            # (its response lost, botocore retried it) or rolled forward from the version's metadata.
            if not is_precondition_failed(err):
                raise

    def _featurize(self, messages: Sequence[ImageMessage], *, batch_id: str, version: int) -> pd.DataFrame:
        """Run the featurize pass; its outcome rows (OUTCOME_SCHEMA)."""
        rows = [tuple(getattr(m, c) for c in META_COLUMNS) for m in messages]
        parts = partition_count(
            len(rows),
            images_per_partition=self.options.images_per_partition,
            parallelism=self.spark.sparkContext.defaultParallelism,
        )
        # Task i featurizes group i. The groups are broadcast, and the tasks run over `spark.range`: a DataFrame
        # made from Python rows would convert them in an extra Python worker per task (~1 s to start one).
        groups = self.spark.sparkContext.broadcast(split_evenly(rows, parts))
        featurize = featurize_partitions(
            self.settings,
            self.options,
            groups,
            batch_id=batch_id,
            pca_version=version,
            provenance=self._provenance,
        )
        try:
            return self._run_tasks(parts, featurize, OUTCOME_SCHEMA)
        finally:
            groups.destroy()

    def _project(
        self, parts: Sequence[int], model_npz: bytes, *, batch_id: str, version: int
    ) -> pd.DataFrame:
        """Run the projection pass, a task per features part file; (sha256, label, projection) per image."""
        if not parts:
            return pd.DataFrame({"sha256": [], "label": [], "projection": []})
        project_parts = project_partitions(
            self.settings,
            model_npz,
            parts=parts,
            batch_id=batch_id,
            pca_version=version,
            provenance=self._provenance,
        )
        return self._run_tasks(len(parts), project_parts, PROJECTED_SCHEMA)

    def _run_tasks(
        self, tasks: int, function: Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]], schema: str
    ) -> pd.DataFrame:
        """`function` over the row ids 0..tasks-1, one per Spark task; every row it yields, on the driver."""
        ids = self.spark.range(0, tasks, 1, numPartitions=tasks)
        return pd.DataFrame(ids.mapInPandas(function, schema).toPandas())

    def _load_version(self, version: int) -> tuple[PcaState | None, set[str]]:
        """The merge state and the hashes of every image committed up to `version`."""
        if version == 0:
            return None, set()
        base = pca_prefix(self.prefix, version)
        _, state = load_npz(self.s3.get_object(Bucket=self.bucket, Key=base + "model.npz")["Body"].read())
        seen_table = pq.read_table(
            io.BytesIO(self.s3.get_object(Bucket=self.bucket, Key=base + "seen.parquet")["Body"].read())
        )
        return state, set(seen_table.column("sha256").to_pylist())

    def _write_version(
        self,
        version: int,
        model: PcaModel,
        model_npz: bytes,
        seen: set[str],
        manifest: dict[str, Any],
        quality: dict[str, Any],
    ) -> None:
        base = pca_prefix(self.prefix, version)
        self.s3.put_object(Bucket=self.bucket, Key=base + "model.npz", Body=model_npz)
        _put_parquet(self.s3, self.bucket, base + "seen.parquet", pa.table({"sha256": sorted(seen)}))
        put_json(self.s3, self.bucket, base + "quality.json", quality)
        metadata = {
            "version": version,
            "batch_id": manifest["batch_id"],
            "n_seen": model.n_seen,
            "k": model.n_components,
            "explained_variance_ratio": model.explained_variance_ratio.tolist(),
            "weights_id": manifest["weights_id"],
            "backend": manifest["backend"],
            "created_at": manifest["created_at"],
            "manifest": manifest,
        }
        put_json(self.s3, self.bucket, base + "metadata.json", metadata)

    def _quarantine(self, message: ImageMessage, reason: Reason, detail: str) -> None:
        target = quarantine_key(reason, message.key, quarantine_prefix=self.settings.quarantine_prefix)
        try:
            self.s3.copy_object(
                Bucket=self.bucket,
                Key=target,
                CopySource={"Bucket": message.bucket, "Key": message.key, "VersionId": message.version_id},
            )
        except ClientError as err:
            if not is_missing(err) and err.response.get("Error", {}).get("Code") not in {
                "NoSuchVersion",
                "InvalidArgument",
            }:
                raise
        sidecar = {
            "reason": reason.value,
            "detail": detail,
            "original_key": message.key,
            "version_id": message.version_id,
            "etag": message.etag,
            "size": message.size,
            "sha256": message.sha256,
            "time": utc_now(),
            "stage": "featurize",
        }
        put_json(self.s3, self.bucket, sidecar_key(target), sidecar)

    def _quality(self, projected: pd.DataFrame) -> dict[str, Any]:
        if len(projected) < 4:
            return {"skipped": f"expected at least 4 featurized images, got {len(projected)}"}
        from pomona.ml.quality import quality_report  # scikit-learn: the driver's import alone

        x = np.stack(projected["projection"].to_numpy())
        return quality_report(x, list(projected["label"]), gain=self.settings.gain, loss=self.settings.loss)

    @functools.cached_property
    def _provenance(self) -> dict[str, str]:
        return file_provenance(weights_id=self._weights_id(), backend=self.options.backend)

    def _weights_id(self) -> str:
        from pomona.ml.featurizer import default_cache_dir, resolve_weights

        cache_dir = Path(self.options.cache_dir) if self.options.cache_dir else default_cache_dir()
        return resolve_weights(self.options.weights, cache_dir=cache_dir).weights_id


def prepare_model(options: JobOptions) -> str:
    """Resolve the weights and convert them for LiteRT once, on the driver, before executors need them."""
    from pomona.ml.featurizer import convert_to_tflite, default_cache_dir, resolve_weights

    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    ref = resolve_weights(options.weights, cache_dir=cache_dir)
    if options.backend == "litert":
        convert_to_tflite(ref, cache_dir=cache_dir)
    return ref.weights_id


def _feature_dim() -> int:
    from pomona.ml.featurizer import FEATURE_DIM

    return FEATURE_DIM


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Seconds spent in the block, recorded as `timings[name]`."""
    started = time.monotonic()
    yield
    timings[name] = time.monotonic() - started


def _fault(phase: str) -> None:
    """The fault-injection point: with POMONA_FAULT=<phase>, the process dies here as a killed pod would."""
    if os.environ.get(FAULT_ENV) == phase:
        log.error("Injected fault", extra={"phase": phase})
        os._exit(137)


# -- entry point -------------------------------------------------------------------------------------------------


def spark_session(master: str | None = None, app_name: str = "pomona-featurize") -> SparkSession:
    from pyspark.sql import SparkSession

    # Python workers run this interpreter (and so see this environment's packages) unless told otherwise.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if master and master.startswith("local"):
        os.environ.setdefault(
            "SPARK_LOCAL_IP", "127.0.0.1"
        )  # a laptop's hostname may not resolve to loopback
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    if master and (master == "local" or master.startswith("local[")):
        # One short-lived JVM is driver and executor: C2's compilations cost more CPU than they pay back in a run
        # (JVM CPU per 540-image run measured 5.3 s with tiered C2, 2.7 s with C1 alone), on cores the model needs.
        # Set in code, so it replaces a spark-defaults.conf value for local runs.
        builder = builder.config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1")
    return (
        builder.config("spark.python.worker.reuse", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "256")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )


def run_job(spark: SparkSession, settings: Settings, options: JobOptions) -> BatchResult:
    prepare_model(options)
    return Job(spark, settings, options).run()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pomona-featurize", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--max-images", type=int, default=None, help="cap on images per run (POMONA_MAX_IMAGES)"
    )
    parser.add_argument("--weights", default=None, help="imagenet | random | PATH | s3://… (POMONA_WEIGHTS)")
    parser.add_argument("--backend", choices=["litert", "tensorflow"], default=None, help="POMONA_BACKEND")
    parser.add_argument("--master", default=None, help="Spark master when not launched by spark-submit")
    parser.add_argument(
        "--visibility-timeout",
        type=int,
        default=None,
        help="seconds the received messages stay hidden if this run dies (default 300)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the SparkApplication (spark/main.py) and spark-submit. `pomona job run` calls the same
    `run_job` with a local session, and reports a concurrent run as one error line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    settings = Settings.from_env()
    options = options_from(
        settings,
        max_images=args.max_images,
        weights=args.weights,
        backend=args.backend,
        visibility_timeout_s=args.visibility_timeout,
    )
    spark = spark_session(args.master)
    try:
        result = run_job(spark, settings, options)
    except ConcurrentRunError as err:
        # Expected when runs overlap: nothing was committed, the other run carries on; no traceback needed.
        log.error("Run stopped: another run holds the lock or committed first", extra={"error": str(err)})
        return EXIT_CONCURRENT_RUN
    finally:
        spark.stop()
    log.info("Run finished", extra={"committed": result.manifest is not None, "skipped": result.skipped})
    return 0


def options_from(settings: Settings, **overrides: Any) -> JobOptions:
    values: dict[str, Any] = {
        "max_images": settings.max_images,
        "weights": settings.weights,
        "backend": settings.backend,
    }
    values |= {k: v for k, v in overrides.items() if v is not None}
    return JobOptions(cache_dir=os.environ.get("POMONA_CACHE_DIR"), **values)


__all__ = ["BatchResult", "Job", "JobOptions", "drain_queue", "main", "run_job", "split_duplicates"]
