"""The model backends: one small interface, and the registry a new backend plugs into.

A backend runs MobileNetV2 on preprocessed batches. `prepare` runs once per run on the driver (or at image build
time), before executors need the model: conversions and downloads belong there. `load` runs once per Python worker
and returns the function the featurizer calls on chunks of at most `batch_size` images, computing in `precision`
(POMONA_PRECISION: `f32`, or `bf16` where the backend and the CPU have it; `check` says which before any load).
`choose_model` turns POMONA_BACKEND=auto and POMONA_PRECISION=auto (the defaults) into a backend and a precision.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pomona.core.errors import SettingsError
from pomona.core.outputs import Lineage
from pomona.core.settings import AUTO
from pomona.ml.backends.litert import LITERT
from pomona.ml.backends.openvino import OPENVINO
from pomona.ml.backends.tensorflow import TENSORFLOW
from pomona.ml.preprocess import F32
from pomona.ml.weights import WeightsRef


class Backend(Protocol):
    @property
    def name(self) -> str:
        """The POMONA_BACKEND value that selects it."""

    @property
    def best_batch(self) -> int:
        """Images per model call that run fastest on these CPUs."""

    def check(self, precision: str) -> None:
        """Raise `SettingsError` unless this backend runs the model in `precision` on this machine's CPU."""

    def prepare(self, weights: WeightsRef, *, cache_dir: Path) -> None:
        """Make what `load` needs (e.g. a converted model file in `cache_dir`); idempotent."""

    def load(
        self,
        weights: WeightsRef,
        *,
        cache_dir: Path,
        batch_size: int,
        num_threads: int,
        precision: str = "f32",
    ) -> Callable[[F32], F32]:
        """The model: (≤ batch_size, 224, 224, 3) float32 → (same, 1280) float32, computed in `precision`."""


BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (LITERT, OPENVINO, TENSORFLOW)}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise SettingsError(f"POMONA_BACKEND: expected one of {sorted(BACKENDS)}, got {name!r}") from None


# A new lineage's model: the one that ran the whole job fastest with quality shown equal (the README's "Backends:
# which one, and why" has the figures). bf16 is opt-in: its faster model call is lost in the job's per-image
# overhead, and its answers were right less often.
NEW_LINEAGE = ("litert", "f32")


def choose_model(backend: str, precision: str, *, lineage: Lineage | None = None) -> tuple[str, str]:
    """The backend and precision a run computes in, given POMONA_BACKEND and POMONA_PRECISION (either may be
    `auto`) and the committed `lineage` (None for a new lineage).

    `auto` keeps the lineage's choice, so a lineage never changes model whatever the default becomes; for a new
    lineage it is NEW_LINEAGE's (f32 whatever the backend: bf16 is asked for, never assumed). A value given
    explicitly is kept as given: the job's lineage check refuses it if it differs from the lineage's.
    """
    chosen = NEW_LINEAGE if lineage is None else (lineage.backend, lineage.precision)
    return (
        chosen[0] if backend == AUTO else backend,
        chosen[1] if precision == AUTO else precision,
    )


def runs(backend: str, precision: str) -> bool:
    """Whether `backend` runs the model in `precision` on this machine's CPU."""
    try:
        get_backend(backend).check(precision)
    except SettingsError:
        return False
    return True
