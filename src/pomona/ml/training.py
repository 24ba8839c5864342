"""One refit of the classifier: the training statistics in the new PCA space, scored on the whole holdout.

After each batch the job merges the batch's statistics into the stored ones (`pomona.ml.classifier`) and its
held-out rows into the stored reservoir (`pomona.ml.holdout`), then calls `retrain`: the cost is that of the
statistics and the bounded reservoir, never of the history.

The classifier's PCA space is its own, fitted on the training rows alone, not the job's PCA of every image. Held-out photos must be as new to every part of the model as a user's photo: in a space fitted
with them, each one spans trailing components of its own, along which the training rows barely vary, so its
distance to the labels came out ~30 % larger than an unseen photo's, and swung with which photos were held out.
The familiar distance set from them let 7-21 % of never-taught fruits through (README, "Open-set figures").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pomona.core.settings import Settings
from pomona.ml.calibration import break_even, fit_temperature
from pomona.ml.classifier import Classifier, ClassifierError, LabelStats, fit_classifier
from pomona.ml.familiarity import DEFAULT_FAMILIAR_FACTOR, familiar_distance, leave_labels_out
from pomona.ml.holdout import Reservoir, evaluate
from pomona.ml.pca import PcaError, fit_pca

_DEFAULTS = Settings()


@dataclass(frozen=True)
class Retrained:
    """The classifier (None when there is not yet enough to train one) and its evaluation, or why it has none."""

    classifier: Classifier | None
    evaluation: dict[str, Any]


def retrain(
    training: LabelStats,
    holdout: Reservoir,
    *,
    gain: float,
    loss: float,
    familiar_factor: float = DEFAULT_FAMILIAR_FACTOR,
    variance_target: float = _DEFAULTS.variance_target,
    max_components: int = _DEFAULTS.max_components,
) -> Retrained:
    """The discriminant of every training image in the PCA of the training rows (to `variance_target`, as the
    job's), its temperature fitted on `holdout`, its familiar distance `familiar_factor` times the held-out known
    images' median distance (`familiar_distance`: set without a single foreign photo), and its threshold the one that maximises net revenue on `holdout` among the
    familiar images, never below the break-even confidence (all the threshold is until the holdout has a row to
    choose by; until then nothing is refused as unfamiliar either)."""
    try:
        space = fit_pca(training.total, variance_target=variance_target, max_components=max_components)
    except PcaError as err:
        return Retrained(None, {"skipped": f"expected training images to fit the classifier's space: {err}"})
    try:
        fitted = fit_classifier(training, space)
    except ClassifierError as err:
        return Retrained(None, {"skipped": str(err)})
    floor = break_even(gain=gain, loss=loss)
    classifier = dataclasses.replace(
        fitted,
        temperature=fit_temperature(fitted, training, holdout),
        threshold=floor,
        familiar_distance=familiar_distance(fitted, holdout, factor=familiar_factor),
    )
    if holdout.n == 0:
        return Retrained(classifier, {"skipped": "expected held-out images to evaluate on, got none yet"})
    evaluation = evaluate(classifier, holdout, gain=gain, loss=loss, min_threshold=floor)
    evaluation["familiar_factor"] = familiar_factor
    classifier = dataclasses.replace(classifier, threshold=evaluation["best_threshold"])
    evaluation["leave_labels_out"] = leave_labels_out(classifier, holdout, factor=familiar_factor)
    return Retrained(classifier, evaluation)
