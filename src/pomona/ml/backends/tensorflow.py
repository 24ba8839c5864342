"""TensorFlow: the Keras model under `tf.function`; the reference the other backends are measured against."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pomona.ml.backends.precision import require_f32
from pomona.ml.mobilenet import build_keras_model
from pomona.ml.preprocess import F32, INPUT_SHAPE
from pomona.ml.weights import WeightsRef

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorFlowBackend:
    name: str = "tensorflow"
    best_batch: int = 32  # tf.function amortises its dispatch over a larger batch

    def prepare(self, weights: WeightsRef, *, cache_dir: Path) -> None:
        """Nothing to prepare: the Keras model is built from the weights file in each worker."""

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
        return _tensorflow_model(weights, batch_size=batch_size, num_threads=num_threads)


TENSORFLOW = TensorFlowBackend()


def _tensorflow_model(weights: WeightsRef, *, batch_size: int, num_threads: int) -> Callable[[F32], F32]:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(num_threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow was initialised earlier in this process: its settings stay
        logger.warning(
            "TensorFlow already initialised, num_threads ignored", extra={"num_threads": num_threads}
        )
    model = build_keras_model(weights)

    # One fixed input shape: chunks are padded to batch_size, so the function is traced exactly once.
    @tf.function(
        input_signature=[tf.TensorSpec([batch_size, *INPUT_SHAPE], tf.float32)],
        jit_compile=False,
        reduce_retracing=True,
    )
    def forward(x: Any) -> Any:
        return model(x, training=False)

    def predict(chunk: F32) -> F32:
        rows = len(chunk)
        padded = np.zeros((batch_size, *INPUT_SHAPE), dtype=np.float32)
        padded[:rows] = chunk
        features: F32 = forward(padded).numpy()[:rows]
        return features

    return predict
