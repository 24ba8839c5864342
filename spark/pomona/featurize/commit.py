"""The commit protocol: how a batch's outputs become visible to readers all at once, or not at all.

  1. outputs: features and projections part files (the executors), failed images quarantined;
  2. the PCA version `models/pca/v<N>/` (model, metadata holding the manifest to be, seen hashes, quality);
  3. `models/pca/LATEST` moved from N-1 to N with a conditional write (a concurrent run fails here, cleanly);
  4. `batches/<id>/manifest.json`;
  5. the messages deleted (the driver, `pomona.featurize.queue`).
A crash before 3 leaves files no reader trusts; the next run's `recover` deletes them and the messages come back.
A crash between 3 and 4 is rolled forward by `recover`, which writes the manifest from the version's metadata.
A crash after 4 only redelivers messages, which dedupe finds committed. The run lock (`pomona.featurize.lock`)
keeps two runs from working at once.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from pomona.core.aws import error_code, get_json, is_missing, is_precondition_failed, put_json
from pomona.core.contract import ImageMessage, QuarantineSidecar, Reason, quarantine_key, sidecar_key
from pomona.core.outputs import manifest_key, pca_latest_key, pca_prefix
from pomona.core.settings import Settings
from pomona.featurize.lock import ConcurrentRunError
from pomona.featurize.tasks import put_parquet
from pomona.ml.pca import PcaModel, PcaState, load_npz

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


class Committer:
    """The S3 side of the protocol for one deployment's outputs."""

    def __init__(self, s3: S3Client, settings: Settings) -> None:
        self.s3 = s3
        self.bucket = settings.bucket
        self.prefix = settings.output_prefix
        self.quarantine_prefix = settings.quarantine_prefix

    # -- reading the committed state

    def read_latest(self) -> tuple[int, str | None]:
        """The committed PCA version (0 when there is none yet) and the pointer's ETag for a conditional update."""
        found = get_json(self.s3, self.bucket, pca_latest_key(self.prefix))
        if found is None:
            return 0, None
        document, etag = found
        return int(document["version"]), etag

    def load_version(self, version: int) -> tuple[PcaState | None, set[str]]:
        """The merge state and the hashes of every image committed up to `version`."""
        if version == 0:
            return None, set()
        base = pca_prefix(self.prefix, version)
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
        """Finish a commit a crash interrupted after LATEST moved, and delete what uncommitted runs left; the
        committed version's metadata (None before the first commit)."""
        version, _ = self.read_latest()
        metadata = self._version_metadata(version) if version else None
        if metadata and not self._manifest_exists(metadata["batch_id"]):
            log.warning(
                "Rolling forward a batch committed to LATEST without a manifest",
                extra={"batch_id": metadata["batch_id"]},
            )
            put_json(
                self.s3, self.bucket, manifest_key(self.prefix, metadata["batch_id"]), metadata["manifest"]
            )
        self._delete_orphans(latest=version)
        return metadata

    def _delete_orphans(self, *, latest: int) -> None:
        orphans: list[str] = []
        for folder in ("features/", "projections/"):
            for batch_prefix in self._folders(f"{self.prefix}{folder}"):
                batch_id = batch_prefix.rstrip("/").rsplit("batch_id=", 1)[-1]
                if not self._manifest_exists(batch_id):
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

    # -- the steps

    def quarantine(self, message: ImageMessage, reason: Reason, detail: str) -> None:
        """Step 1, for an image the executors could not featurize: a copy of its version and a sidecar."""
        target = quarantine_key(reason, message.key, quarantine_prefix=self.quarantine_prefix)
        try:
            self.s3.copy_object(
                Bucket=self.bucket,
                Key=target,
                CopySource={"Bucket": message.bucket, "Key": message.key, "VersionId": message.version_id},
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
        version: int,
        model: PcaModel,
        model_npz: bytes,
        seen: set[str],
        manifest: dict[str, Any],
        quality: dict[str, Any],
    ) -> None:
        """Step 2."""
        base = pca_prefix(self.prefix, version)
        self.s3.put_object(Bucket=self.bucket, Key=base + "model.npz", Body=model_npz)
        put_parquet(self.s3, self.bucket, base + "seen.parquet", pa.table({"sha256": sorted(seen)}))
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

    def advance_latest(self, *, version: int, etag: str | None, batch_id: str) -> None:
        """Step 3: point LATEST at `version`, only if nobody moved it since we read `etag`.

        `batch_id` names the batch whose metadata `version` holds: it tells our own write from another run's.
        """
        try:
            put_json(
                self.s3,
                self.bucket,
                pca_latest_key(self.prefix),
                {"version": version},
                if_none_match=etag is None,
                if_match=etag,
            )
        except ClientError as err:
            if is_precondition_failed(err):
                if self._committed(version=version, batch_id=batch_id):
                    return  # our first attempt landed, its response was lost, and botocore's retry met it
                raise ConcurrentRunError(
                    f"expected models/pca/LATEST to be unchanged since this run read it, found it moved "
                    f"(another run committed first); version {version} is left uncommitted"
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
        metadata = self._version_metadata(version)
        return self.read_latest()[0] == version and (metadata or {}).get("batch_id") == batch_id

    def _version_metadata(self, version: int) -> dict[str, Any] | None:
        found = get_json(self.s3, self.bucket, pca_prefix(self.prefix, version) + "metadata.json")
        return None if found is None else found[0]

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
