"""Known-ness: how far a photo is from everything the classifier learnt, and where "far" begins.

Softmax confidence compares the known labels with each other, so a cat or a papaya comes out as the most likely apple
at 0.99. The distance to the nearest label's mean, under the discriminant's own shared covariance (Mahalanobis, in
the PCA space: `pomona.ml.classifier.distances`), says whether the photo looks like anything learnt at all. Its
threshold is set from known photos alone: the held-out images of the offered labels, never trained on (a multiple of
their median distance), so no foreign photo is needed to set it. `leave_labels_out` is the
self-check: refit without some labels and count how often their photos, never taught, are still answered.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from pomona.core.settings import Settings
from pomona.ml.calibration import fit_temperature
from pomona.ml.classifier import (
    Classifier,
    ClassifierError,
    LabelStats,
    distances,
    fit_classifier,
    predict_proba,
)
from pomona.ml.holdout import Reservoir
from pomona.ml.pca import PcaError, fit_pca

_DEFAULTS = Settings()
DEFAULT_FAMILIAR_FACTOR = _DEFAULTS.familiar_factor
# Held-out photos of offered labels needed to set the familiar distance: the median of a handful is a guess,
# refusing most known photos or none. Until then nothing is refused as unfamiliar, and
# quality.json's `familiar_distance` is null.
MIN_FAMILIAR_HOLDOUT = 10


def familiar_distance(
    classifier: Classifier, holdout: Reservoir, *, factor: float = DEFAULT_FAMILIAR_FACTOR
) -> float:
    """`factor` times the median distance of the held-out images of the labels `classifier` offers; inf (nothing
    refused) while there are fewer than `MIN_FAMILIAR_HOLDOUT` to set it by, or the classifier knows no distances.

    The median, not a high quantile: a quantile at 95-99 % is the holdout's few farthest photos, and on the 540
    sample photos the demo's ~50 held-out ones put it anywhere in the range where never-taught fruits begin, while
    their median stays within ~5 % of unseen photos'. The factor then says how far beyond a typical known photo a
    familiar one may lie: 1.4 keeps 94-98 % of unseen photos of known labels familiar and 0-3 % of never-taught
    fruits (README, "Open-set figures")."""
    if factor <= 0:
        raise ClassifierError(f"expected a familiar factor > 0, got {factor}")
    known = np.isin(holdout.labels, classifier.labels)
    if known.sum() < MIN_FAMILIAR_HOLDOUT or classifier.class_means is None:
        return float("inf")
    return float(np.median(distances(classifier, holdout.features[known])) * factor)


def leave_labels_out(
    holdout: Reservoir,
    *,
    factor: float = DEFAULT_FAMILIAR_FACTOR,
    min_threshold: float = 0.0,
    draws: int = 10,
    share: float = 1 / 3,
    seed: int = 0,
    variance_target: float = _DEFAULTS.variance_target,
    max_components: int = _DEFAULTS.max_components,
) -> dict[str, Any]:
    """The self-check on known photos alone: refit without a `share` of the labels and see how often their photos,
    never taught, are answered anyway; `draws` times, each leaving out another random set of labels.

    Only the held-out images (`holdout`, never trained on) take part, so the check needs nothing the job does not
    keep: in each draw, the kept labels' images are halved by sha256 into a training half (which alone fits the
    draw's PCA space and discriminant, as `retrain` does) and a known half (which sets the familiar distance, as
    the holdout does), and the left-out labels' images are the never-taught ones. Answered means familiar and at least `min_threshold` confident. None when there are too few
    labels (4) or images to draw from."""
    labels = np.unique(holdout.labels)
    n_out = max(1, round(labels.size * share))
    if labels.size - n_out < 3:
        return {"skipped": f"expected at least 4 held-out labels to leave some out, got {labels.size}"}
    rng = np.random.default_rng(seed)
    # The training half: an even last hex digit of the sha256, fixed by the bytes as the holdout itself is.
    train_half = np.array([int(sha[-1], 16) % 2 == 0 for sha in holdout.sha256], dtype=bool)
    never_taught, known = [], []
    for _ in range(draws):
        left_out = np.isin(holdout.labels, rng.choice(labels, size=n_out, replace=False))
        taught = ~left_out & train_half
        try:
            stats = LabelStats.from_rows(holdout.features[taught], holdout.labels[taught].tolist())
            space = fit_pca(stats.total, variance_target=variance_target, max_components=max_components)
            fitted = fit_classifier(stats, space, min_label_images=2)
        except (ClassifierError, PcaError):
            continue
        checked = ~left_out & ~train_half
        known_rows = Reservoir(
            sha256=holdout.sha256[checked], labels=holdout.labels[checked], features=holdout.features[checked]
        )
        classifier = dataclasses.replace(
            fitted,
            temperature=fit_temperature(fitted, stats, known_rows),
            threshold=min_threshold,
            familiar_distance=familiar_distance(fitted, known_rows, factor=factor),
        )
        never_taught.append(_answered(classifier, holdout.features[left_out]))
        known.append(_answered(classifier, known_rows.features))
    if not never_taught:
        return {
            "skipped": "expected enough held-out images per label to refit without some labels, got too few"
        }
    return {
        "draws": len(never_taught),
        "labels_left_out": n_out,
        "never_taught_answered": float(np.mean(never_taught)),
        "known_answered": float(np.mean(known)),
    }


def _answered(classifier: Classifier, features: npt.ArrayLike) -> float:
    """The share of these rows answered: familiar, and confident enough."""
    rows = np.asarray(features, dtype=np.float64)
    if rows.shape[0] == 0:
        return 0.0
    confident = predict_proba(classifier, rows).max(axis=1) >= classifier.threshold
    familiar = distances(classifier, rows) <= classifier.familiar_distance
    return float((confident & familiar).mean())
