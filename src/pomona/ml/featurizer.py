"""MobileNetV2 features from preprocessed images, on a chosen backend (`pomona.ml.backends`).

The Spark job calls `get_featurizer(...)` inside its pandas UDF: like pyspark's `predict_batch_udf`, the model
is loaded once per Python worker (with `spark.python.worker.reuse=true`) and reused by every later task.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pomona.core.settings import Settings
from pomona.ml.backends import get_backend
from pomona.ml.mobilenet import FEATURE_DIM
from pomona.ml.preprocess import F32, IMAGE_SIZE, INPUT_SHAPE
from pomona.ml.weights import resolve_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Featurizer:
    """`featurizer(batch)`: (n, 224, 224, 3) preprocessed images → (n, 1280) float32 MobileNetV2 features."""

    weights_id: str
    backend: str
    batch_size: int
    # Runs the model on at most `batch_size` images.
    predict_chunk: Callable[[F32], F32] = field(repr=False)
    # The arithmetic the model runs in (POMONA_PRECISION): part of the lineage, as weights and backend are.
    precision: str = "f32"

    def __call__(self, batch: F32) -> F32:
        if batch.ndim != 4 or batch.shape[1:] != INPUT_SHAPE or batch.dtype != np.float32:
            raise ValueError(
                f"expected a float32 array of shape (n, {IMAGE_SIZE}, {IMAGE_SIZE}, 3), "
                f"got {batch.dtype} {batch.shape}"
            )
        if len(batch) == 0:
            return np.empty((0, FEATURE_DIM), dtype=np.float32)
        chunks = [
            self.predict_chunk(np.ascontiguousarray(batch[i : i + self.batch_size]))
            for i in range(0, len(batch), self.batch_size)
        ]
        return np.concatenate(chunks)


def make_featurizer(
    weights: str,
    *,
    backend: str = "litert",
    precision: str = "f32",
    cache_dir: Path | None = None,
    batch_size: int = 32,
    num_threads: int = 1,
) -> Featurizer:
    """Load the model for `weights` (a POMONA_WEIGHTS value) on `backend`, computing in `precision` (a
    POMONA_PRECISION value); see `get_featurizer` to reuse it.

    `cache_dir` defaults to the settings' (POMONA_CACHE_DIR, else ~/.cache/pomona)."""
    model = get_backend(backend)
    model.check(precision)  # before any download or conversion
    if batch_size < 1 or num_threads < 1:
        raise ValueError(f"expected batch_size and num_threads >= 1, got {batch_size} and {num_threads}")
    started = time.monotonic()
    cache_dir = cache_dir or Settings.from_env().model_cache_dir
    ref = resolve_weights(weights, cache_dir=cache_dir)
    predict = model.load(
        ref, cache_dir=cache_dir, batch_size=batch_size, num_threads=num_threads, precision=precision
    )
    logger.info(
        "featurizer loaded",
        extra={
            "backend": backend,
            "precision": precision,
            "weights_id": ref.weights_id,
            "seconds": time.monotonic() - started,
        },
    )
    return Featurizer(
        weights_id=ref.weights_id,
        backend=backend,
        batch_size=batch_size,
        predict_chunk=predict,
        precision=precision,
    )


_LOAD_LOCK = threading.Lock()


def get_featurizer(
    weights: str,
    backend: str = "litert",
    *,
    precision: str = "f32",
    cache_dir: Path | None = None,
    batch_size: int = 32,
    num_threads: int = 1,
) -> Featurizer:
    """`make_featurizer`, memoised per process: a reused Spark Python worker loads the model once.

    A changed weights object behind the same spec is picked up when the worker is restarted.
    """
    with _LOAD_LOCK:  # two threads asking at once load the model once
        return _cached_featurizer(
            weights,
            backend,
            precision,
            cache_dir or Settings.from_env().model_cache_dir,
            batch_size,
            num_threads,
        )


@functools.cache
def _cached_featurizer(
    weights: str, backend: str, precision: str, cache_dir: Path, batch_size: int, num_threads: int
) -> Featurizer:
    return make_featurizer(
        weights,
        backend=backend,
        precision=precision,
        cache_dir=cache_dir,
        batch_size=batch_size,
        num_threads=num_threads,
    )
