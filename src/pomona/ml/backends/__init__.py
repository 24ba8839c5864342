"""The model backends: one small interface, and the registry a new backend plugs into.

A backend runs MobileNetV2 on preprocessed batches. `prepare` runs once per run on the driver (or at image build
time), before executors need the model: conversions and downloads belong there. `load` runs once per Python worker
and returns the function the featurizer calls on chunks of at most `batch_size` images, computing in `precision`
(POMONA_PRECISION: `f32`, or `bf16` where the backend and the CPU have it; `check` says which before any load).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pomona.core.errors import SettingsError
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
