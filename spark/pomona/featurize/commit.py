"""The commit protocol: how a batch's outputs become visible to readers all at once, or not at all.

  1. outputs: features and projections part files (the executors), failed images quarantined;
  2. the PCA version `models/pca/v<N>-<batch id>/` (model, seen hashes, quality, and metadata holding the
     manifest to be and the parent version), each file written only if absent: no other run writes there;
  3. `models/pca/LATEST` moved from (N-1, its batch) to (N, this batch) with a conditional write: of two runs
     that got this far, exactly one commits; the other stops, its version uncommitted;
  4. `batches/<id>/manifest.json`;
  5. the messages deleted (the driver, `pomona.featurize.queue`).
A crash before 3 leaves files no reader trusts; a later run's `recover` deletes them once their run's lease has
lapsed, and the messages come back. A crash between 3 and 4 is rolled forward by `recover`, which writes the
manifest from the version's metadata. A crash after 4 only redelivers messages, which dedupe finds committed. The
run lock (`pomona.featurize.lock`) keeps two runs from working at once; steps 2 and 3 hold even when it fails to.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from pomona.core.aws import (
    error_code,
    get_json,
    is_missing,
    is_precondition_failed,
    json_bytes,
    put_json,
)
from pomona.core.contract import ImageMessage, QuarantineSidecar, Reason, quarantine_key, sidecar_key
from pomona.core.outputs import leases_prefix, manifest_key, pca_latest_key, pca_prefix
from pomona.core.settings import Settings
from pomona.featurize.lock import ConcurrentRunError, lease_is_live
from pomona.ml.pca import PcaModel, PcaState, load_npz

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


class Latest(NamedTuple):
    """`models/pca/LATEST` as read: the committed version (0: none yet), its batch (None before LATEST named one),
    and the pointer's ETag for the conditional update."""

    version: int
    batch_id: str | None
    etag: str | None


