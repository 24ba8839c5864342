"""Settings shared by every unit, read once from the environment.

All environment variable names live in this module. The same names configure the Lambda, the Spark job and the
CLI, on AWS and on the embedded stack: only `AWS_ENDPOINT_URL` (read by boto3 itself) and the queue URLs differ.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pomona.core.errors import SettingsError
from pomona.core.resources import describe

MIB = 1024 * 1024

# Environment variable → Settings field. The README's configuration table is this mapping.
ENV_VARS: dict[str, str] = {
    "POMONA_BUCKET": "bucket",
    "POMONA_UPLOADS_PREFIX": "uploads_prefix",
    "POMONA_QUARANTINE_PREFIX": "quarantine_prefix",
    "POMONA_OUTPUT_PREFIX": "output_prefix",
    "POMONA_EVENTS_QUEUE_URL": "events_queue_url",
    "POMONA_IMAGES_QUEUE_URL": "images_queue_url",
    "POMONA_IMAGES_DLQ_URL": "images_dlq_url",
    "POMONA_IDEMPOTENCY_TABLE": "idempotency_table",
    "POMONA_SEEN_TABLE": "seen_table",
    "POMONA_TABLES": "tables",
    "POMONA_GLUE_DATABASE": "glue_database",
    "AWS_ENDPOINT_URL": "endpoint_url",
    "AWS_DEFAULT_REGION": "region",
    "POMONA_MAX_BYTES": "max_bytes",
    "POMONA_MAX_PIXELS": "max_pixels",
    "POMONA_MIN_SIDE": "min_side",
    "POMONA_MAX_DECODE_MB": "max_decode_mb",
    "POMONA_ALLOWED_FORMATS": "allowed_formats",
    "POMONA_MAX_IMAGES": "max_images",
    "POMONA_KEEP_FULL_VERSIONS": "keep_full_versions",
    "POMONA_VARIANCE_TARGET": "variance_target",
    "POMONA_MAX_COMPONENTS": "max_components",
    "POMONA_N_COMPONENTS": "n_components",
    "POMONA_WEIGHTS": "weights",
    "POMONA_BACKEND": "backend",
    "POMONA_PRECISION": "precision",
    "POMONA_GAIN": "gain",
    "POMONA_LOSS": "loss",
    "POMONA_FAMILIAR_FACTOR": "familiar_factor",
    "POMONA_CACHE_DIR": "cache_dir",
    "POMONA_MODEL_CHECK_SECONDS": "model_check_seconds",
    "POMONA_RUN_DEADLINE_SECONDS": "run_deadline_s",
    "POMONA_STALL_SECONDS": "stall_s",
    "POMONA_METRICS_NAMESPACE": "metrics_namespace",
}
# Tests only, never a deployment's setting: the job phase at which the job's process kills itself, as a killed pod
# would (`pomona.featurize.driver`).
FAULT_ENV = "POMONA_FAULT"
# The arithmetic a backend runs the model in (POMONA_PRECISION). Features of two precisions differ (bf16's keep ~8
# significant bits), so a lineage never mixes them; which backends run which precision is `pomona.ml.backends`'.
PRECISIONS = ("f32", "bf16")
# Where the committed outputs' Iceberg tables are cataloged (POMONA_TABLES): the Glue Data Catalog, or nowhere.
TABLE_CATALOGS = ("glue", "off")
# POMONA_BACKEND and POMONA_PRECISION's default: the committed lineage's model, or for a new lineage the fastest one
# whose quality is shown equal on this CPU (`pomona.ml.backends.choose_model`).
AUTO = "auto"
# Where things are, by default: the resources of a deployment with the default name.
_DEPLOYMENT = describe()


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Where things are and how far the platform may go; `Settings.from_env()` builds it."""

    # -- where
    bucket: str = _DEPLOYMENT.bucket
    uploads_prefix: str = _DEPLOYMENT.uploads_prefix
    quarantine_prefix: str = _DEPLOYMENT.quarantine_prefix
    # Outputs (features/, projections/, models/, batches/) live under this prefix; "" is the bucket root.
    output_prefix: str = ""
    events_queue_url: str = ""
    images_queue_url: str = ""
    images_dlq_url: str = ""
    idempotency_table: str = _DEPLOYMENT.idempotency.name
    seen_table: str = _DEPLOYMENT.seen.name
    # The committed outputs as Iceberg tables in the Glue Data Catalog ("glue"), or none ("off").
    tables: str = "glue"
    glue_database: str = _DEPLOYMENT.glue_database
    endpoint_url: str | None = None
    region: str = "us-east-1"
    # -- ingestion limits
    max_bytes: int = 20 * MIB
    max_pixels: int = 40_000_000
    min_side: int = 32
    # The memory one image's decode may take at its peak, priced from its header (`pomona.imaging.decode`): every
    # format at 20 MP, baseline JPEG and PNG at the pixel cap. What executors and the classify Lambda budget per photo.
    max_decode_mb: int = 320
    allowed_formats: frozenset[str] = field(default_factory=lambda: frozenset({"JPEG", "PNG", "WEBP"}))
    # -- featurization
    max_images: int = 50_000
    # PCA versions that keep their merge state (what the next refit starts from); older ones keep only what a
    # reader of their projections needs (components, mean). At least 1: the latest.
    keep_full_versions: int = 3
    variance_target: float = 0.95
    max_components: int = 256
    n_components: int | None = None
    # Liveness: a run past its deadline, or without progress (a message received, a task finished, a phase
    # done) for `stall_s`, cancels its Spark jobs, gives its messages back and exits non-zero; a stalled run no
    # longer renews the lock, so the next scheduled run can take over.
    run_deadline_s: float = 3600.0
    stall_s: float = 900.0
    # CloudWatch namespace of the job's metrics (RunsSucceeded, RunsFailed, ImagesCommitted); "" sends none.
    metrics_namespace: str = "Pomona"
    weights: str = "imagenet"
    backend: str = AUTO
    precision: str = AUTO
    # -- the business metric: what a right answer earns and a wrong one costs
    gain: float = 1.0
    loss: float = 5.0
    # -- the open-set answer: a photo farther from every label learnt than this many times the held-out known
    # photos' median distance is "not something I know" (`pomona.ml.familiarity`)
    familiar_factor: float = 1.4
    # -- answering: how often a warm classifier looks whether LATEST moved (one small GET), in seconds
    model_check_seconds: float = 60.0
    # -- this machine
    # Downloaded weights and converted models; "" is ~/.cache/pomona (`model_cache_dir`).
    cache_dir: str = ""

    def __post_init__(self) -> None:
        if self.keep_full_versions < 1:
            raise SettingsError(
                f"POMONA_KEEP_FULL_VERSIONS: expected at least 1 (the latest state is the next run's start), "
                f"got {self.keep_full_versions}"
            )
        if self.tables not in TABLE_CATALOGS:
            raise SettingsError(f"POMONA_TABLES: expected one of {list(TABLE_CATALOGS)}, got {self.tables!r}")
        if self.precision not in (*PRECISIONS, AUTO):
            raise SettingsError(
                f"POMONA_PRECISION: expected one of {[*PRECISIONS, AUTO]}, got {self.precision!r}"
            )

    @property
    def model_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path.home() / ".cache" / "pomona"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `environ` (default: the process environment), then `overrides`."""
        env = os.environ if environ is None else environ
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for var, name in ENV_VARS.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[name] = _parse(var, raw, str(types[name]))
        values.update(overrides)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings: for Spark executors, subprocesses and `local up`."""
        env: dict[str, str] = {}
        for var, name in ENV_VARS.items():
            value = getattr(self, name)
            if value is None:
                continue
            env[var] = ",".join(sorted(value)) if isinstance(value, frozenset) else str(value)
        return env

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def override(self, **given: Any) -> Settings:
        """These settings with each value that was given (not None): command-line options over the environment."""
        return self.replace(**{name: value for name, value in given.items() if value is not None})


def configured(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The raw value the environment gives setting `name` (a Settings field), or None when it gives none."""
    var = next(var for var, field_name in ENV_VARS.items() if field_name == name)
    return (os.environ if environ is None else environ).get(var) or None


def injected_fault(environ: Mapping[str, str] | None = None) -> str:
    """The phase named by POMONA_FAULT, or ""."""
    return (os.environ if environ is None else environ).get(FAULT_ENV, "")


def _parse(var: str, raw: str, type_name: str) -> Any:
    if type_name.startswith("frozenset"):
        return frozenset(part.strip().upper() for part in raw.split(",") if part.strip())
    kind, convert = ("an integer", int) if type_name.startswith("int") else ("a number", float)
    if not type_name.startswith(("int", "float")):
        return raw
    try:
        return convert(raw)
    except ValueError as err:
        raise SettingsError(f"{var}: expected {kind}, got {raw!r}") from err
