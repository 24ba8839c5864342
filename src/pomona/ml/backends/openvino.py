"""OpenVINO (Intel's CPU runtime): the LiteRT backend's converted `.tflite` file, run in float32 or in bf16.

OpenVINO reads the `.tflite` file directly, so both backends run one converted model and `prepare` is LiteRT's.
In `bf16` (POMONA_PRECISION) the CPU plugin computes on the CPU's bf16 units (AVX-512 BF16, or AMX tiles on Intel
Sapphire Rapids and later): 1.4-2.1× LiteRT float32's bare-loop throughput here (`best_batch`), at features whose
cosine to float32's is ≥ 0.97 (tested; 0.975 at worst, 0.992 at the median on the sample photos); `f32` agrees
with LiteRT within 1e-4 relative (7.7e-6 at worst). Like LiteRT's, the worker never imports TensorFlow.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pomona.core.errors import SettingsError
from pomona.ml.backends.litert import convert_to_tflite
from pomona.ml.backends.precision import require_known
from pomona.ml.mobilenet import FEATURE_DIM
from pomona.ml.preprocess import F32, INPUT_SHAPE
from pomona.ml.weights import WeightsRef

logger = logging.getLogger(__name__)

# Images per infer request: one is as fast as any (the kernels stay in cache) and never pads; the requests in
# flight keep the cores busy (README, "Backends and precisions").
REQUEST_BATCH = 1


@dataclass(frozen=True)
class OpenVinoBackend:
    name: str = "openvino"
    # Images per call, spread over the infer requests; the cores idle only at a call's tail. 16 to 32 ran fastest in
    # the bare loop (README, "Backends and precisions").
    best_batch: int = 32

    def check(self, precision: str) -> None:
        require_known(precision)
        if precision == "bf16":
            capabilities = cpu_capabilities()
            if "BF16" not in capabilities:
                raise SettingsError(
                    f"POMONA_PRECISION: expected a CPU with bf16 arithmetic (AVX-512 BF16 or AMX) for bf16, got "
                    f"{cpu_name()!r} whose OpenVINO capabilities are {sorted(capabilities)}: run with "
                    "POMONA_PRECISION=f32 (a new lineage: a new POMONA_OUTPUT_PREFIX where the committed one is "
                    "bf16), or on such CPUs"
                )

    def prepare(self, weights: WeightsRef, *, cache_dir: Path) -> None:
        convert_to_tflite(weights, cache_dir=cache_dir)

    def load(
        self,
        weights: WeightsRef,
        *,
        cache_dir: Path,
        batch_size: int,
        num_threads: int,
        precision: str = "f32",
    ) -> Callable[[F32], F32]:
        self.check(precision)
        model_path = convert_to_tflite(weights, cache_dir=cache_dir)
        return OpenVinoModel(model_path, batch_size=batch_size, num_threads=num_threads, precision=precision)


OPENVINO = OpenVinoBackend()


def _core() -> Any:
    import openvino as ov

    return ov.Core()


def cpu_capabilities() -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU: "BF16" where it computes in bf16 natively."""
    return list(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def cpu_name() -> str:
    return str(_core().get_property("CPU", "FULL_DEVICE_NAME"))


class OpenVinoModel:
    """The model compiled for the CPU with the THROUGHPUT hint, and as many async infer requests as OpenVINO
    finds optimal (one per stream: 2 at 2 threads); each call spreads its images over all of them."""

    def __init__(self, model_path: Path, *, batch_size: int, num_threads: int, precision: str) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(model_path))
        self._rows = min(batch_size, REQUEST_BATCH)
        # A static shape: each request holds one input of `_rows` images; a short last one is padded.
        model.reshape([self._rows, *INPUT_SHAPE])
        self._compiled = core.compile_model(
            model,
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": precision,
                "PERFORMANCE_HINT": "THROUGHPUT",
                "INFERENCE_NUM_THREADS": num_threads,
            },
        )
        computed = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        if computed != precision:  # OpenVINO falls back silently where it cannot; a lineage must not
            raise SettingsError(
                f"POMONA_PRECISION: expected OpenVINO to compute in {precision}, got {computed}"
            )
        self.requests = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._queue = ov.AsyncInferQueue(self._compiled, self.requests)
        self._queue.set_callback(_collect)
        logger.info(
            "OpenVINO model compiled",
            extra={
                "precision": precision,
                "threads": num_threads,
                "requests": self.requests,
                "rows": self._rows,
            },
        )
        self._lock = threading.Lock()  # one call at a time uses the queue; the cached featurizer is shared

    def __call__(self, chunk: F32) -> F32:
        features = np.empty((len(chunk), FEATURE_DIM), dtype=np.float32)
        with self._lock:
            try:
                for start in range(0, len(chunk), self._rows):
                    part = chunk[start : start + self._rows]
                    rows = len(part)
                    if rows < self._rows:
                        pad = np.zeros((self._rows - rows, *INPUT_SHAPE), np.float32)
                        part = np.concatenate([part, pad])
                    self._queue.start_async({0: part}, (features, start, rows))
            finally:
                self._queue.wait_all()  # no request outlives the call that started it
        return features


def _collect(request: Any, into: tuple[F32, int, int]) -> None:
    """A finished request's features, copied out before the queue reuses the request."""
    features, start, rows = into
    features[start : start + rows] = request.get_output_tensor(0).data[:rows]
