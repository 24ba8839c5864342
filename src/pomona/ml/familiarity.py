"""Known-ness: how far a photo is from everything the classifier learnt, and where "far" begins.

Softmax confidence compares the known labels with each other, so a cat or a papaya comes out as the most likely apple
at 0.99. The distance to the nearest label's mean, under the discriminant's own shared covariance (Mahalanobis, in
the PCA space: `pomona.ml.classifier.distances`), says whether the photo looks like anything learnt at all. Its
threshold is set from known photos alone: the held-out images of the offered labels, never trained on (a multiple of
their median distance), so no foreign photo is needed to set it. `leave_labels_out` is the
self-check: drop some labels and count how often their held-out photos, never taught, are still answered.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from pomona.core.settings import Settings
from pomona.ml.classifier import (
    Classifier,
    ClassifierError,
    distances,
    predict_proba,
)
from pomona.ml.holdout import Reservoir

DEFAULT_FAMILIAR_FACTOR = Settings().familiar_factor
# Held-out photos of offered labels needed to set the familiar distance: the median of a handful is a guess,
# refusing most known photos or none. Until then nothing is refused as unfamiliar, and
# quality.json's `familiar_distance` is null.
MIN_FAMILIAR_HOLDOUT = 10


def familiar_distance(
    classifier: Classifier, holdout: Reservoir, *, factor: float = DEFAULT_FAMILIAR_FACTOR
) -> float:
    """`factor` times the median distance of the held-out images of the labels `classifier` offers; inf (nothing
    refused) while there are fewer than `MIN_FAMILIAR_HOLDOUT` to set it by, or the classifier knows no distances.

    The median, not a high quantile: a quantile at 95-99 % is the holdout's few farthest photos, a poor guide
    while the holdout holds tens of photos, and the nearest never-taught fruits begin just beyond the unseen known
    photos' farthest. The factor says how far beyond a typical known photo a familiar one may lie (its choice,
    measured: README, "Open-set figures")."""
    if factor <= 0:
        raise ClassifierError(f"expected a familiar factor > 0, got {factor}")
    known = np.isin(holdout.labels, classifier.labels)
    if known.sum() < MIN_FAMILIAR_HOLDOUT or classifier.class_means is None:
        return float("inf")
    return float(np.median(distances(classifier, holdout.features[known])) * factor)


def leave_labels_out(
    classifier: Classifier,
    holdout: Reservoir,
    *,
    factor: float = DEFAULT_FAMILIAR_FACTOR,
    draws: int = 10,
    share: float = 1 / 3,
    seed: int = 0,
) -> dict[str, Any]:
    """The self-check on the job's own data: drop a `share` of `classifier`'s labels and see how often their
    held-out photos, now never taught, are answered anyway (familiar, and at least as confident as its threshold);
    `draws` times, each leaving out another random set of labels. The familiar distance is set again, from the
    kept labels' held-out photos, as `retrain` sets it.

    Dropping a label drops its mean, discriminant and prior; its training photos stay in the PCA space and the
    shared covariance, whose mergeable statistics cannot take one label's scatter out (under the discriminant's
    own assumption, one covariance for every label, the covariance barely changes). Its photos are thus measured
    in a space that has seen their look: a fruit no photo of which was ever uploaded may hide partly outside it."""
    labels = np.asarray(classifier.labels)
    n_out = max(1, round(labels.size * share))
    if labels.size - n_out < 2 or classifier.class_means is None:
        return {
            "skipped": f"expected at least 3 offered labels with distances to leave some out, got {labels.size}"
        }
    rng = np.random.default_rng(seed)
    never_taught, known = [], []
    for _ in range(draws):
        kept = ~np.isin(labels, rng.choice(labels, size=n_out, replace=False))
        left_out = np.isin(holdout.labels, labels[~kept])
        known_rows = np.isin(holdout.labels, labels[kept])
        if not left_out.any() or not known_rows.any():
            continue
        narrowed = _offering(classifier, kept)
        narrowed = dataclasses.replace(
            narrowed,
            familiar_distance=familiar_distance(
                narrowed,
                Reservoir(
                    sha256=holdout.sha256[known_rows],
                    labels=holdout.labels[known_rows],
                    features=holdout.features[known_rows],
                ),
                factor=factor,
            ),
        )
        never_taught.append(_answered(narrowed, holdout.features[left_out]))
        known.append(_answered(narrowed, holdout.features[known_rows]))
    if not never_taught:
        return {"skipped": "expected held-out photos of the labels left out and of those kept, got too few"}
    return {
        "draws": len(never_taught),
        "labels_left_out": n_out,
        "never_taught_answered": float(np.mean(never_taught)),
        "known_answered": float(np.mean(known)),
    }


def _offering(classifier: Classifier, kept: npt.NDArray[np.bool_]) -> Classifier:
    """`classifier` offering only its `kept` labels: the softmax renormalises over them."""
    assert classifier.class_means is not None
    assert classifier.log_priors is not None
    return dataclasses.replace(
        classifier,
        labels=tuple(np.asarray(classifier.labels)[kept].tolist()),
        coef=classifier.coef[kept],
        intercept=classifier.intercept[kept],
        log_priors=classifier.log_priors[kept],
        class_means=classifier.class_means[kept],
    )


def _answered(classifier: Classifier, features: npt.ArrayLike) -> float:
    """The share of these rows answered: familiar, and confident enough."""
    rows = np.asarray(features, dtype=np.float64)
    if rows.shape[0] == 0:
        return 0.0
    confident = predict_proba(classifier, rows).max(axis=1) >= classifier.threshold
    familiar = distances(classifier, rows) <= classifier.familiar_distance
    return float((confident & familiar).mean())
