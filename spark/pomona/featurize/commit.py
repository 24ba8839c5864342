"""The commit protocol: how a batch's outputs become visible to readers all at once, or not at all.

  0. the run's lease `locks/runs/<batch id>.json`, before any output: the mark recovery finds its files by;
  1. outputs: features and projections part files (the executors), failed images quarantined;
  2. the PCA version `models/pca/v<N>-<batch id>/` (model, merge state, classifier, its evaluation, and metadata
     holding the manifest to be and the parent version), each file written only if absent: no other run writes
     there;
  3. `models/pca/LATEST` moved from (N-1, its batch) to (N, this batch) with a conditional write: of two runs
     that got this far, exactly one commits; the other stops, its version uncommitted;
  4. the batch's images recorded in the dedupe index (`pomona.featurize.index`);
  5. `batches/<id>/manifest.json`;
  6. the messages deleted (the driver, `pomona.featurize.queue`), the lease deleted, and the merge states of
     versions beyond `keep_full_versions` deleted (retention).
A crash before 3 leaves files no reader trusts; a later run's `recover` deletes them once their run's lease has
lapsed (at once if the run ended), and the messages come back. A crash between 3 and 5 is rolled forward by
`recover`, which records the batch's images from its projections and writes the manifest from the version's
metadata. A crash after 5 only redelivers messages, which the index finds committed. The run lock
(`pomona.featurize.lock`) keeps two runs from working at once; steps 2 and 3 hold even when it fails to.
Recovery reads only LATEST, its parent, and the leases: its cost follows what can be uncommitted, not history.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from pomona.core.aws import (
    error_code,
    get_json,
    is_missing,
    is_precondition_failed,
    json_bytes,
    put_json,
    read_bytes,
)
from pomona.core.contract import ImageMessage, QuarantineSidecar, Reason, quarantine_key, sidecar_key
from pomona.core.outputs import (
    EVALUATION_FILE,
    HOLDOUT_FILE,
    METADATA_FILE,
    TRAINING_FILE,
    leases_prefix,
    manifest_key,
    pca_latest_key,
    pca_prefix,
)
from pomona.core.settings import Settings
from pomona.featurize.index import SeenIndex
from pomona.featurize.lock import ConcurrentRunError, read_lease
from pomona.ml.classifier import LabelStats, load_label_stats
from pomona.ml.holdout import Reservoir, load_reservoir
from pomona.ml.pca import PcaModel, PcaState, load_state, model_to_npz, state_to_npz

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


# What a version past retention's window loses: what only the next refit needs.
RETIRED_FILES = ("state.npz", TRAINING_FILE, HOLDOUT_FILE, "seen.parquet")


class Latest(NamedTuple):
    """`models/pca/LATEST` as read: the committed version (0: none yet), its batch (None before LATEST named one),
    and the pointer's ETag for the conditional update."""

    version: int
    batch_id: str | None
    etag: str | None


