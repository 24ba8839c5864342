"""The serving core on a folder laid out as the bucket: answers, rejections with their reason, the catalog, the
lineage check, and reloading when LATEST moves (no sooner than the check interval)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pomona.bench.classify import write_model
from pomona.classify.answering import classify_photo
from pomona.classify.handler import respond
from pomona.classify.model import LatestModel, ModelUnavailableError
from pomona.core.contract import Reason
from pomona.core.outputs import CLASSIFIER_FILE, FolderFiles
from pomona.core.settings import Settings
from pomona.ml.classifier import classifier_to_npz, load_classifier
from pomona.testing.samples import bad_uploads, fruit_image
from pomona.validation.checks import Limits

LABELS = ("Apple", "Banana", "Lemon")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(model_cache: Path) -> Settings:
    return Settings(weights="random", backend="litert", cache_dir=str(model_cache), model_check_seconds=60)


def _commit(
    root: Path, settings: Settings, *, version: int, batch_id: str, weights_id: str | None = None
) -> None:
    """A committed version with a classifier trained on synthetic fruit, as the job lays it out; LATEST moved."""
    write_model(root, settings, labels=LABELS, version=version, batch_id=batch_id, weights_id=weights_id)


def test_a_photo_gets_an_answer_from_the_committed_classifier(tmp_path: Path, settings: Settings) -> None:
    _commit(tmp_path, settings, version=1, batch_id="b1")
    served = LatestModel(FolderFiles(tmp_path), settings).get()

    result = classify_photo(served, fruit_image("Banana", 99), file="banana.jpg", limits=Limits())

    assert result["model_version"] == "v1-b1"
    assert result["reason"] is None
    assert len(result["top"]) == 3
    assert {label for label, _ in result["top"]} == set(LABELS)
    assert sum(p for _, p in result["top"]) == pytest.approx(1.0, abs=1e-5)
    assert result["confidence"] == result["top"][0][1]
    assert result["answered"] == (result["confidence"] >= served.classifier.threshold)
    assert result["label"] == (result["top"][0][0] if result["answered"] else None)


@pytest.mark.parametrize(
    ("name", "body", "reason"), bad_uploads(), ids=[name for name, _, _ in bad_uploads()]
)
def test_a_photo_ingestion_would_reject_gets_the_same_reason(
    tmp_path: Path, settings: Settings, name: str, body: bytes, reason: Reason
) -> None:
    _commit(tmp_path, settings, version=1, batch_id="b1")
    served = LatestModel(FolderFiles(tmp_path), settings).get()

    result = classify_photo(served, body, file=name, limits=Limits())

    assert (result["answered"], result["label"], result["top"]) == (False, None, [])
    assert result["reason"] == reason.value
    assert result["detail"]


def test_the_catalog_entry_of_the_answered_label_comes_with_the_answer(
    tmp_path: Path, settings: Settings
) -> None:
    _commit(tmp_path, settings, version=1, batch_id="b1")
    model = LatestModel(FolderFiles(tmp_path), settings)
    served = model.get()
    served = dataclasses.replace(served, classifier=dataclasses.replace(served.classifier, threshold=0.0))
    answered = classify_photo(
        served, fruit_image("Lemon", 7), file="x.jpg", limits=Limits(), catalog=model.catalog
    )
    entry = {"name": answered["label"], "season": "written by the team"}
    (tmp_path / "models" / "catalog").mkdir()
    (tmp_path / "models" / "catalog" / f"{answered['label']}.json").write_text(json.dumps(entry))
    model._catalog.clear()

    again = classify_photo(
        served, fruit_image("Lemon", 7), file="x.jpg", limits=Limits(), catalog=model.catalog
    )

    assert "catalog" not in answered
    assert again["catalog"] == entry


def test_below_the_threshold_the_answer_is_not_sure_with_its_best_guesses(
    tmp_path: Path, settings: Settings
) -> None:
    _commit(tmp_path, settings, version=1, batch_id="b1")
    served = LatestModel(FolderFiles(tmp_path), settings).get()
    unsure = dataclasses.replace(served, classifier=dataclasses.replace(served.classifier, threshold=1.01))

    result = classify_photo(unsure, fruit_image("Apple", 3), file="apple.jpg", limits=Limits())

    assert (result["answered"], result["label"], result["reason"]) == (False, None, None)
    assert len(result["top"]) == 3
    assert result["confidence"] == result["top"][0][1] < 1.01


def test_a_loaded_model_keeps_answering_when_a_new_commit_cannot_be_loaded(
    tmp_path: Path, settings: Settings
) -> None:
    clock = Clock()
    _commit(tmp_path, settings, version=1, batch_id="b1")
    model = LatestModel(FolderFiles(tmp_path), settings, clock=clock)
    first = model.get()
    _commit(
        tmp_path, settings, version=2, batch_id="b2", weights_id="sha256:0123456789abcdef"
    )  # not loadable

    clock.now = 60.0
    assert model.get() is first
    clock.now = 61.0
    assert model.get() is first  # the next look waits for the next interval, not every request


def test_an_unreadable_catalog_entry_is_left_out_not_an_error(tmp_path: Path, settings: Settings) -> None:
    _commit(tmp_path, settings, version=1, batch_id="b1")
    (tmp_path / "models" / "catalog").mkdir()
    (tmp_path / "models" / "catalog" / "Apple.json").write_text("{not json")
    (tmp_path / "models" / "catalog" / "Lemon.json").write_text('["a list"]')
    model = LatestModel(FolderFiles(tmp_path), settings)

    assert (model.catalog("Apple"), model.catalog("Lemon"), model.catalog("Banana")) == (None, None, None)


def test_before_any_commit_there_is_no_model_and_it_says_so(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(ModelUnavailableError, match="found no models/pca/LATEST"):
        LatestModel(FolderFiles(tmp_path), settings).get()


def test_weights_other_than_the_lineages_are_refused(tmp_path: Path, settings: Settings) -> None:
    _commit(tmp_path, settings, version=1, batch_id="b1", weights_id="sha256:0123456789abcdef")
    with pytest.raises(ModelUnavailableError, match=r"expected weights with id sha256:0123456789abcdef"):
        LatestModel(FolderFiles(tmp_path), settings).get()


def test_a_moved_latest_is_picked_up_at_the_next_check_not_before(tmp_path: Path, settings: Settings) -> None:
    clock = Clock()
    _commit(tmp_path, settings, version=1, batch_id="b1")
    model = LatestModel(FolderFiles(tmp_path), settings, clock=clock)
    first = model.get()

    _commit(tmp_path, settings, version=2, batch_id="b2")
    clock.now = 59.0
    assert model.get() is first
    clock.now = 60.0
    second = model.get()

    assert (first.model_version, second.model_version) == ("v1-b1", "v2-b2")
    assert second.featurizer is first.featurizer  # memoised per process: a reload reads the classifier only
    clock.now = 130.0
    assert model.get() is second  # LATEST unchanged: nothing reloaded


def test_a_photo_far_from_every_fruit_learnt_is_answered_as_not_something_it_knows(
    tmp_path: Path, settings: Settings
) -> None:
    # GIVEN a committed classifier, and a photo of nothing it was taught: noise
    _commit(tmp_path, settings, version=1, batch_id="b1")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, "JPEG")
    served = LatestModel(FolderFiles(tmp_path), settings).get()
    distance = classify_photo(served, buffer.getvalue(), file="noise.jpg", limits=Limits())["distance"]
    fruit = classify_photo(served, fruit_image("Banana", 7), file="banana.jpg", limits=Limits())["distance"]
    assert distance > fruit  # noise lies farther from every fruit than a fruit does

    # WHEN the committed familiar distance lies between the two (as the job sets it from its holdout)
    folder = next(tmp_path.glob("models/pca/v1-b1"))
    classifier = load_classifier((folder / CLASSIFIER_FILE).read_bytes())
    limit = (distance + fruit) / 2
    (folder / CLASSIFIER_FILE).write_bytes(
        classifier_to_npz(dataclasses.replace(classifier, familiar_distance=limit))
    )
    model = LatestModel(FolderFiles(tmp_path), settings)

    # THEN every door's core says "not something I know" for the noise, with a 200 and why; the fruit is not refused
    status, answer = respond(model, Limits(), method="POST", body=buffer.getvalue(), file="noise.jpg")
    assert status == 200
    assert (answer["answered"], answer["label"], answer["reason"]) == (False, None, "unfamiliar")
    assert answer["detail"].startswith(
        f"expected a photo like the fruits learnt (distance at most {limit:.4g}"
    )
    status, answer = respond(model, Limits(), method="POST", body=fruit_image("Banana", 7), file="banana.jpg")
    assert (status, answer["reason"]) == (200, None)
