"""Issues 13 and 23's bars: `pomona demo` on two thirds of each sample label in 3 waves with the real weights, then
`pomona classify --model OUT --json` and the local Function URL on the third it never saw, and on 120 photos of
fruits it was never taught. Unseen photos of known labels: >= 90 % answered, >= 99 % of answers right; never-taught
fruits: at most 3 % answered.

Each sample label is 3 rotations of one fruit (r0_, r1_, r2_) of 10 photos. The unseen third is every third photo
by name, from all three; the last third by name is a rotation never shown, a harder case checked on its own."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
from rich.console import Console

from pomona.core.settings import Settings
from pomona.demo.run import run_demo
from pomona.ops.classify import classify_files, model_source
from pomona.testing.samples import bad_uploads


def _split(
    root: Path, sample_dir: Path, unseen_of: Callable[[list[Path]], list[Path]]
) -> tuple[Path, list[Path]]:
    """A folder linking each label's photos but its `unseen_of(sorted photos)`, and those unseen photos."""
    trained = root / "trained"
    unseen: list[Path] = []
    for label_dir in sorted(p for p in sample_dir.iterdir() if p.is_dir()):
        photos = sorted(label_dir.glob("*.jpg"))
        kept_back = unseen_of(photos)
        (trained / label_dir.name).mkdir(parents=True)
        for photo in photos:
            if photo not in kept_back:
                (trained / label_dir.name / photo.name).symlink_to(photo)
        unseen += kept_back
    return trained, unseen


def _demo(root: Path, trained: Path, weights_path: Path) -> tuple[Path, dict[str, Any]]:
    out = root / "out"
    out.mkdir()
    summary = run_demo(
        images=trained, out=out, weights=str(weights_path), batches=3, console=Console(quiet=True)
    )
    return out, summary


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> tuple[Path, list[Path]]:
    """Every third photo of each label (by name) kept back, the rest to train on."""
    return _split(tmp_path_factory.mktemp("mixed"), sample_dir, lambda photos: photos[2::3])


@pytest.fixture(scope="module")
def demo_out(split: tuple[Path, list[Path]], weights_path: Path) -> tuple[Path, dict[str, Any]]:
    return _demo(split[0].parent, split[0], weights_path)


def test_the_holdout_accuracy_reaches_the_bar(demo_out: tuple[Path, dict[str, Any]]) -> None:
    _, summary = demo_out
    holdout = summary["holdout"]
    assert holdout["n"] >= 18
    assert holdout["accuracy"] >= 0.97


def test_photos_the_demo_never_saw_are_answered_right_or_withheld(
    demo_out: tuple[Path, dict[str, Any]], split: tuple[Path, list[Path]]
) -> None:
    out, _ = demo_out
    _, unseen = split

    answers = _classify(out, unseen)

    assert [a["file"] for a in answers] == list(map(str, unseen))
    assert {"file", "answered", "label", "confidence", "top", "model_version", "reason"} <= set(answers[0])
    answered = [a for a in answers if a["answered"]]
    right = [a for a in answered if a["label"] == Path(a["file"]).parent.name]
    assert len(answered) >= 0.9 * len(unseen)
    assert len(right) >= 0.99 * len(answered)
    # a few unseen photos lie beyond the familiar distance: "not something I know", never a wrong fruit
    assert all(a["reason"] in {None, "unfamiliar"} and len(a["top"]) == 3 for a in answers)
    assert sum(a["reason"] == "unfamiliar" for a in answers) <= 0.08 * len(answers)


