"""The featurization job's committed outputs: every file, its type, and the one reader.

Under `Settings.output_prefix` (`layout`):
- `features/batch_id=<id>/part-N.parquet` and `projections/…` likewise: the batch's part files;
- `models/pca/v<N>-<batch id>/`: PCA version N (model.npz, state.npz, the classifier's files, quality.json, and
  `metadata.json`, a `VersionMetadata` naming its `Lineage`);
- `models/pca/LATEST`: the committed version and its batch (`Latest`), moved only if nobody moved it since;
- `batches/<id>/manifest.json`: a committed batch's manifest; the job's leases under `locks/`.
Readers trust only committed batches: those with a manifest, and only the part files their manifest lists.

`CommittedOutputs` reads them from the bucket (`S3Files`) or from a folder that mirrors it (`FolderFiles`, the
demo's `--out`): `pomona status`, `pomona export`, the demo's summary and its report all read through it.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pomona.core.contract import SIDECAR_SUFFIX
from pomona.core.outputs.files import Files, FolderFiles, S3Files
from pomona.core.outputs.latest import (
    NOTHING_COMMITTED,
    Latest,
    OutputsError,
    move_latest,
    read_latest,
    read_latest_for_update,
)
from pomona.core.outputs.layout import (
    CLASSIFIER_FILE,
    EVALUATION_FILE,
    HOLDOUT_FILE,
    METADATA_FILE,
    MODEL_FILE,
    PART_FOLDERS,
    STATE_FILE,
    TRAINING_FILE,
    features_key,
    lease_key,
    leases_prefix,
    lock_key,
    manifest_key,
    new_batch_id,
    pca_latest_key,
    pca_prefix,
    projections_key,
)
from pomona.core.outputs.metadata import Lineage, VersionMetadata, read_version_metadata
from pomona.core.resources import describe
from pomona.core.settings import Settings

if TYPE_CHECKING:
    import pyarrow as pa
    from mypy_boto3_s3 import S3Client

__all__ = [
    "CLASSIFIER_FILE",
    "EVALUATION_FILE",
    "HOLDOUT_FILE",
    "METADATA_FILE",
    "MODEL_FILE",
    "NOTHING_COMMITTED",
    "SIDECAR_SUFFIX",
    "STATE_FILE",
    "TRAINING_FILE",
    "CommittedOutputs",
    "Files",
    "FolderFiles",
    "Latest",
    "Lineage",
    "OutputsError",
    "S3Files",
    "VersionMetadata",
    "features_key",
    "lease_key",
    "leases_prefix",
    "lock_key",
    "manifest_key",
    "move_latest",
    "new_batch_id",
    "pca_latest_key",
    "pca_prefix",
    "projections_key",
    "read_latest",
    "read_latest_for_update",
    "read_version_metadata",
]


@dataclass(frozen=True)
class CommittedOutputs:
    """What the job committed under `prefix` in `files`, and the quarantine's sidecars under `quarantine_prefix`."""

    files: Files
    prefix: str = ""
    quarantine_prefix: str = describe().quarantine_prefix

    @classmethod
    def in_bucket(cls, s3: S3Client, settings: Settings) -> CommittedOutputs:
        """The deployment's outputs, read from its bucket."""
        return cls(S3Files(s3, settings.bucket), settings.output_prefix, settings.quarantine_prefix)

    def manifests(self) -> list[dict[str, Any]]:
        """Every committed batch's manifest, oldest first. Readers trust nothing else."""
        keys = [key for key in self.files.keys(f"{self.prefix}batches/") if key.endswith("/manifest.json")]
        manifests = [m for m in map(self._json, keys) if m is not None]
        return sorted(manifests, key=lambda m: str(m["batch_id"]))

    def latest(self) -> Latest:
        """The committed PCA version, as `models/pca/LATEST` names it."""
        return read_latest(self.files.read, self.prefix)

    def latest_version(self) -> int:
        """The committed PCA version: the one `models/pca/LATEST` points at; 0 before the first commit."""
        return self.latest().version

    def version_metadata(self, version: int) -> VersionMetadata | None:
        """The metadata of committed PCA version `version` (None when there is none)."""
        found = self._committed(version)
        return None if found is None else read_version_metadata(self.files.read, self.prefix, found)

    def version_file(self, version: int, name: str) -> bytes | None:
        """A file of committed PCA version `version` (`model.npz`, `quality.json`, `metadata.json`, …)."""
        found = self._committed(version)
        return None if found is None else self.files.read(found.folder(self.prefix) + name)

    def version_json(self, version: int, name: str) -> dict[str, Any] | None:
        body = self.version_file(version, name)
        return None if body is None else dict(json.loads(body))

    def _committed(self, version: int) -> Latest | None:
        """Committed `version` and its batch: LATEST names its own, a manifest any earlier one's."""
        latest = self.latest()
        if latest.version == version:
            return latest if version else None
        batch_ids = [m["batch_id"] for m in self.manifests() if m["pca_version"] == version]
        return Latest(version, batch_ids[-1]) if batch_ids and version > 0 else None

    def read_parts(
        self, kind: str, columns: Sequence[str], manifests: Sequence[dict[str, Any]] | None = None
    ) -> tuple[pa.Table | None, list[str]]:
        """`columns` of every `kind` ("features" or "projections") part file the committed manifests list,
        oldest first, as one table (None when there is none), and the listed keys that could not be found (or
        are not `kind` part files).

        pyarrow is imported here, for the tools that read part files; nothing else in core needs it."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables, missing = [], []
        for m in self.manifests() if manifests is None else manifests:
            for listed in m.get("files", {}).get(kind, []):
                key = self._part_key(listed, kind)
                body = None if key is None else self.files.read(key)
                if body is None:
                    missing.append(listed)
                else:
                    tables.append(pq.read_table(io.BytesIO(body), columns=list(columns)))
        return (pa.concat_tables(tables) if tables else None), missing

    def sidecar_keys(self) -> list[str]:
        return [key for key in self.files.keys(self.quarantine_prefix) if key.endswith(SIDECAR_SUFFIX)]

    def quarantine_counts(self) -> dict[str, int]:
        """Quarantined uploads by reason, from the sidecars' keys: `quarantine/<reason>/…/*.reason.json`."""
        return dict(Counter(self._reason_folder(key) for key in self.sidecar_keys()))

    def sidecars(self) -> list[dict[str, Any]]:
        """Every sidecar (`pomona.core.contract.QuarantineSidecar`), the Lambda's (`stage` "ingest") and the
        job's ("featurize")."""
        return [sidecar for sidecar in map(self._json, self.sidecar_keys()) if sidecar is not None]

    def _reason_folder(self, key: str) -> str:
        return key[len(self.quarantine_prefix) :].split("/", 1)[0]

    def _part_key(self, listed: str, kind: str) -> str | None:
        """A listed `kind` part file's key under this reader's prefix; None if it is not one."""
        _, found, rest = listed.partition(PART_FOLDERS[kind])
        return f"{self.prefix}{found}{rest}" if found else None

    def _json(self, key: str) -> dict[str, Any] | None:
        body = self.files.read(key)
        return None if body is None else dict(json.loads(body))
