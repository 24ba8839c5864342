"""Where the featurization job's outputs live, under `Settings.output_prefix`: every key is made here."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

# A version's classifier (what answers users), the statistics it was trained from and its holdout sample (what
# the next refit starts from), its evaluation on that holdout (or why it has none), and its metadata (lineage).
CLASSIFIER_FILE, TRAINING_FILE, HOLDOUT_FILE, EVALUATION_FILE, METADATA_FILE = (
    "classifier.npz",
    "training.npz",
    "holdout.npz",
    "quality.json",
    "metadata.json",
)
# A version's PCA (what projections are made with) and its merge state (what the next refit starts from).
MODEL_FILE, STATE_FILE = "model.npz", "state.npz"
# A part file's key from its kind folder on: the same whatever output prefix the writer had.
PART_FOLDERS = {"features": "features/batch_id=", "projections": "projections/batch_id="}


def new_batch_id(now: datetime | None = None, *, entropy: bytes | None = None) -> str:
    """Sortable and unique: `20261125T054000Z-1a2b3c4d`."""
    now = now or datetime.now(UTC)
    suffix = hashlib.sha256(entropy if entropy is not None else now.isoformat().encode()).hexdigest()[:8]
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{suffix}"


def features_key(prefix: str, batch_id: str, part: int) -> str:
    return f"{prefix}{PART_FOLDERS['features']}{batch_id}/part-{part:05d}.parquet"


def projections_key(prefix: str, batch_id: str, part: int) -> str:
    return f"{prefix}{PART_FOLDERS['projections']}{batch_id}/part-{part:05d}.parquet"


def manifest_key(prefix: str, batch_id: str) -> str:
    return f"{prefix}batches/{batch_id}/manifest.json"


def pca_prefix(prefix: str, version: int, batch_id: str) -> str:
    """PCA version `version` as batch `batch_id` wrote it: a folder no other run can write to, so a run that lost
    the race for LATEST never overwrites the committed version."""
    return f"{prefix}models/pca/v{version}-{batch_id}/"


def pca_latest_key(prefix: str) -> str:
    """The pointer to the committed PCA version (`pomona.core.outputs.latest`)."""
    return f"{prefix}models/pca/LATEST"


def lock_key(prefix: str) -> str:
    """The run lock: one featurization run at a time per output prefix."""
    return f"{prefix}locks/featurize.json"


def leases_prefix(prefix: str) -> str:
    """Each run's own lease on its batch's files, which recovery leaves alone while it is live."""
    return f"{prefix}locks/runs/"


def lease_key(prefix: str, batch_id: str) -> str:
    return f"{leases_prefix(prefix)}{batch_id}.json"