def test_a_rotation_never_shown_is_often_not_known_but_never_taken_for_another_fruit(
    tmp_path_factory: pytest.TempPathFactory, sample_dir: Path, weights_path: Path, originals_dir: Path
) -> None:
    # GIVEN a demo on the first two rotations of each fruit (the first two thirds by name)
    root = tmp_path_factory.mktemp("rotation")
    trained, unseen = _split(root, sample_dir, lambda photos: photos[len(photos) * 2 // 3 :])
    out, _ = _demo(root, trained, weights_path)

    # WHEN the app asks about the third rotation, and about fruits never taught
    answers = _classify(out, unseen)
    foreign = _classify(out, sorted(originals_dir.glob("*/*.jpg")))

    # THEN what it answers is right, though it refuses more of a view it never saw as unfamiliar (74 % answered,
    # all right, when measured: README, "Open-set figures"); the never-taught fruits stay unanswered
    answered = [a for a in answers if a["answered"]]
    assert all(a["label"] == Path(a["file"]).parent.name for a in answered)
    assert len(answered) >= 0.6 * len(unseen)
    assert sum(a["answered"] for a in foreign) <= 0.03 * len(foreign)


def test_photos_of_fruits_it_was_never_taught_are_seldom_answered(
    demo_out: tuple[Path, dict[str, Any]], originals_dir: Path
) -> None:
    # GIVEN 120 photos of 6 fruits outside the sample's 18 labels (grape, onion, orange, papaya, peach, plum)
    out, _ = demo_out
    foreign = sorted(originals_dir.glob("*/*.jpg"))

    # WHEN the app asks what they are
    answers = _classify(out, foreign)

    # THEN almost all are "not something I know" (0-1.7 % answered when measured: README, "Open-set figures")
    assert len(answers) == len(foreign) >= 100
    assert sum(a["answered"] for a in answers) <= 0.03 * len(answers)
    assert sum(a["reason"] == "unfamiliar" for a in answers) >= 0.95 * len(answers)


def _classify(out: Path, photos: list[Path]) -> list[dict[str, Any]]:
    """`pomona classify --model OUT --json` on `photos`, as a user runs it: one answer per photo."""
    pomona = Path(sys.executable).with_name("pomona")
    done = subprocess.run(
        [str(pomona), "classify", "--model", str(out), "--json", *map(str, photos)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def endpoint(
    demo_out: tuple[Path, dict[str, Any]],
    deployment: Settings,
    weights_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """The demo's committed models in a deployment's bucket, and the classify handler behind a local URL, its
    POMONA_WEIGHTS the lineage's, as the Lambda image sets it."""
    from pomona.local.up import classify_endpoint

    out, _ = demo_out
    s3 = boto3.client("s3", endpoint_url=deployment.endpoint_url)
    for path in (out / "models").rglob("*"):
        if path.is_file():
            s3.put_object(
                Bucket=deployment.bucket, Key=path.relative_to(out).as_posix(), Body=path.read_bytes()
            )
    monkeypatch.setenv("POMONA_WEIGHTS", str(weights_path))
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    server = classify_endpoint(port=0)
    try:
        yield server.url
    finally:
        server.stop()


def _post(url: str, body: bytes, *, method: str = "POST") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body if method == "POST" else None, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_local_function_url_answers_as_the_cli_does_and_rejects_with_the_reason(
    endpoint: str, demo_out: tuple[Path, dict[str, Any]], split: tuple[Path, list[Path]], weights_path: Path
) -> None:
    out, _ = demo_out
    photos = split[1][:: len(split[1]) // 6]
    settings = Settings.from_env()
    local = list(
        classify_files(photos, model_source(settings, model_dir=out, weights=str(weights_path)), settings)
    )

    served = [_post(f"{endpoint}?{urlencode({'file': str(photo)})}", photo.read_bytes()) for photo in photos]

    assert [status for status, _ in served] == [200] * len(photos)
    assert [answer for _, answer in served] == local  # one core behind both doors: the same answers
    assert all(answer["model_version"].startswith("v3-") for _, answer in served)

    name, body, reason = bad_uploads()[0]
    status, rejected = _post(f"{endpoint}?file={name}", body)
    assert status == 400
    assert (rejected["answered"], rejected["reason"]) == (False, reason.value)

    status, refused = _post(endpoint, b"", method="GET")
    assert status == 405
    assert "expected POST" in refused["error"]


def test_the_catalog_entry_comes_with_the_answer(
    endpoint: str, deployment: Settings, split: tuple[Path, list[Path]]
) -> None:
    _, unseen = split
    photo = unseen[-1]
    entry = {"label": photo.parent.name, "note": "written by the team"}
    boto3.client("s3", endpoint_url=deployment.endpoint_url).put_object(
        Bucket=deployment.bucket,
        Key=f"models/catalog/{photo.parent.name}.json",
        Body=json.dumps(entry).encode(),
    )
    status, answer = _post(endpoint, photo.read_bytes())
    assert status == 200
    assert answer["catalog"] == entry


def test_before_any_commit_the_endpoint_says_there_is_no_model(
    deployment: Settings, monkeypatch: pytest.MonkeyPatch, split: tuple[Path, list[Path]]
) -> None:
    from pomona.local.up import classify_endpoint

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    server = classify_endpoint(port=0)
    try:
        status, body = _post(server.url, split[1][0].read_bytes())
    finally:
        server.stop()
    assert status == 503
    assert "no batch has been committed yet" in body["error"]
