"""`pomona bench featurize` says, per model and per process, where the CPU of an image went (the emulator runs
apart), and how close each model's features are to LiteRT float32's."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    if runs("openvino", "bf16"):
        assert keys <= set(openvino)
        assert 0.9 < openvino["agreement"]["min_cosine"] <= openvino["agreement"]["median_cosine"] < 1.0
    else:  # a CPU without bf16 says so instead of measuring
        assert openvino["skipped"] == "this CPU does not run bf16"
