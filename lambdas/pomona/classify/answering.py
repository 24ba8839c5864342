"""One photo in, one answer out: the serving core the Lambda, `pomona classify`, the local endpoint and the bench share.

The photo passes the same validation as an upload (`pomona.validation.checks`), whose decode is the job's, then the same
scaling and featurizer as the job's, then the classifier: each photo is decoded once. A rejected photo gets the reason
ingestion would have given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pomona.classify.model import ServedModel
from pomona.ml.classifier import answer
from pomona.ml.preprocess import model_input
from pomona.validation.checks import Limits, validate_and_decode

Catalog = Callable[[str], dict[str, Any] | None]
# The answer's `reason` for a photo far from every fruit learnt: an answer ("not something I know"), not a rejection.
UNFAMILIAR = "unfamiliar"


def classify_photo(
    model: ServedModel, data: bytes, *, file: str, limits: Limits, catalog: Catalog | None = None
) -> dict[str, Any]:
    """The answer for the photo `data` named `file`, as a JSON-ready dict.

    Three kinds of answer: a fruit (`answered` true, `label`), "not sure which" (`answered` false, `reason` None:
    familiar, but no label confident enough), and "not something I know" (`reason` "unfamiliar", with `detail`: far
    from every fruit learnt). Keys: `file`, `answered`, `label` (None unless answered), `confidence`, `top` (up to 3
    `[label, p]`), `distance` (to the nearest fruit learnt), `model_version`, `reason` (None, "unfamiliar", or why
    the photo was rejected, with `detail`) and, when the team wrote one for the answered label, `catalog`.
    """
    # One decode: the picture validation accepted the photo on is the one the model sees.
    verdict, decoded = validate_and_decode(data, limits=limits, filename=file, digest=False)  # no key by hash
    if decoded is None:
        assert verdict.reason is not None
        return rejected(file, verdict.reason.value, verdict.detail, model_version=model.model_version)
    features = model.featurizer(model_input(decoded.picture)[np.newaxis])[0]
    found = answer(model.classifier, features)
    result: dict[str, Any] = {
        "file": file,
        "answered": found.answered,
        "label": found.label,
        "confidence": round(found.confidence, 6),
        "top": [[label, round(p, 6)] for label, p in found.top],
        "model_version": model.model_version,
        "reason": None,
        "distance": round(found.distance, 4),
    }
    if found.unfamiliar:
        limit = model.classifier.familiar_distance
        result["reason"] = UNFAMILIAR
        result["detail"] = (
            f"expected a photo like the fruits learnt (distance at most {limit:.4g} to the nearest), got one at "
            f"{found.distance:.4g}: not something this classifier knows"
        )
    if found.label is not None and catalog is not None and (entry := catalog(found.label)) is not None:
        result["catalog"] = entry
    return result


def rejected(file: str, reason: str, detail: str, *, model_version: str | None) -> dict[str, Any]:
    """The answer for a photo that was not classified, and why."""
    return {
        "file": file,
        "answered": False,
        "label": None,
        "confidence": None,
        "top": [],
        "model_version": model_version,
        "reason": reason,
        "detail": detail,
    }