class Committer:
    """The S3 side of the protocol for one deployment's outputs."""

    def __init__(self, s3: S3Client, settings: Settings) -> None:
        self.s3 = s3
        self.bucket = settings.bucket
        self.prefix = settings.output_prefix
        self.quarantine_prefix = settings.quarantine_prefix

    # -- reading the committed state

    def read_latest(self) -> Latest:
        """The committed PCA version (0 when there is none yet), its batch, and the pointer's ETag for a conditional
        update."""
        found = get_json(self.s3, self.bucket, pca_latest_key(self.prefix))
        if found is None:  # version 0 is also what recovery writes when it fences before the first commit
            return Latest(0, None, None)
        document, etag = found
        return Latest(int(document["version"]), document.get("batch_id"), etag)

    def load_version(self, latest: Latest) -> tuple[PcaState | None, set[str]]:
        """The merge state and the hashes of every image committed up to `latest`."""
        if latest.version == 0:
            return None, set()
        base = pca_prefix(self.prefix, latest.version, latest.batch_id)
        _, state = load_npz(self.s3.get_object(Bucket=self.bucket, Key=base + "model.npz")["Body"].read())
        seen_table = pq.read_table(
            io.BytesIO(self.s3.get_object(Bucket=self.bucket, Key=base + "seen.parquet")["Body"].read())
        )
        return state, set(seen_table.column("sha256").to_pylist())

    def batch_keys(self, folder: str, batch_id: str) -> list[str]:
        """The part files of `batch_id` under `folder` ("features" or "projections")."""
        return self._keys(f"{self.prefix}{folder}/batch_id={batch_id}/")

    # -- recovery

    def recover(self) -> dict[str, Any] | None:
        """Finish the commits a crash interrupted after LATEST moved (LATEST's, and its parent's, on which a second
        run past the lock may have built before the first wrote its manifest), then delete what uncommitted runs
        left; the committed version's metadata (None before the first commit)."""
        latest = self.read_latest()
        metadata = self._version_metadata(latest.version, latest.batch_id) if latest.version else None
        parent = (metadata or {}).get("parent") or {}
        parent_metadata = (
            self._version_metadata(parent["version"], parent["batch_id"]) if parent.get("batch_id") else None
        )
        for committed in (metadata, parent_metadata):
            if committed and not self._manifest_exists(committed["batch_id"]):
                log.warning(
                    "Rolling forward a batch committed to LATEST without a manifest",
                    extra={"batch_id": committed["batch_id"]},
                )
                put_json(
                    self.s3,
                    self.bucket,
                    manifest_key(self.prefix, committed["batch_id"]),
                    committed["manifest"],
                )
        self._delete_orphans(latest)
        return metadata

    def _delete_orphans(self, latest: Latest) -> None:
        """Delete the files of batches without a manifest whose run's lease has lapsed, and lapsed leases.

        A live run (one whose lock was taken over while it stalled, say) keeps its files: its lease outlives the
        lock. Before anything uncommitted is deleted, LATEST is rewritten (conditionally, same content): a run that
        read it before, however long it stalled, can then no longer commit the files deleted here."""
        by_batch: dict[str, list[str]] = {}
        for folder in ("features/", "projections/"):
            for batch_prefix in self._folders(f"{self.prefix}{folder}"):
                batch_id = batch_prefix.rstrip("/").rsplit("batch_id=", 1)[-1]
                by_batch.setdefault(batch_id, []).extend(self._keys(batch_prefix))
        for version_prefix in self._folders(f"{self.prefix}models/pca/"):
            name = version_prefix.rstrip("/").rsplit("/", 1)[-1]
            number, _, batch_id = name.removeprefix("v").partition("-")
            if batch_id:
                by_batch.setdefault(batch_id, []).extend(self._keys(version_prefix))
            elif name.startswith("v") and number.isdigit() and int(number) > latest.version:
                by_batch.setdefault(name, []).extend(self._keys(version_prefix))  # before batch-named folders
        leases = {
            k.rsplit("/", 1)[-1].removesuffix(".json"): k for k in self._keys(leases_prefix(self.prefix))
        }
        uncommitted: list[str] = []
        lapsed: list[str] = []
        for batch_id in by_batch.keys() | leases.keys():
            committed = self._manifest_exists(batch_id)
            if batch_id in leases and lease_is_live(self.s3, self.bucket, leases[batch_id]):
                continue
            if batch_id in leases:
                lapsed.append(leases[batch_id])
            if not committed:
                uncommitted += by_batch.get(batch_id, [])
        if uncommitted and not self._fence(latest):
            return
        doomed = uncommitted + lapsed
        for start in range(0, len(doomed), 1000):
            chunk = doomed[start : start + 1000]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk]})
        if uncommitted:
            log.warning("Deleted files of uncommitted runs", extra={"files": len(uncommitted)})

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

    def quarantine(self, message: ImageMessage, reason: Reason, detail: str, *, copy: bool = True) -> None:
        """Step 1, for an image the executors could not featurize: a copy of its version (unless `copy` is False:
        a message that names what it should not is never read from) and a sidecar."""
        target = quarantine_key(reason, message.key, quarantine_prefix=self.quarantine_prefix)
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
        model_npz: bytes,
        seen: set[str],
        manifest: dict[str, Any],
        quality: dict[str, Any],
    ) -> None:
        """Step 2: version `latest.version + 1`, in this batch's own folder, each file only if absent."""
        version = latest.version + 1
        base = pca_prefix(self.prefix, version, batch_id)
        seen_file = io.BytesIO()
        pq.write_table(pa.table({"sha256": sorted(seen)}), seen_file, compression="zstd")
        metadata = {
            "version": version,
            "batch_id": batch_id,
            "parent": {"version": latest.version, "batch_id": latest.batch_id},
            "n_seen": model.n_seen,
            "k": model.n_components,
            "explained_variance_ratio": model.explained_variance_ratio.tolist(),
            "weights_id": manifest["weights_id"],
            "backend": manifest["backend"],
            "created_at": manifest["created_at"],
            "manifest": manifest,
        }
        for name, body in [
            ("model.npz", model_npz),
            ("seen.parquet", seen_file.getvalue()),
            ("quality.json", json_bytes(quality)),
            ("metadata.json", json_bytes(metadata)),
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

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Step 4."""
        key = manifest_key(self.prefix, manifest["batch_id"])
        try:
            put_json(self.s3, self.bucket, key, manifest, if_none_match=True)
        except ClientError as err:
            # The key is this batch's alone: a manifest there is this one, written by our own first attempt
            # (its response lost, botocore retried it) or rolled forward from the version's metadata.
            if not is_precondition_failed(err):
                raise

    # -- helpers

    def _committed(self, *, version: int, batch_id: str) -> bool:
        """Whether (version, batch_id) is LATEST or one of its ancestors: read from LATEST back through each
        version's parent, files no other run can have written under those batch ids."""
        current = self.read_latest()
        at: tuple[int, str | None] = (current.version, current.batch_id)
        while at[0] >= version and at[1] is not None:
            if at == (version, batch_id):
                return True
            parent = (self._version_metadata(*at) or {}).get("parent") or {}
            at = (int(parent.get("version", 0)), parent.get("batch_id"))
        return False

    def _version_metadata(self, version: int, batch_id: str | None) -> dict[str, Any] | None:
        found = get_json(self.s3, self.bucket, pca_prefix(self.prefix, version, batch_id) + "metadata.json")
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

    def _folders(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        )
        return [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]

    def _keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]
