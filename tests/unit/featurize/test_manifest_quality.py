"""What a committed batch says of its classifier: the manifest's `classifier` (the model) and `quality` (its
evaluation on the holdout, as in quality.json without the curve and the confusion matrix)."""

from __future__ import annotations

import json

import numpy as np
import numpy.typing as npt

from pomona.core.aws import json_bytes
from pomona.featurize.manifest import classifier_facts, quality_summary
from pomona.ml.classifier import LabelStats
from pomona.ml.holdout import Reservoir
from pomona.ml.training import retrain

D = 12


def _rows(labels: list[str], per_label: int, *, seed: int) -> tuple[npt.NDArray[np.float64], list[str]]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((len(labels), D)) * 6
    x = np.concatenate([centre + rng.standard_normal((per_label, D)) for centre in centres])
    return x, [label for label in labels for _ in range(per_label)]


def _holdout(x: npt.NDArray[np.float64], labels: list[str]) -> Reservoir:
    return Reservoir.from_rows([f"{i:064x}" for i in range(len(labels))], labels, x)


def test_an_evaluated_classifier_is_summarised_without_curve_and_confusion() -> None:
    # GIVEN a classifier of 3 labels retrained and scored on a holdout
    x, labels = _rows(["apple", "fig", "pear"], 20, seed=1)
    held_x, held = _rows(["apple", "fig", "pear"], 4, seed=2)
    retrained = retrain(LabelStats.from_rows(x, labels), _holdout(held_x, held), gain=1.0, loss=5.0)
    assert retrained.classifier is not None

    # WHEN the manifest's summaries are made
    facts = classifier_facts(retrained)
    quality = quality_summary(retrained.evaluation)

    # THEN the classifier's facts are the committed classifier's, its threshold the evaluation's best
    assert facts == {
        "labels": 3,
        "withheld_labels": [],
        "n_train": 60,
        "threshold": retrained.classifier.threshold,
        "temperature": retrained.classifier.temperature,
    }
    assert facts["threshold"] == retrained.evaluation["best_threshold"]
    # AND the quality is quality.json but for the curve and the confusion matrix, and stays JSON
    assert quality == {k: v for k, v in retrained.evaluation.items() if k not in {"curve", "confusion"}}
    assert {"curve", "confusion"} <= set(retrained.evaluation)
    assert quality["n"] == 12
    assert set(quality["per_label_recall"]) == {"apple", "fig", "pear"}
    assert json.loads(json_bytes(quality)) == quality


def test_too_few_labels_leave_no_classifier_and_say_why() -> None:
    # GIVEN images of a single label
    x, labels = _rows(["apple"], 20, seed=1)
    retrained = retrain(LabelStats.from_rows(x, labels), _holdout(x[:2], labels[:2]), gain=1.0, loss=5.0)

    # THEN the manifest has no classifier, and its quality (quality.json as a whole) says why
    assert classifier_facts(retrained) is None
    assert quality_summary(retrained.evaluation) == retrained.evaluation
    assert set(retrained.evaluation) == {"skipped"}
    assert "expected at least 2 labels" in retrained.evaluation["skipped"]


def test_a_classifier_without_holdout_yet_is_committed_unscored() -> None:
    # GIVEN enough training images but no held-out one yet
    x, labels = _rows(["apple", "fig"], 10, seed=1)
    retrained = retrain(LabelStats.from_rows(x, labels), Reservoir.empty(D), gain=1.0, loss=5.0)

    # THEN the classifier is described, its quality says it was not evaluated
    facts = classifier_facts(retrained)
    assert facts is not None
    assert facts["labels"] == 2
    assert quality_summary(retrained.evaluation) == {
        "skipped": "expected held-out images to evaluate on, got none yet"
    }
