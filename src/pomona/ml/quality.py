"""The business metric: what a classifier's answers are worth when only the confident ones are given.

A right answer earns `gain`, a wrong one costs `loss`, a withheld one costs nothing. `net_revenue_curve` scores
every confidence threshold, `best_threshold` picks the one earning most; `pomona.ml.holdout.evaluate` applies
them to the classifier's answers on the held-out images, which is what each committed version's `quality.json`
reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from pomona.core.errors import PomonaError

# (threshold, net revenue per 1000 images, coverage)
CurvePoint = tuple[float, float, float]

# Every hundredth, then one step past 1.0 so that "withhold everything" (revenue 0) is always on the curve.
PLOT_THRESHOLDS: tuple[float, ...] = (
    *np.round(np.linspace(0.0, 1.0, 101), 2).tolist(),
    float(np.nextafter(1.0, 2.0)),
)


class QualityError(PomonaError, ValueError):
    """The revenue curve's inputs are not of the expected shape."""


def net_revenue_curve(
    confidence: npt.ArrayLike,
    correct: npt.ArrayLike,
    *,
    gain: float = 1.0,
    loss: float = 5.0,
    thresholds: Sequence[float] | None = None,
) -> list[CurvePoint]:
    """Net revenue per 1000 images and coverage when answering only where confidence ≥ threshold.

    The default thresholds are `PLOT_THRESHOLDS` plus every distinct confidence, so the best threshold on
    this sample is on the curve. Cost is O((n + thresholds) log n).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    if conf.ndim != 1 or conf.shape != right.shape:
        raise QualityError(
            f"expected confidence and correct of one same length, got {conf.shape} and {right.shape}"
        )
    if conf.size == 0:
        raise QualityError("expected at least one answer to score, got none")
    grid = (
        np.union1d(PLOT_THRESHOLDS, conf) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    )

    order = np.argsort(conf, kind="stable")
    sorted_conf = conf[order]
    # right_from[i]: right answers among the images from the i-th least confident on.
    right_from = np.append(np.cumsum(right[order][::-1])[::-1], 0)
    first_answered = np.searchsorted(sorted_conf, grid, side="left")
    answered = conf.size - first_answered
    n_right = right_from[first_answered]
    revenue = (gain * n_right - loss * (answered - n_right)) * 1000.0 / conf.size
    return [
        (float(t), float(r), float(c)) for t, r, c in zip(grid, revenue, answered / conf.size, strict=True)
    ]


def best_threshold(curve: Sequence[CurvePoint]) -> tuple[float, float]:
    """The (threshold, revenue per 1000) earning most; among equals, the lowest threshold answers most."""
    if not curve:
        raise QualityError("expected a non-empty revenue curve, got none")
    threshold, revenue, _ = min(curve, key=lambda point: (-point[1], point[0]))
    return threshold, revenue
