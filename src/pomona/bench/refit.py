"""The PCA refit's cost against history: it must not grow with the number of images seen."""

from __future__ import annotations

import time

import numpy as np

from pomona.ml.pca import PcaState, fit_pca, merge_pca_state


def bench_refit(
    d: int = 1280, n_seen: tuple[int, ...] = (10_000, 100_000), *, batch_rows: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Seconds to merge a batch of `batch_rows` into a stored state of each history size, then refit.

    The stored states are synthetic (any symmetric PSD scatter will do): their size is d + d² whatever
    `n_seen` is, which is what this measures.
    """
    rng = np.random.default_rng(seed)
    batch = PcaState.from_rows(rng.standard_normal((batch_rows, d)).astype(np.float32))
    factor = rng.standard_normal((d, d))
    timings: dict[str, float] = {}
    for n in n_seen:
        stored = PcaState(n=n, mean=rng.standard_normal(d), scatter=factor @ factor.T * (n / d))
        start = time.perf_counter()
        fit_pca(merge_pca_state(stored, batch))
        timings[f"refit_s_at_{n}"] = time.perf_counter() - start
    timings["state_bytes"] = float((d + d * d) * np.dtype(np.float64).itemsize)
    return timings
