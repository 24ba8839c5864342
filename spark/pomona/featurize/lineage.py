"""Which model a run featurizes with: prepared once on the driver before anything is received, and the committed
lineage's (weights, backend, precision), since one PCA never mixes features of two models."""

from __future__ import annotations

from pomona.core.errors import PomonaError
from pomona.core.outputs import Lineage, VersionMetadata
from pomona.core.settings import Settings
from pomona.ml.backends import choose_model, get_backend
from pomona.ml.weights import resolve_weights


class LineageError(PomonaError, ValueError):
    """This run's model (weights, backend, precision) is not the one whose features the committed PCA holds."""


def check_lineage(committed: VersionMetadata | None, ours: Lineage) -> None:
    """Refuse, before a message is received, to merge features of another model into the committed PCA
    (`committed`: its version's metadata)."""
    if committed is None or committed.lineage == ours:
        return
    raise LineageError(
        f"expected features from the model of PCA v{committed.version} ({committed.lineage.describe()}), got "
        f"{ours.describe()}: one PCA never mixes features of two models. Run with that model's POMONA_WEIGHTS, "
        "POMONA_BACKEND and POMONA_PRECISION, or start a new lineage under a new POMONA_OUTPUT_PREFIX; nothing "
        "was received or written"
    )


def prepare_model(settings: Settings) -> str:
    """Check that the backend runs the precision on this CPU, then resolve the weights and prepare the backend once,
    on the driver, before executors need them (and before a message is received); the weights id.

    The driver's CPU stands for the executors': on a cluster, schedule both on nodes that have what the precision
    needs (bf16: AVX-512 BF16 or AMX). `auto` prepares the model a new lineage would choose (`choose_model`)."""
    name, precision = choose_model(settings.backend, settings.precision)
    backend = get_backend(name)
    backend.check(precision)
    weights = resolve_weights(settings.weights, cache_dir=settings.model_cache_dir)
    backend.prepare(weights, cache_dir=settings.model_cache_dir)
    return weights.weights_id