class Committer:
    """The S3 side of the protocol for one deployment's outputs."""

    def __init__(self, s3: S3Client, settings: Settings, index: SeenIndex) -> None:
        self.s3 = s3
        self.index = index
        self.bucket = settings.bucket
        self.prefix = settings.output_prefix
        self.quarantine_prefix = settings.quarantine_prefix
        self.keep_full_versions = settings.keep_full_versions

    # -- reading the committed state

    def read_latest(self) -> Latest:
        """The committed PCA version (0 when there is none yet), its batch, and the pointer's ETag for a conditional
        update."""
        found = get_json(self.s3, self.bucket, pca_latest_key(self.prefix))
        if found is None:  # version 0 is also what recovery writes when it fences before the first commit
            return Latest(0, None, None)
        document, etag = found
        return Latest(int(document["version"]), document.get("batch_id"), etag)

    def load_state(self, latest: Latest) -> PcaState | None:
        """The merge state of the committed version (None before the first commit): `state.npz`, or `model.npz`
        for a version written before the state had a file of its own."""
        if latest.version == 0:
            return None
        base = pca_prefix(self.prefix, latest.version, latest.batch_id)
        found = self._read(base + "state.npz") or self._read(base + "model.npz")
        if found is None:
            raise FileNotFoundError(f"expected the merge state of committed PCA v{latest.version} at {base}")
        return load_state(found)

    def load_classifier_state(self, latest: Latest) -> tuple[LabelStats | None, Reservoir | None]:
        """The classifier's training statistics and holdout reservoir of the committed version (None for either
        before the first commit, or for a version written before the classifier)."""
        if latest.version == 0:
            return None, None
        base = pca_prefix(self.prefix, latest.version, latest.batch_id)
        training, holdout = self._read(base + TRAINING_FILE), self._read(base + HOLDOUT_FILE)
        return (
            None if training is None else load_label_stats(training),
            None if holdout is None else load_reservoir(holdout),
        )

    def batch_keys(self, folder: str, batch_id: str) -> list[str]:
        """The part files of `batch_id` under `folder` ("features" or "projections")."""
        return self._keys(f"{self.prefix}{folder}/batch_id={batch_id}/")

    # -- recovery

    def recover(self) -> tuple[Latest, dict[str, Any] | None]:
        """Finish the commits a crash interrupted after LATEST moved, then delete what ended runs left
        uncommitted; LATEST as found and the committed version's metadata (None before the first commit)."""
        latest = self.read_latest()
        metadata = self.roll_forward(latest)
        self._delete_orphans(latest)
        return latest, metadata

    def roll_forward(self, latest: Latest) -> dict[str, Any] | None:
        """Steps 4 and 5 for LATEST's batch and its parent's (on which a second run past the lock may have built
        before the first finished), where they did not happen; LATEST's version metadata."""
        metadata = self._version_metadata(latest.version, latest.batch_id) if latest.version else None
        if metadata is None:
            return None
        self._index_legacy_history(metadata)
        parent = metadata.get("parent") or {}
        parent_metadata = (
            self._version_metadata(parent["version"], parent["batch_id"]) if parent.get("batch_id") else None
        )
        for committed in (parent_metadata, metadata):
            if committed and not self._manifest_exists(committed["batch_id"]):
                log.warning(
                    "Rolling forward a batch committed to LATEST without a manifest",
                    extra={"batch_id": committed["batch_id"]},
                )
                manifest = committed["manifest"]
                self.record(manifest["batch_id"], self._projected(manifest))
                self.write_manifest(manifest)
        return metadata

    def _index_legacy_history(self, metadata: dict[str, Any]) -> None:
        """Once, for a deployment whose LATEST was written before the dedupe index: record every image of its
        `seen.parquet` (the hashes of all committed images) in the index. Versions written since say so."""
        if metadata.get("dedupe") == "index":
            return
        # Recorded last, so an interrupted backfill is done again; until a batch commits, later runs find it.
        done = f"backfilled:v{metadata['version']}-{metadata['batch_id']}"
        if self.index.committed([done]):
            return
        base = pca_prefix(self.prefix, metadata["version"], metadata["batch_id"])
        found = self._read(base + "seen.parquet")
        if found is not None:
            shas = pq.read_table(io.BytesIO(found)).column("sha256").to_pylist()
            log.warning("Recording the history before the dedupe index in it", extra={"images": len(shas)})
            self.index.record(shas, batch_id=metadata["batch_id"])
        self.index.record([done], batch_id=metadata["batch_id"])

    def _projected(self, manifest: dict[str, Any]) -> list[str]:
        """The sha256 of every image a committed batch's projections hold."""
        shas: list[str] = []
        for key in manifest["files"]["projections"]:
            body = self._read(key)
            if body is None:
                raise FileNotFoundError(f"expected projections part file {key} of a committed batch")
            shas += pq.read_table(io.BytesIO(body), columns=["sha256"]).column("sha256").to_pylist()
        return shas

    def _delete_orphans(self, latest: Latest) -> None:
        """Delete the files of each run whose lease has lapsed or ended without a manifest, and those leases.

        Every run writes its lease before any file, and the lease stays until its batch is committed or its files
        are deleted: the leases name everything that can be uncommitted. A live run (one whose lock was taken over
        while it stalled, say) keeps its files: its lease outlives the lock. Before anything is deleted, LATEST
        is rewritten (conditionally, same content): a run that read it before, however long it stalled, can then
        no longer commit the files deleted here."""
        uncommitted: list[str] = []
        lapsed: list[str] = []
        for key in self._keys(leases_prefix(self.prefix)):
            lease = read_lease(self.s3, self.bucket, key)
            if lease is None or lease.is_live():
                continue
            batch_id = key.rsplit("/", 1)[-1].removesuffix(".json")
            lapsed.append(key)
            if not self._manifest_exists(batch_id):
                uncommitted += self._batch_files(batch_id, lease.pca_version)
        if uncommitted and not self._fence(latest):
            return
        self._delete(uncommitted)
        self._delete(lapsed)  # last: a lease goes only once its files have
        if uncommitted:
            log.warning("Deleted files of uncommitted runs", extra={"files": len(uncommitted)})

    def _batch_files(self, batch_id: str, pca_version: int | None) -> list[str]:
        """The files an uncommitted run of `batch_id` may have written."""
        keys = self.batch_keys("features", batch_id) + self.batch_keys("projections", batch_id)
        if pca_version is not None:
            keys += self._keys(pca_prefix(self.prefix, pca_version, batch_id))
        return keys

    def _fence(self, latest: Latest) -> bool:
        """Rewrite LATEST as read (a version 0 when there is none yet), so that no run that read it before can
        move it; False when another run moved it meanwhile (its files are then left for a later recovery)."""
        document = (
            {"version": latest.version, "batch_id": latest.batch_id} if latest.version else {"version": 0}
        )
        try:
            put_json(
                self.s3,
                self.bucket,
                pca_latest_key(self.prefix),
                document,
                if_none_match=latest.etag is None,
                if_match=latest.etag,
            )
        except ClientError as err:
            if not is_precondition_failed(err):
                raise
            log.warning("LATEST moved during recovery; leaving uncommitted files for a later run")
            return False
        return True

    # -- the steps

    def quarantine(
        self,
        message: ImageMessage,
        reason: Reason,
        detail: str,
        *,
        copy: bool = True,
        error_type: str | None = None,
    ) -> None:
        """Step 1, for an image the executors could not featurize: a copy of its version (unless `copy` is False:
        a message that names what it should not is never read from) and a sidecar, both under the key of that
        version; `error_type` is the exception's type name when a decoder raised."""
        target = quarantine_key(
            reason, message.key, version_id=message.version_id, quarantine_prefix=self.quarantine_prefix
        )
        try:
            if copy:
                self.s3.copy_object(
                    Bucket=self.bucket,
                    Key=target,
                    CopySource={
                        "Bucket": message.bucket,
                        "Key": message.key,
                        "VersionId": message.version_id,
                    },
                )
        except ClientError as err:
            if not is_missing(err) and error_code(err) not in {"NoSuchVersion", "InvalidArgument"}:
                raise
        sidecar = QuarantineSidecar(
            reason=reason,
            detail=detail,
            original_key=message.key,
            version_id=message.version_id,
            etag=message.etag,
            size=message.size,
            sha256=message.sha256,
            stage="featurize",
            error_type=error_type,
        )
        self.s3.put_object(
            Bucket=self.bucket,
            Key=sidecar_key(target),
            Body=sidecar.to_json(),
            ContentType="application/json",
        )

    def write_version(
        self,
        latest: Latest,
        batch_id: str,
        model: PcaModel,
        state: PcaState,
        manifest: dict[str, Any],
        quality: dict[str, Any],
        classifier_files: Mapping[str, bytes] | None = None,
    ) -> None:
        """Step 2: version `latest.version + 1`, in this batch's own folder, each file only if absent: `quality`
        (the classifier's evaluation) as `EVALUATION_FILE`, and the classifier's files (`CLASSIFIER_FILE`,
        `TRAINING_FILE`, `HOLDOUT_FILE`), so that one LATEST move commits model and classifier together."""
        version = latest.version + 1
        base = pca_prefix(self.prefix, version, batch_id)
        metadata = {
            "version": version,
            "batch_id": batch_id,
            "parent": {"version": latest.version, "batch_id": latest.batch_id},
            "n_seen": model.n_seen,
            "k": model.n_components,
            "explained_variance_ratio": model.explained_variance_ratio.tolist(),
            "weights_id": manifest["weights_id"],
            # The POMONA_WEIGHTS spec the run used, for serving to load the same weights (bench histories have none).
            "weights": manifest.get("weights"),
            "backend": manifest["backend"],
            # The arithmetic of the features (POMONA_PRECISION); a version without it is f32.
            "precision": manifest.get("precision", "f32"),
            "created_at": manifest["created_at"],
            "dedupe": "index",  # its images are in the dedupe index, not in a seen list
            "manifest": manifest,
        }
        for name, body in [
            ("model.npz", model_to_npz(model)),
            ("state.npz", state_to_npz(state)),
            (EVALUATION_FILE, json_bytes(quality)),
            *(classifier_files or {}).items(),
            (METADATA_FILE, json_bytes(metadata)),  # last: its presence says the folder is whole
        ]:
            self._put_once(base + name, body)

    def advance_latest(self, latest: Latest, *, batch_id: str) -> None:
        """Step 3: point LATEST at (`latest.version + 1`, `batch_id`), only if nobody moved it since we read it."""
        version = latest.version + 1
        try:
            put_json(
                self.s3,
                self.bucket,
                pca_latest_key(self.prefix),
                {"version": version, "batch_id": batch_id},
                if_none_match=latest.etag is None,
                if_match=latest.etag,
            )
        except ClientError as err:
            if is_precondition_failed(err):
                if self._committed(version=version, batch_id=batch_id):
                    return  # our first attempt landed, its response was lost, and botocore's retry met it
                raise ConcurrentRunError(
                    f"expected models/pca/LATEST to be unchanged since this run read it, found it moved "
                    f"(another run committed first); version {version} of batch {batch_id} is left uncommitted"
                ) from err
            raise

    def record(self, batch_id: str, shas: Iterable[str]) -> None:
        """Step 4: the batch's images, committed now, in the dedupe index."""
        self.index.record(shas, batch_id=batch_id)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Step 5."""
        key = manifest_key(self.prefix, manifest["batch_id"])
        try:
            put_json(self.s3, self.bucket, key, manifest, if_none_match=True)
        except ClientError as err:
            # The key is this batch's alone: a manifest there is this one, written by our own first attempt
            # (its response lost, botocore retried it) or rolled forward from the version's metadata.
            if not is_precondition_failed(err):
                raise

    def retire(self, version: int, batch_id: str) -> None:
        """Retention: delete the merge state (and any pre-index seen list) of each version older than the
        `keep_full_versions` up to `version`. The walk goes back through each version's parent and stops at one
        already retired, so a sweep a crash missed is done by the next; model.npz, metadata, quality.json and the
        classifier stay: a reader of a version's projections needs its components and mean."""
        at: tuple[int, str | None] = (version, batch_id)
        for _ in range(self.keep_full_versions):
            at = self._parent(*at)
        while at[0] > 0 and at[1] is not None:  # a v<N>/ folder from before batch ids is left as it is
            doomed = [
                k
                for k in self._keys(pca_prefix(self.prefix, *at))
                if k.endswith(tuple(f"/{name}" for name in RETIRED_FILES))
            ]
            if not doomed:
                return
            self._delete(doomed)
            at = self._parent(*at)

    def _parent(self, version: int, batch_id: str | None) -> tuple[int, str | None]:
        if version <= 0 or batch_id is None:
            return 0, None
        parent = (self._version_metadata(version, batch_id) or {}).get("parent") or {}
        return int(parent.get("version", 0)), parent.get("batch_id")

    # -- helpers

    def _committed(self, *, version: int, batch_id: str) -> bool:
        """Whether (version, batch_id) is LATEST or one of its ancestors: read from LATEST back through each
        version's parent, files no other run can have written under those batch ids."""
        current = self.read_latest()
        at: tuple[int, str | None] = (current.version, current.batch_id)
        while at[0] >= version and at[1] is not None:
            if at == (version, batch_id):
                return True
            at = self._parent(*at)
        return False

    def _version_metadata(self, version: int, batch_id: str | None) -> dict[str, Any] | None:
        found = get_json(self.s3, self.bucket, pca_prefix(self.prefix, version, batch_id) + METADATA_FILE)
        return None if found is None else found[0]

    def _put_once(self, key: str, body: bytes) -> None:
        """Write `key` only if absent. The key is this batch's alone: one already there is our own first attempt,
        its response lost and botocore's retry refused."""
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as err:
            if not is_precondition_failed(err):
                raise

    def _manifest_exists(self, batch_id: str) -> bool:
        return get_json(self.s3, self.bucket, manifest_key(self.prefix, batch_id)) is not None

    def _read(self, key: str) -> bytes | None:
        return read_bytes(self.s3, self.bucket, key)

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk]})

    def _keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]
