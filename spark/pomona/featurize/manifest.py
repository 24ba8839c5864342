"""What a batch's manifest says beyond its counts: the committed classifier, its holdout evaluation, the images
quarantined by reason and those scored unfamiliar; and the classifier's files beside the version's evaluation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pandas as pd

from pomona.core.contract import Reason, utc_now
from pomona.core.outputs import CLASSIFIER_FILE, HOLDOUT_FILE, TRAINING_FILE, Lineage
from pomona.core.settings import Settings
from pomona.featurize.outcome import Settled
from pomona.ml.classifier import LabelStats, classifier_to_npz, label_stats_to_npz
from pomona.ml.holdout import Reservoir, reservoir_to_npz
from pomona.ml.pca import PcaModel
from pomona.ml.training import Retrained


def count_unfamiliar(retrained: Retrained, projected: pd.DataFrame) -> int | None:
    """How many of the batch's images the new classifier scores unfamiliar (None without a classifier)."""
    classifier = retrained.classifier
    if classifier is None or not len(projected):
        return None
    return int((projected["distance"].to_numpy() > classifier.familiar_distance).sum())


def quarantined_by_reason(settled: Settled, *, refused: int) -> dict[str, int]:
    """Quarantined images by reason: the executors' failures (but those deferred instead) and refused messages."""
    quarantined = Counter(str(f.reason) for f in settled.quarantined)
    return dict(quarantined + Counter({Reason.BAD_MESSAGE.value: refused}))


def classifier_facts(retrained: Retrained) -> dict[str, Any] | None:
    """What the manifest says of the committed classifier (`classifier.npz`); None when none was trained (the
    evaluation says why)."""
    classifier = retrained.classifier
    if classifier is None:
        return None
    return {
        "labels": len(classifier.labels),
        "withheld_labels": list(classifier.withheld_labels),
        "n_train": classifier.n_train,
        "threshold": classifier.threshold,
        "temperature": classifier.temperature,
    }


def quality_summary(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """What the manifest says of the holdout evaluation (`quality.json`): all of it but the curve and the confusion
    matrix, which grow with the thresholds and the labels squared."""
    return {k: v for k, v in evaluation.items() if k not in {"curve", "confusion"}}


def classifier_files(retrained: Retrained, training: LabelStats, holdout: Reservoir) -> dict[str, bytes]:
    """The classifier's files beside the version's evaluation: the statistics and holdout the next refit starts
    from, and the classifier when there is one."""
    files = {TRAINING_FILE: label_stats_to_npz(training), HOLDOUT_FILE: reservoir_to_npz(holdout)}
    if retrained.classifier is not None:
        files[CLASSIFIER_FILE] = classifier_to_npz(retrained.classifier)
    return files


def batch_manifest(
    batch_id: str,
    version: int,
    model: PcaModel,
    retrained: Retrained,
    *,
    counts: dict[str, Any],
    timings: dict[str, float],
    n_fresh: int,
    settings: Settings,
    lineage: Lineage,
    files: dict[str, list[str]],
) -> dict[str, Any]:
    """The batch's manifest: its PCA version, the model that made its features (`lineage`, and the weights spec
    of `settings`), its counts and timings, the classifier and its evaluation, and the part files it commits."""
    return {
        "batch_id": batch_id,
        "created_at": utc_now(),
        "pca_version": version,
        "n_seen": model.n_seen,
        "k": model.n_components,
        "explained_variance": float(model.explained_variance_ratio.sum()),
        **lineage.to_json(),
        "weights": settings.weights,
        "counts": counts,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "images_per_s": round(n_fresh / max(timings["featurize_s"] + timings["project_s"], 1e-9), 2),
        "classifier": classifier_facts(retrained),
        "quality": quality_summary(retrained.evaluation),
        "files": files,
    }
