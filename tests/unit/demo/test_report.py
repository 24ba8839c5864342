"""The demo report: plots and report.html from a local folder laid out as the bucket's outputs."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pomona.core.contract import Reason, quarantine_key, sidecar_key
from pomona.core.outputs import features_key, manifest_key, pca_latest_key, pca_prefix
from pomona.demo.report import read_outputs, write_report
from pomona.ml.classifier import LabelStats
from pomona.ml.holdout import Reservoir
from pomona.ml.pca import PcaState, fit_pca, model_to_npz, state_to_npz
from pomona.ml.training import retrain

D = 24  # features are 1280-wide in production; the report does not care
LATEST_BATCH = "20260102T000000Z-bbbbbbbb"  # the batch that wrote the full tree's LATEST PCA version


def _clusters(labels: list[str], *, per_class: int, seed: int) -> tuple[npt.NDArray[np.float32], list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(labels), D)) * 20
    x = np.concatenate([c + rng.standard_normal((per_class, D)) for c in centres]).astype(np.float32)
    return x, [label for label in labels for _ in range(per_class)]


def _write_batch(
    out: Path, batch_id: str, x: npt.NDArray[np.float32], labels: list[str], *, committed: bool = True
) -> str:
    key = features_key("", batch_id, 0)
    n = len(labels)
    table = pa.table(
        {
            "sha256": [f"{batch_id}-{i}".ljust(64, "0") for i in range(n)],
            "key": [f"uploads/{label}/{i}.jpg" for i, label in enumerate(labels)],
            "label": labels,
            "version_id": ["v1"] * n,
            "batch_id": [batch_id] * n,
            "pca_version": pa.array([1] * n, pa.int32()),
            "features": pa.array(list(x), pa.list_(pa.float32())),
        }
    )
    (out / key).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / key)
    if committed:
        manifest = {"batch_id": batch_id, "files": {"features": [key], "projections": []}}
        (out / manifest_key("", batch_id)).parent.mkdir(parents=True)
        (out / manifest_key("", batch_id)).write_text(json.dumps(manifest))
    return key


def _write_pca(
    out: Path, version: int, batch_id: str, x: npt.NDArray[np.float32], labels: list[str], **fit: Any
) -> None:
    state = PcaState.from_rows(x)
    model = fit_pca(state, **fit)
    folder = out / pca_prefix("", version, batch_id)
    folder.mkdir(parents=True)
    (folder / "model.npz").write_bytes(model_to_npz(model))
    (folder / "state.npz").write_bytes(state_to_npz(state))
    (folder / "quality.json").write_text(json.dumps(_evaluation(x, labels)))
    (out / pca_latest_key("")).write_text(json.dumps({"version": version, "batch_id": batch_id}))


def _evaluation(x: npt.NDArray[np.float32], labels: list[str]) -> dict[str, Any]:
    """quality.json as the job writes it: a classifier trained on all rows but every sixth, scored on those."""
    held = np.arange(len(labels)) % 6 == 0
    y = np.asarray(labels)
    training = LabelStats.from_rows(x[~held], y[~held].tolist())
    holdout = Reservoir.from_rows([f"{i:064x}" for i in np.flatnonzero(held)], y[held].tolist(), x[held])
    return retrain(training, holdout, gain=1.0, loss=5.0).evaluation


def _write_sidecar(out: Path, reason: Reason, key: str, **extra: Any) -> None:
    path = out / sidecar_key(
        quarantine_key(reason, key, version_id=extra.get("version_id"), quarantine_prefix="quarantine/")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"reason": reason.value, "stage": "ingest", "detail": "expected …, got …", "original_key": key}
            | extra
        )
    )


def _summary(**changes: Any) -> dict[str, Any]:
    return {
        "uploaded": 70,
        "accepted": 66,
        "quarantined": {"corrupt": 1},
        "featurized": 65,
        "failed": {"decode_failed": 1},
        "duplicates": 0,
        "pca_versions": [1, 2],
        "k": 3,
        "explained_variance": 0.97,
        "variance_target": 0.95,
        "throughput": {"upload": 120.5, "ingest": 40.2, "featurize": 12.3},
        "weights_id": "random-0",
        "backend": "litert",
        "weights_note": "random weights: features carry <no> meaning & that's expected",
        "holdout": {
            "accuracy": 0.5,
            "macro_f1": 0.5,
            "n": 2,
            "net_revenue_per_1000": -99.0,
            "best_threshold": 0.1,
        },
    } | changes


@pytest.fixture
def full_tree(tmp_path: Path) -> Path:
    """Two committed batches, one uncommitted, PCA version 2 as LATEST, two quarantined images."""
    out = tmp_path / "out"
    # A `$` pair that is not valid mathtext: drawn as is, it must not break the figure.
    labels = ["Apple", "Banana", "Cherry", "Lime $\\frac$", *(f"Fruit {i}" for i in range(8))]
    x, y = _clusters(labels, per_class=6, seed=0)
    _write_batch(out, "20260101T000000Z-aaaaaaaa", x[:36], y[:36])
    _write_batch(out, LATEST_BATCH, x[36:], y[36:])
    ghost_x, ghost_y = _clusters(["Ghost"], per_class=5, seed=1)
    _write_batch(out, "20260103T000000Z-cccccccc", ghost_x, ghost_y, committed=False)
    _write_pca(out, 2, LATEST_BATCH, x, y, n_components=3)
    _write_sidecar(out, Reason.CORRUPT, "uploads/Apple/<b>bad</b>.jpg")
    _write_sidecar(out, Reason.DECODE_FAILED, "uploads/Pear/odd.jpg", stage="featurize")
    return out


def _images(page: Path) -> list[Path]:
    sources = re.findall(r'<img src="([^"]+)"', page.read_text())
    return [page.parent / src for src in sources]


def _assert_readable_pngs(page: Path) -> list[Path]:
    images = _images(page)
    for path in images:
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width >= 300
            assert image.height >= 100
    return images


def test_full_report_draws_every_figure(full_tree: Path) -> None:
    # WHEN the report is written for a folder with committed batches, a PCA and rejections
    page = write_report(full_tree, _summary())

    # THEN it sits at the root, and references seven PNGs under report/ that all open
    assert page == full_tree / "report.html"
    images = _assert_readable_pngs(page)
    assert sorted(p.name for p in images) == sorted(
        f"{name}.png"
        for name in ("variance", "pca_scatter", "labels", "rejections", "throughput", "revenue", "confusion")
    )
    assert all(p.parent == full_tree / "report" for p in images)
    text = page.read_text()
    assert "72 images in 2 committed batch(es)" in text
    assert "each right identification earns 1, each wrong one costs 5" in text
    assert "a withheld answer costs nothing" in text


def test_the_business_metric_is_the_classifier_on_the_holdout(full_tree: Path) -> None:
    # GIVEN LATEST's quality.json: the classifier's evaluation on its held-out images
    quality = json.loads((full_tree / pca_prefix("", 2, LATEST_BATCH) / "quality.json").read_text())

    # WHEN the report is written
    text = write_report(full_tree, _summary()).read_text()

    # THEN its figures are quality.json's (not the summary's), explained as held out and never trained on
    metric = text[text.index("<h2>Business metric</h2>") : text.index("<h2>Figures</h2>")]
    assert f'<th>held-out images</th><td class="num">{quality["n"]}</td>' in metric
    assert f'<td class="num">{quality["accuracy"]:.1%}</td>' in metric
    assert f'<td class="num">{quality["best_threshold"]:.4g}</td>' in metric
    assert f'<td class="num">{quality["net_revenue_per_1000"]:,.1f}</td>' in metric
    assert "-99.0" not in metric
    assert "a fixed tenth of all images, chosen by their sha256 alone, that it is never trained on" in metric
    # AND every label is recalled in full here, which it says in a line rather than a table
    assert set(quality["per_label_recall"].values()) == {1.0}
    assert "Every one of the 12 label(s) is recalled in full on the holdout." in metric
    # AND the curve and the confusion matrix are drawn from it; no probe is left anywhere
    assert "Confusion on the holdout" in text
    assert "probe" not in text.lower()


def test_labels_recalled_worst_are_listed_first(full_tree: Path) -> None:
    # GIVEN a holdout on which some labels are recalled less than others
    path = full_tree / pca_prefix("", 2, LATEST_BATCH) / "quality.json"
    recall = {"Apple": 1.0, "Banana": 0.5, "Cherry": 0.75, "Lime <x>": 0.5}
    path.write_text(json.dumps(json.loads(path.read_text()) | {"per_label_recall": recall}))

    # WHEN the report is written
    text = write_report(full_tree, _summary()).read_text()

    # THEN each label's recall is listed, worst first, ties by name
    assert "<h3>Recall per label</h3>" in text
    listed = re.findall(r'<tr><td>([^<]+)</td><td class="num">([^<]+)</td></tr>', text)
    assert [(html.unescape(label), share) for label, share in listed] == [
        ("Banana", "50.0%"),
        ("Lime <x>", "50.0%"),
        ("Cherry", "75.0%"),
        ("Apple", "100.0%"),
    ]


def test_page_is_self_contained(full_tree: Path) -> None:
    text = write_report(full_tree, _summary()).read_text()

    assert "<script" not in text
    assert "http" not in text
    assert "<link" not in text
    assert all(not src.startswith("/") for src in re.findall(r'src="([^"]+)"', text))


def test_text_from_the_summary_and_bucket_is_escaped(full_tree: Path) -> None:
    text = write_report(full_tree, _summary()).read_text()

    assert "random weights: features carry &lt;no&gt; meaning &amp; that" in text
    assert "<no>" not in text
    assert "uploads/Apple/&lt;b&gt;bad&lt;/b&gt;.jpg" in text
    assert "<b>bad</b>" not in text


def test_a_label_that_is_markup_is_shown_as_text(full_tree: Path) -> None:
    # GIVEN a label that is a script tag, recalled on the holdout and in a quarantined upload's key
    label = "<script>alert(1)</script>"
    path = full_tree / pca_prefix("", 2, LATEST_BATCH) / "quality.json"
    path.write_text(
        json.dumps(json.loads(path.read_text()) | {"per_label_recall": {label: 0.5, "Apple": 1.0}})
    )
    _write_sidecar(full_tree, Reason.CORRUPT, f"uploads/{label}/a.jpg")

    # WHEN the report is written
    text = write_report(full_tree, _summary()).read_text()

    # THEN the page shows the tag as text, in the recall table and the rejections, and runs nothing
    assert "<script" not in text
    assert f'<tr><td>{html.escape(label)}</td><td class="num">50.0%</td></tr>' in text
    assert f"<code>uploads/{html.escape(label)}/a.jpg</code>" in text


def test_only_committed_batches_are_read(full_tree: Path) -> None:
    outputs = read_outputs(full_tree)

    assert outputs.batch_ids == ["20260101T000000Z-aaaaaaaa", "20260102T000000Z-bbbbbbbb"]
    assert "Ghost" not in outputs.labels
    assert outputs.features.shape == (72, D)
    assert outputs.pca_version == 2
    assert outputs.model is not None
    assert outputs.model.n_components == 3
    assert sorted((r["stage"], r["reason"]) for r in outputs.rejections) == [
        ("featurize", "decode_failed"),
        ("ingest", "corrupt"),
    ]


def test_part_file_missing_from_the_mirror_is_reported(full_tree: Path) -> None:
    # GIVEN a committed batch whose part file did not make it into the local mirror
    missing = full_tree / features_key("", "20260102T000000Z-bbbbbbbb", 0)
    missing.unlink()

    # WHEN the report is written
    text = write_report(full_tree, _summary()).read_text()

    # THEN the other batch is drawn and the page says what is missing
    assert read_outputs(full_tree).features.shape == (36, D)
    assert "1 part file(s) named by committed manifests are missing" in text
    _assert_readable_pngs(full_tree / "report.html")


def test_empty_folder_says_nothing_is_committed(tmp_path: Path) -> None:
    # GIVEN an outputs folder the job never committed to, and a run that featurized nothing
    out = tmp_path / "out"
    out.mkdir()
    summary = _summary(
        accepted=0, featurized=0, quarantined={}, failed={}, pca_versions=[], holdout=None, weights_note=None
    )

    # WHEN the report is written
    page = write_report(out, summary)

    # THEN it says so, and what it draws (the empty rejections, the throughput) still opens
    text = page.read_text()
    assert "No committed batches yet" in text
    assert "No PCA version is committed yet." in text
    assert "No holdout evaluation: no committed evaluation." in text
    assert 'class="banner"' not in text
    assert sorted(p.name for p in _assert_readable_pngs(page)) == ["rejections.png", "throughput.png"]


def test_single_label_and_one_component(tmp_path: Path) -> None:
    # GIVEN one label only, and a PCA that keeps a single component
    out = tmp_path / "out"
    x, labels = _clusters(["Apple"], per_class=12, seed=2)
    _write_batch(out, "20260101T000000Z-aaaaaaaa", x, labels)
    _write_pca(out, 1, "20260101T000000Z-aaaaaaaa", x, labels, n_components=1)

    # WHEN the report is written
    page = write_report(out, _summary(k=1, holdout={"skipped": "the summary's reason"}))

    # THEN the scatter is drawn on one axis, and quality.json's reason for no classifier replaces the curve
    names = {p.name for p in _assert_readable_pngs(page)}
    assert {"variance.png", "pca_scatter.png", "labels.png"} <= names
    assert "revenue.png" not in names
    text = page.read_text()
    assert "single component (k = 1)" in text
    assert "No holdout evaluation: expected at least 2 labels with 5 or more images" in text
    assert "confusion.png" not in names
    assert "No confusion matrix: expected at least 2 labels" in text


@pytest.mark.parametrize(
    ("listed", "found"),
    [
        pytest.param("features/batch_id=b/part-00000.parquet", True, id="bucket-root"),
        pytest.param("outputs/v2/features/batch_id=b/part-00000.parquet", True, id="under-output-prefix"),
        pytest.param("features/batch_id=b/../../../outside.parquet", False, id="escapes-the-folder"),
        pytest.param("projections/batch_id=b/part-00000.parquet", False, id="not-a-features-file"),
    ],
)
def test_manifest_keys_map_into_the_folder(tmp_path: Path, listed: str, found: bool) -> None:
    # GIVEN a part file at features/batch_id=b/, and outside.parquet beside the folder
    out = tmp_path / "out"
    x, labels = _clusters(["Apple"], per_class=3, seed=4)
    key = _write_batch(out, "b", x, labels)
    (tmp_path / "outside.parquet").write_bytes((out / key).read_bytes())
    # WHEN the manifest names the part file by `listed`
    (out / manifest_key("", "b")).write_text(json.dumps({"batch_id": "b", "files": {"features": [listed]}}))

    outputs = read_outputs(out)

    # THEN it is read when it maps into the folder, and reported missing otherwise
    assert len(outputs.labels) == (3 if found else 0)
    assert outputs.missing_files == ([] if found else [listed])
