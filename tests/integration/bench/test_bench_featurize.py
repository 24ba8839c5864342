"""`pomona bench featurize` says, per model and per process, where the CPU of an image went (the emulator runs
apart), how close each model's features are to LiteRT float32's, and how the job compares with the seed project's
pattern run on the same images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pomona.bench import seed_pattern
from pomona.bench.featurize import run
from pomona.ml.backends import runs
from pomona.testing.samples import SYNTHETIC_LABELS, fruit_image

pytestmark = pytest.mark.slow


def test_the_job_cpu_is_split_by_process_and_excludes_the_emulator(
    tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POMONA_CACHE_DIR", str(model_cache))
    for label in SYNTHETIC_LABELS[:3]:
        (tmp_path / label).mkdir()
        for i in range(8):
            (tmp_path / label / f"{i}.jpg").write_bytes(fruit_image(label, i))

    result = run(images=tmp_path, weights="random", models=[("litert", "f32")], repeat=2)

    cpu = result["cpu_ms_per_image"]
    assert result["images"] == 48  # each image and its mirror image
    assert (result["backend"], result["precision"]) == ("litert", "f32")
    assert {"bare", "job", "emulator", "driver", "workers"} <= set(cpu)
    assert all(cpu[name] > 0 for name in ("bare", "job", "emulator", "driver", "workers"))
    # the workers do the model's work: more CPU per image than the plain loop's decode and model can't be less
    assert cpu["workers"] > 0.5 * cpu["bare"]

    # LiteRT float32 and OpenVINO bf16 are in every run, each with the same figures as the headline's
    litert, openvino = result["models"]["litert-f32"], result["models"]["openvino-bf16"]
    # the headline's figures are its entry's, at the top level
    assert {key: result[key] for key in litert} == litert
    keys = {
        "bare_img_s",
        "job_img_s",
        "worker_peak_rss_mb",
        "cpu_ms_per_image",
        "holdout_accuracy",
        "agreement",
    }
    assert keys <= set(litert)
    # the seed project's pattern ran once, on the same 48 images, its PCA with the headline job's k
    seed = result["seed_pattern"]
    assert seed["images"] == 48
    assert seed["pca_k"] == litert["pca_k"] >= 1
    assert seed["seed_img_s"] == pytest.approx(48 / seed["seed_s"], abs=0.06)  # rounded to 0.1
    assert seed["spark_startup_s"] > 0
    # the ratio is the headline job's images/s over the seed's
    assert result["job_over_seed"] == round(result["job_img_s"] / seed["seed_img_s"], 2)
    assert result["job_over_seed"] > 0

    if runs("openvino", "bf16"):
        assert keys <= set(openvino)
        assert 0.9 < openvino["agreement"]["min_cosine"] <= openvino["agreement"]["median_cosine"] < 1.0
    else:  # a CPU without bf16 says so instead of measuring
        assert openvino["skipped"] == "this CPU does not run bf16"


def test_the_seed_pattern_projects_real_photos_with_the_real_weights(
    tmp_path: Path, sample_dir: Path, weights_path: Path
) -> None:
    # GIVEN 24 real photos of three fruits, 8 each, and a file beside the label folders that is no photo
    labels = ["Apple Granny Smith 1", "Cherry 3", "Tomato Yellow 1"]
    for label in labels:
        (tmp_path / "images" / label).mkdir(parents=True)
        for photo in sorted((sample_dir / label).glob("*.jpg"))[:8]:
            shutil.copy(photo, tmp_path / "images" / label / photo.name)
    (tmp_path / "images" / "MANIFEST.tsv").write_text("not a photo\n")

    # WHEN the seed's pattern runs on them in its own process
    result = seed_pattern.run(tmp_path / "images", weights=str(weights_path), k=8, out=tmp_path / "out")

    # THEN every photo was featurized and projected, and the rate is the photos over the timed span
    assert result["images"] == 24
    assert result["pca_k"] == 8
    assert result["seed_img_s"] == pytest.approx(24 / result["seed_s"], abs=0.06)  # rounded to 0.1
    parts = ("model_broadcast_s", "featurize_s", "scaler_pca_write_s")
    assert sum(result[part] for part in parts) == pytest.approx(result["seed_s"], abs=0.03)
    assert result["spark_startup_s"] > 0
    assert result["cpu_ms_per_image"] > 0
    projections = pq.read_table(tmp_path / "out").to_pandas()
    assert sorted(projections["label"].unique()) == labels
    points = np.stack([np.asarray(vector["values"]) for vector in projections["projection"]])
    assert points.shape == (24, 8)
    # ImageNet features keep a fruit's photos together: each photo's nearest neighbour is of its fruit
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    nearest = projections["label"].to_numpy()[distances.argmin(axis=1)]
    assert (nearest == projections["label"].to_numpy()).mean() >= 0.9
