"""LiteRT (TFLite with XNNPACK), the default backend: the Keras model converted once to a float32 `.tflite` file.

About 2.5× faster than TensorFlow on CPU, and the worker never imports TensorFlow (~1.8 GB per worker with it, a
few hundred MB without): conversion runs in a child process and its result is cached on disk.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pomona.ml.backends.precision import require_f32
from pomona.ml.mobilenet import build_keras_model
from pomona.ml.preprocess import F32, INPUT_SHAPE
from pomona.ml.weights import WeightsError, WeightsRef, write_atomically

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiteRtBackend:
    name: str = "litert"
    # XNNPACK's kernels stay in cache at one image: larger batches ran slower (README, "Backends and precisions").
    best_batch: int = 1

    def prepare(self, weights: WeightsRef, *, cache_dir: Path) -> None:
        convert_to_tflite(weights, cache_dir=cache_dir)

    def check(self, precision: str) -> None:
        require_f32(self.name, precision)

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
        return LiteRtModel(model_path, batch_size=batch_size, num_threads=num_threads)


LITERT = LiteRtBackend()


def convert_to_tflite(weights: WeightsRef, *, cache_dir: Path) -> Path:
    """The model as a float32 `.tflite` file, converted once and cached in `cache_dir`.

    Conversion runs in a child Python process: TensorFlow's ~1.5 GB is returned to the OS when it exits, and
    the calling Spark worker keeps a small footprint because it never imports TensorFlow itself. A file lock
    makes the other workers of an executor wait for that one conversion instead of each running their own.
    """
    target = cache_dir / f"mobilenet_v2_{weights.weights_id.replace(':', '-')}.tflite"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not target.is_file():
            _convert_in_child(weights, target)
    return target


def _convert_in_child(weights: WeightsRef, target: Path) -> None:
    started = time.monotonic()
    code = "import sys; from pomona.ml.backends.litert import _convert_main; _convert_main(sys.argv[1:])"
    args = [weights.spec, str(weights.path or ""), weights.weights_id, str(target)]
    # The child sees the same modules as this process, including --py-files added to sys.path at run time.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0 or not target.is_file():
        tail = result.stderr.strip().splitlines()[-5:]
        raise WeightsError(
            f"expected {weights.spec!r} to convert to TFLite, got exit code {result.returncode}: {tail}"
        )
    logger.info(
        "weights converted to TFLite",
        extra={"weights_id": weights.weights_id, "path": str(target), "seconds": time.monotonic() - started},
    )


def _convert_main(argv: Sequence[str]) -> None:
    """Entry point of the conversion child process."""
    import tensorflow as tf

    spec, path, weights_id, target = argv
    weights = WeightsRef(spec=spec, path=Path(path) if path else None, weights_id=weights_id)
    converter = tf.lite.TFLiteConverter.from_keras_model(build_keras_model(weights))
    write_atomically(Path(target), converter.convert())


class LiteRtModel:
    """A LiteRT interpreter (XNNPACK, the default CPU delegate) resized to the chunk's batch dimension."""

    def __init__(self, model_path: Path, *, batch_size: int, num_threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(model_path), num_threads=num_threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()  # an interpreter is not thread-safe; the cached featurizer is shared
        self._rows = 0
        self._resize(batch_size)

    def _resize(self, rows: int) -> None:
        # Only a short last chunk changes the size; re-allocating costs a few ms, less than padding would.
        self._interpreter.resize_tensor_input(self._input, [rows, *INPUT_SHAPE])
        self._interpreter.allocate_tensors()
        self._rows = rows

    def __call__(self, chunk: F32) -> F32:
        with self._lock:
            if len(chunk) != self._rows:
                self._resize(len(chunk))
            self._interpreter.set_tensor(self._input, chunk)
            self._interpreter.invoke()
            features: F32 = self._interpreter.get_tensor(self._output)
            return features
