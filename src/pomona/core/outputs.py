"""The featurization job's outputs in S3: their layout, and the one reader of what was committed.

Layout, under `Settings.output_prefix`: `features/batch_id=<id>/part-N.parquet`, `projections/…` likewise,
`models/pca/v<N>-<batch id>/` (model.npz, metadata.json, quality.json, …), `models/pca/LATEST` (the committed
version and its batch), `batches/<id>/manifest.json`, and the job's leases under `locks/`.
Readers trust only committed batches: those with a manifest, and only the part files their manifest lists.

`CommittedOutputs` reads them from the bucket (`S3Files`) or from a folder that mirrors it (`FolderFiles`, the
demo's `--out`): `pomona status`, `pomona export`, the demo's summary and its report all read through it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pomona.core.aws import read_bytes
from pomona.core.settings import Settings

if TYPE_CHECKING:
    import pyarrow as pa
    from mypy_boto3_s3 import S3Client

SIDECAR_SUFFIX = ".reason.json"
# A version's classifier (what answers users), the statistics it was trained from and its holdout sample (what
# the next refit starts from), its evaluation on that holdout (or why it has none), and its metadata (lineage).
CLASSIFIER_FILE, TRAINING_FILE, HOLDOUT_FILE, EVALUATION_FILE, METADATA_FILE = (
    "classifier.npz",
    "training.npz",
    "holdout.npz",
    "quality.json",
    "metadata.json",
)
# A part file's key from its kind folder on: the same whatever output prefix the writer had.
_PART_FOLDERS = {"features": "features/batch_id=", "projections": "projections/batch_id="}


# -- the layout --------------------------------------------------------------------------------------------------


def new_batch_id(now: datetime | None = None, *, entropy: bytes | None = None) -> str:
    """Sortable and unique: `20261125T054000Z-1a2b3c4d`."""
    now = now or datetime.now(UTC)
    suffix = hashlib.sha256(entropy if entropy is not None else now.isoformat().encode()).hexdigest()[:8]
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{suffix}"


def features_key(prefix: str, batch_id: str, part: int) -> str:
    return f"{prefix}features/batch_id={batch_id}/part-{part:05d}.parquet"


def projections_key(prefix: str, batch_id: str, part: int) -> str:
    return f"{prefix}projections/batch_id={batch_id}/part-{part:05d}.parquet"


def manifest_key(prefix: str, batch_id: str) -> str:
    return f"{prefix}batches/{batch_id}/manifest.json"


def pca_prefix(prefix: str, version: int, batch_id: str | None) -> str:
    """PCA version `version` as batch `batch_id` wrote it: a folder no other run can write to, so a run that lost
    the race for LATEST never overwrites the committed version (`v<N>/` alone before batch ids named it)."""
    return (
        f"{prefix}models/pca/v{version}/"
        if batch_id is None
        else f"{prefix}models/pca/v{version}-{batch_id}/"
    )


def pca_latest_key(prefix: str) -> str:
    return f"{prefix}models/pca/LATEST"


def lock_key(prefix: str) -> str:
    """The run lock: one featurization run at a time per output prefix."""
    return f"{prefix}locks/featurize.json"


def leases_prefix(prefix: str) -> str:
    """Each run's own lease on its batch's files, which recovery leaves alone while it is live."""
    return f"{prefix}locks/runs/"


def lease_key(prefix: str, batch_id: str) -> str:
    return f"{leases_prefix(prefix)}{batch_id}.json"


# -- where outputs are read from ---------------------------------------------------------------------------------


class Files(Protocol):
    """Objects by key: the bucket itself, or a folder that mirrors it."""

    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted."""

    @property
    def location(self) -> str:
        """Where the keys are, for messages: `s3://bucket/` or a folder."""


@dataclass(frozen=True)
class S3Files:
    s3: S3Client
    bucket: str

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/"

    def read(self, key: str) -> bytes | None:
        return read_bytes(self.s3, self.bucket, key)

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@dataclass(frozen=True)
class FolderFiles:
    """A folder laid out as the bucket: key `a/b.json` is the file `root/a/b.json`."""

    root: Path

    @property
    def location(self) -> str:
        return f"{self.root}/"

    def read(self, key: str) -> bytes | None:
        path = (self.root / key).resolve()
        # Keys come from manifests, which are data: never read outside the folder.
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            return None
        return path.read_bytes()

    def keys(self, prefix: str) -> list[str]:
        folder, _, _ = prefix.rpartition("/")
        base = self.root / folder
        if not base.is_dir():
            return []
        found = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(key for key in found if key.startswith(prefix))


# -- the reader --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommittedOutputs:
    """What the job committed under `prefix` in `files`, and the quarantine's sidecars under `quarantine_prefix`."""

    files: Files
    prefix: str = ""
    quarantine_prefix: str = "quarantine/"

    @classmethod
    def in_bucket(cls, s3: S3Client, settings: Settings) -> CommittedOutputs:
        """The deployment's outputs, read from its bucket."""
        return cls(S3Files(s3, settings.bucket), settings.output_prefix, settings.quarantine_prefix)

    def manifests(self) -> list[dict[str, Any]]:
        """Every committed batch's manifest, oldest first. Readers trust nothing else."""
        keys = [key for key in self.files.keys(f"{self.prefix}batches/") if key.endswith("/manifest.json")]
        manifests = [m for m in map(self._json, keys) if m is not None]
        return sorted(manifests, key=lambda m: str(m["batch_id"]))

    def latest_version(self) -> int:
        """The committed PCA version: the one `models/pca/LATEST` points at; 0 before the first commit."""
        latest = self._json(pca_latest_key(self.prefix))
        return int(latest["version"]) if latest else 0

    def version_file(self, version: int, name: str) -> bytes | None:
        """A file of committed PCA version `version` (`model.npz`, `quality.json`, `metadata.json`, …)."""
        return self.files.read(self._version_prefix(version) + name)

    def version_json(self, version: int, name: str) -> dict[str, Any] | None:
        return self._json(self._version_prefix(version) + name)

    def _version_prefix(self, version: int) -> str:
        """The folder of the committed `version`: LATEST names its batch, a manifest any earlier one's."""
        latest = self._json(pca_latest_key(self.prefix)) or {}
        if latest.get("version") == version:
            return pca_prefix(self.prefix, version, latest.get("batch_id"))
        batch_ids = [m["batch_id"] for m in self.manifests() if m["pca_version"] == version]
        return pca_prefix(self.prefix, version, batch_ids[-1] if batch_ids else None)

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
        """Every sidecar, the Lambda's (`stage` "ingest") and the job's ("featurize"); a sidecar without a
        reason or stage (written before they were recorded) gets its folder's reason and "ingest"."""
        found = []
        for key in self.sidecar_keys():
            sidecar = self._json(key) or {}
            found.append(
                sidecar
                | {"reason": sidecar.get("reason") or self._reason_folder(key)}
                | {"stage": sidecar.get("stage", "ingest")}
            )
        return found

    def _reason_folder(self, key: str) -> str:
        return key[len(self.quarantine_prefix) :].split("/", 1)[0]

    def _part_key(self, listed: str, kind: str) -> str | None:
        """A listed `kind` part file's key under this reader's prefix; None if it is not one."""
        _, found, rest = listed.partition(_PART_FOLDERS[kind])
        return f"{self.prefix}{found}{rest}" if found else None

    def _json(self, key: str) -> dict[str, Any] | None:
        body = self.files.read(key)
        return None if body is None else dict(json.loads(body))
