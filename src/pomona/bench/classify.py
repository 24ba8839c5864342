"""`pomona bench classify`: what one photo costs the serving core and the local Function URL, warm and cold, and
the memory it takes.

The core is measured in a fresh child process (this module run with `python -m`), as a new Lambda container
would start: `cold_start_s` runs from launching the child to its first answer (interpreter, imports, the
classifier and the LiteRT model loaded, one photo answered), then each photo is answered again and again, warm:
a 100×100 JPEG `repeats` times and a 4000×3000 JPEG `repeats // 7` times (at least 5), through `classify_photo`
(validation with its one decode, features, answer), in turns with the large photo's 1/8-scale decode.
`large_decode_share` is the validation-and-decode's share of the large photo's answer, and `peak_rss_mb` the
child's VmHWM. The door the app uses is then timed as the app meets it (`pomona.bench.function_url`: keys `url_…`).
Each door's large-photo times are also given over their floor (`…_over_floor`): the 1/8-scale decode plus the
small photo's answer through the same door. The converted `.tflite` file is prepared before the child starts, as
the image bakes it in.

Without `--model`, a classifier is trained on synthetic fruit with the given weights (default: random) and laid
out as the job commits it: latency does not depend on what the weights learnt, only on the network they fill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pomona.bench import function_url
from pomona.bench.floors import eighth_scale_decode, p50, percentiles, timed_ms, timed_side_by_side_ms
from pomona.core.settings import Settings
from pomona.testing.samples import SYNTHETIC_LABELS, fruit_image, large_jpeg

TRAINING_PER_LABEL = 8
_TIMES = (
    "small_p50_ms",
    "small_p99_ms",
    "large_p50_ms",
    "large_p99_ms",
    "large_decode_p50_ms",
    "eighth_scale_decode_p50_ms",
    "eighth_scale_decode_p99_ms",
)


def over_floor(door: dict[str, Any], prefix: str) -> dict[str, float]:
    """The large photo's answer time through one door (its keys start with `prefix`) over its floor: the 1/8-scale
    decode timed in turns with it plus the small photo's answer through the same door, at p50 and at p99."""
    ratios = {}
    for q in ("p50", "p99"):
        floor = door[f"{prefix}eighth_scale_decode_{q}_ms"] + door[f"{prefix}small_{q}_ms"]
        ratios[f"{prefix}large_{q}_floor_ms"] = round(floor, 2)
        ratios[f"{prefix}large_{q}_over_floor"] = round(door[f"{prefix}large_{q}_ms"] / floor, 3)
    return ratios


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
        url = function_url.measure(
            folder,
            small.read_bytes(),
            large.read_bytes(),
            repeats=repeats,
            weights=spec,
            env={"POMONA_CACHE_DIR": str(settings.model_cache_dir)},
        )
    return {
        **{key: child[key] for key in _TIMES},
        **over_floor(child, ""),
        "large_decode_share": round(child["large_decode_p50_ms"] / child["large_p50_ms"], 3),
        **url,
        **over_floor(url, "url_"),
        "cold_start_s": round(child["first_answer_at"] - launched, 3),
        "peak_rss_mb": child["peak_rss_mb"],
        "threads": child["threads"],
        "model_version": child["model_version"],
        "weights_id": served.lineage.weights_id,
        "backend": served.lineage.backend,
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
    from pomona.core.contract import utc_now
    from pomona.core.outputs import (
        CLASSIFIER_FILE,
        METADATA_FILE,
        FolderFiles,
        Latest,
        Lineage,
        VersionMetadata,
        pca_latest_key,
        read_latest,
    )
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
    pca = fit_pca(stats.total)
    classifier = fit_classifier(stats, pca)
    committed = Latest(version, batch_id)
    metadata = VersionMetadata(
        version=version,
        batch_id=batch_id,
        parent=read_latest(FolderFiles(root).read, settings.output_prefix),  # what this version replaces
        lineage=Lineage(weights_id=weights_id or featurizer.weights_id, backend=backend, precision=precision),
        weights=settings.weights,
        n_seen=pca.n_seen,
        k=pca.n_components,
        explained_variance_ratio=tuple(pca.explained_variance_ratio.tolist()),
        created_at=utc_now(),
        manifest={"batch_id": batch_id, "pca_version": version, "files": {"features": [], "projections": []}},
    )
    folder = root / committed.folder(settings.output_prefix)
    folder.mkdir(parents=True)
    (folder / CLASSIFIER_FILE).write_bytes(classifier_to_npz(classifier))
    (folder / METADATA_FILE).write_bytes(json_bytes(metadata.to_json()))
    (root / pca_latest_key(settings.output_prefix)).write_bytes(json_bytes(committed.to_json()))
    return root


def _measure_in_child(
    model: str, small_path: str, large_path: str, repeats: str, weights: str
) -> dict[str, Any]:
    """Load, answer once (the cold start ends there), then time warm answers; this process's peak RSS."""
    from pomona.bench.validate import _peak_mb
    from pomona.classify.answering import UNFAMILIAR, classify_photo
    from pomona.classify.model import LatestModel
    from pomona.core.outputs import FolderFiles
    from pomona.validation.checks import Limits, validate_and_decode

    settings = Settings.from_env()
    small, large = Path(small_path).read_bytes(), Path(large_path).read_bytes()
    threads = os.cpu_count() or 1
    # As the Lambda's handler builds it.
    source = LatestModel(FolderFiles(Path(model)), settings, weights=weights or None, num_threads=threads)
    limits = Limits.from_settings(settings)
    first = classify_photo(source.get(), small, file="small.jpg", limits=limits)
    first_answer_at = time.time()
    if first["reason"] not in {None, UNFAMILIAR}:  # "not something I know" is an answer, and costs the same
        raise RuntimeError(
            f"expected the benchmark photo to be accepted, got {first['reason']}: {first['detail']}"
        )

    def warm(data: bytes, times: int) -> list[float]:
        return timed_ms(lambda: classify_photo(source.get(), data, file="photo.jpg", limits=limits), times)

    large_repeats = max(5, int(repeats) // 7)
    small_ms = warm(small, int(repeats))
    large_ms, floor_ms = timed_side_by_side_ms(
        lambda: classify_photo(source.get(), large, file="photo.jpg", limits=limits),
        lambda: eighth_scale_decode(large),
        large_repeats,
    )
    decode_ms = timed_ms(lambda: validate_and_decode(large, limits=limits, digest=False), large_repeats)
    return {
        **percentiles(small=small_ms, large=large_ms, eighth_scale_decode=floor_ms),
        "large_decode_p50_ms": round(p50(decode_ms), 2),
        "peak_rss_mb": round(_peak_mb(), 1),
        "first_answer_at": first_answer_at,
        "threads": threads,
        "model_version": source.get().model_version,
    }


if __name__ == "__main__":  # the child process of `run`; its last stdout line is the parent's input
    print(json.dumps(_measure_in_child(*sys.argv[1:])))
