"""`pomona bench classify`: what one photo costs the serving core, warm and cold, and the memory it takes.

Everything is measured in a fresh child process (this module run with `python -m`), as a new Lambda container
would start: `cold_start_s` runs from launching the child to its first answer (interpreter, imports, the
classifier and the LiteRT model loaded, one photo answered), then each photo is answered again and again, warm:
a 100×100 JPEG `repeats` times and a 4000×3000 JPEG `repeats // 7` times (at least 5), through `classify_photo` (validation,
decode, features, answer). `peak_rss_mb` is the child's VmHWM. The converted `.tflite` file is prepared before
the child starts, as the image bakes it in.

Without `--model`, a classifier is trained on synthetic fruit with the given weights (default: random) and laid
out as the job commits it: latency does not depend on what the weights learnt, only on the network they fill.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pomona.core.settings import Settings
from pomona.testing.samples import SYNTHETIC_LABELS, fruit_image, large_jpeg

TRAINING_PER_LABEL = 8


def run(
    *, model: Path | None, weights: str | None = None, cache_dir: Path | None = None, repeats: int = 200
) -> dict[str, Any]:
    """Prepare the model files, then measure in a child process; the child's figures as one dict.

    `weights`: with `model`, the lineage's recorded ones by default; without, "random" by default."""
    from pomona.classify.model import LatestModel
    from pomona.core.outputs import FolderFiles

    settings = Settings.from_env(None, **({"cache_dir": str(cache_dir)} if cache_dir else {}))
    spec = weights or (None if model else "random")
    with tempfile.TemporaryDirectory() as tmp:
        folder = model or write_model(Path(tmp) / "model", settings.replace(weights=spec))
        # Converts the .tflite file now, as the image's build does: the child's cold start loads it.
        served = LatestModel(FolderFiles(folder), settings, weights=spec).get()
        small, large = Path(tmp) / "small.jpg", Path(tmp) / "large.jpg"
        small.write_bytes(fruit_image("Apple Red", 0))
        large.write_bytes(large_jpeg())
        env = {**os.environ, "POMONA_CACHE_DIR": str(settings.model_cache_dir)}
        args = [
            sys.executable,
            "-m",
            "pomona.bench.classify",
            str(folder),
            str(small),
            str(large),
            str(repeats),
        ]
        launched = time.time()
        done = subprocess.run(
            [*args, spec or ""], capture_output=True, text=True, check=False, timeout=900, env=env
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"expected the bench's child to exit 0, got {done.returncode}: {done.stderr[-2000:]}"
            )
        child: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "small_p50_ms": child["small_p50_ms"],
        "small_p99_ms": child["small_p99_ms"],
        "large_p50_ms": child["large_p50_ms"],
        "large_p99_ms": child["large_p99_ms"],
        "cold_start_s": round(child["first_answer_at"] - launched, 3),
        "peak_rss_mb": child["peak_rss_mb"],
        "threads": child["threads"],
        "model_version": child["model_version"],
        "weights_id": served.weights_id,
        "backend": served.backend,
        "model": str(model) if model else "trained on synthetic fruit",
    }


def write_model(
    root: Path,
    settings: Settings,
    *,
    labels: Sequence[str] = SYNTHETIC_LABELS,
    version: int = 1,
    batch_id: str = "bench",
    weights_id: str | None = None,
) -> Path:
    """A committed `version` under `root`, as the job lays it out: its folder's classifier (trained on synthetic
    fruit of `labels`) and metadata, and LATEST moved to it. `weights_id` overrides the lineage's recorded id."""
    from pomona.core.aws import json_bytes
    from pomona.core.outputs import CLASSIFIER_FILE, METADATA_FILE, pca_latest_key, pca_prefix
    from pomona.ml.backends import choose_model
    from pomona.ml.classifier import LabelStats, classifier_to_npz, fit_classifier
    from pomona.ml.featurizer import get_featurizer
    from pomona.ml.pca import fit_pca
    from pomona.ml.preprocess import preprocess_batch

    backend, precision = choose_model(settings.backend, settings.precision)  # a new lineage
    featurizer = get_featurizer(
        settings.weights, backend, precision=precision, cache_dir=settings.model_cache_dir
    )
    rows = [label for label in labels for _ in range(TRAINING_PER_LABEL)]
    pixels, _ = preprocess_batch([fruit_image(label, i) for i, label in enumerate(rows)])
    stats = LabelStats.from_rows(featurizer(pixels), rows)
    classifier = fit_classifier(stats, fit_pca(stats.total))
    folder = root / pca_prefix(settings.output_prefix, version, batch_id)
    folder.mkdir(parents=True)
    (folder / CLASSIFIER_FILE).write_bytes(classifier_to_npz(classifier))
    metadata = {
        "backend": backend,
        "precision": precision,
        "weights": settings.weights,
        "weights_id": weights_id or featurizer.weights_id,
    }
    (folder / METADATA_FILE).write_bytes(json_bytes(metadata))
    (root / pca_latest_key(settings.output_prefix)).write_bytes(
        json_bytes({"version": version, "batch_id": batch_id})
    )
    return root


def _measure_in_child(
    model: str, small_path: str, large_path: str, repeats: str, weights: str
) -> dict[str, Any]:
    """Load, answer once (the cold start ends there), then time warm answers; this process's peak RSS."""
    from pomona.bench.validate import _p99, _peak_mb
    from pomona.classify.answering import classify_photo
    from pomona.classify.model import LatestModel
    from pomona.core.outputs import FolderFiles
    from pomona.validation.checks import Limits

    settings = Settings.from_env()
    small, large = Path(small_path).read_bytes(), Path(large_path).read_bytes()
    threads = os.cpu_count() or 1
    # As the Lambda's handler builds it.
    source = LatestModel(FolderFiles(Path(model)), settings, weights=weights or None, num_threads=threads)
    limits = Limits.from_settings(settings)
    first = classify_photo(source.get(), small, file="small.jpg", limits=limits)
    first_answer_at = time.time()
    if first["reason"] is not None:
        raise RuntimeError(
            f"expected the benchmark photo to be accepted, got {first['reason']}: {first['detail']}"
        )

    def warm(data: bytes, times: int) -> list[float]:
        taken = []
        for _ in range(times):
            start = time.perf_counter()
            classify_photo(source.get(), data, file="photo.jpg", limits=limits)
            taken.append((time.perf_counter() - start) * 1000)
        return taken

    small_ms, large_ms = warm(small, int(repeats)), warm(large, max(5, int(repeats) // 7))
    return {
        "small_p50_ms": round(statistics.median(small_ms), 2),
        "small_p99_ms": round(_p99(small_ms), 2),
        "large_p50_ms": round(statistics.median(large_ms), 2),
        "large_p99_ms": round(_p99(large_ms), 2),
        "peak_rss_mb": round(_peak_mb(), 1),
        "first_answer_at": first_answer_at,
        "threads": threads,
        "model_version": source.get().model_version,
    }


if __name__ == "__main__":  # the child process of `run`; its last stdout line is the parent's input
    print(json.dumps(_measure_in_child(*sys.argv[1:])))
