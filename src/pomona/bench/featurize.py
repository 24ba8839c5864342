"""`pomona bench featurize`: the featurizer in a plain loop against the whole job on the embedded stack.

For each model (a backend and a precision; LiteRT float32 and OpenVINO bf16 in every run), on the same images:
- bare: decode + preprocess + model in a plain loop (no Spark, no S3), in a fresh process for a clean peak RSS;
  its features' cosine to LiteRT float32's, image by image, is the model's `agreement` (min and median);
- job: upload, ingest through the Lambda handler, then the Spark job on `local[2]` (S3 → features + PCA → S3),
  whose holdout evaluation gives `holdout_accuracy`. Spark start-up (the JVM, and the Python workers with the
  job's imports) is timed apart, and so is the drain of the queue: it measures the embedded SQS (moto), not Pomona.
The embedded stack runs in a process of its own (`pomona.local.stack_process`), so `cpu_ms_per_image` can say
where the CPU went during the run, per process: the emulator, the driver (its Python and its JVM) and the Spark
Python workers; `job` is all but the emulator, and `bare` the plain loop's own.
Peak RSS per Python worker is read for the Spark Python workers while their session is alive.
Then, once per run on the same images, the seed project's pattern (`pomona.bench.seed_pattern`), and the headline
job's images/s over the seed's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pomona.core.settings import AUTO
from pomona.local.upload import labelled_files, upload_files, upload_key

# Measured in every run: the float32 reference every agreement figure compares with, and the bf16 candidate.
REFERENCE = ("litert", "f32")
ALWAYS = (REFERENCE, ("openvino", "bf16"))


def run(
    *,
    images: Path,
    weights: str,
    models: Sequence[tuple[str, str]] = (),
    repeat: int = 1,
    seed: bool = True,
) -> dict[str, Any]:
    """Each model (backend, precision) of `models`, then those of ALWAYS not among them: the first is the headline,
    its figures at the top level (`auto` first by default: the model a new deployment gets here). Each model's entry
    is also under "models", keyed "<backend>-<precision>". `repeat` > 1 adds re-encoded flips and rotations of
    every image, so the sample stands for a larger batch of distinct photos (the job drops exact duplicates).

    With `seed`, the seed project's pattern then runs once on the same images (`seed_pattern`, its PCA with the
    headline job's k), and `job_over_seed` is the headline's job_img_s over its seed_img_s."""
    from pomona.bench.refit import bench_refit
    from pomona.bench.seed_pattern import run as run_seed_pattern
    from pomona.ml.backends import choose_model

    wanted = [choose_model(b, p) for b, p in (models or [(AUTO, AUTO)])]
    chosen = list(dict.fromkeys([*wanted, *ALWAYS]))
    with tempfile.TemporaryDirectory(prefix="pomona-bench-") as scratch:
        folder = images if repeat <= 1 else repeated(images, repeat, into=Path(scratch) / "images")
        files = [path for path, _ in labelled_files(folder)]
        results = {
            model: _measure(
                folder, files, weights=weights, model=model, features=Path(scratch) / _name(model)
            )
            for model in chosen
        }
        reference = np.load(Path(scratch) / f"{_name(REFERENCE)}.npy", mmap_mode="r")
        for model, entry in results.items():
            if "skipped" not in entry:
                entry["agreement"] = agreement(np.load(Path(scratch) / f"{_name(model)}.npy"), reference)
        headline = results[chosen[0]]
        # LiteRT f32 runs on every CPU: its k stands in when the headline was skipped.
        k = headline.get("pca_k") or results[REFERENCE]["pca_k"]
        seed_pattern = run_seed_pattern(folder, weights=weights, k=k) if seed else None
    entries = {_name(model): entry for model, entry in results.items()}
    compared: dict[str, Any] = {}
    if seed_pattern is not None:
        compared = {"seed_pattern": seed_pattern, "job_over_seed": job_over_seed(headline, seed_pattern)}
    return {**headline, "models": entries, **compared, "pca_refit": bench_refit()}


def job_over_seed(entry: dict[str, Any], seed_pattern: dict[str, Any]) -> float | None:
    """How many times the seed pattern's images/s the job made (the issue's goal: 6); None for a skipped model."""
    if "job_img_s" not in entry:
        return None
    return round(float(entry["job_img_s"]) / float(seed_pattern["seed_img_s"]), 2)


def _name(model: tuple[str, str]) -> str:
    return "-".join(model)


def agreement(features: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Row-wise cosine of `features` to `reference` (the same images, LiteRT float32): its min and median."""
    dot = np.einsum("ij,ij->i", features, reference, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = dot / np.maximum(norms, 1e-30)
    return {
        "reference": _name(REFERENCE),
        "min_cosine": round(float(cosine.min()), 6),
        "median_cosine": round(float(np.median(cosine)), 6),
    }


def repeated(images: Path, times: int, *, into: Path) -> Path:
    """`into`, holding each image of `images` (by label folder) and `times - 1` distinct variants of it: mirrored,
    flipped, rotated, and re-encoded as JPEG (quality 95), as one fruit photographed again would be.

    Every variant's bytes differ from every other file's written here (the job drops images by sha256): one whose
    pixels repeat another's (a symmetric photo turned) is saved again at a lower quality until they differ."""
    transforms = [
        Image.Transpose.FLIP_LEFT_RIGHT,
        Image.Transpose.FLIP_TOP_BOTTOM,
        Image.Transpose.ROTATE_90,
        Image.Transpose.ROTATE_180,
        Image.Transpose.ROTATE_270,
        Image.Transpose.TRANSPOSE,
        Image.Transpose.TRANSVERSE,
    ]
    if times - 1 > len(transforms):
        raise ValueError(f"expected --repeat at most {len(transforms) + 1}, got {times}")
    written: set[str] = set()
    for path, label in labelled_files(images):
        folder = into / label
        folder.mkdir(parents=True, exist_ok=True)
        original = path.read_bytes()
        (folder / path.name).write_bytes(original)
        written.add(hashlib.sha256(original).hexdigest())
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        for number, transform in enumerate(transforms[: times - 1], start=1):
            variant = _distinct_jpeg(rgb.transpose(transform), written)
            (folder / f"{path.stem}-v{number}.jpg").write_bytes(variant)
    return into


def _distinct_jpeg(image: Image.Image, written: set[str]) -> bytes:
    """`image` as a JPEG whose sha256 is not in `written` (then added to it): quality 95, else the first of 94…50."""
    for quality in range(95, 49, -1):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        digest = hashlib.sha256(buffer.getvalue()).hexdigest()
        if digest not in written:
            written.add(digest)
            return buffer.getvalue()
    raise ValueError(
        f"expected a JPEG quality in 50-95 to make a new sha256, got a copy at each for {image!r}"
    )


def _measure(
    images: Path, files: list[Path], *, weights: str, model: tuple[str, str], features: Path
) -> dict[str, Any]:
    from pomona.ml.backends import runs

    backend, precision = model
    if not runs(backend, precision):
        return {"backend": backend, "precision": precision, "skipped": f"this CPU does not run {precision}"}
    bare = _bare(files, weights=weights, model=model, features=features)
    job = _job(images, weights=weights, model=model)
    cpu = {"bare": bare["cpu_ms_per_image"], **job.pop("cpu_ms_per_image")}
    return {
        "backend": backend,
        "precision": precision,
        "images": len(files),
        "bare_img_s": bare["bare_img_s"],
        "bare_peak_rss_mb": bare["peak_rss_mb"],
        **job,
        "ratio": round(job["job_img_s"] / bare["bare_img_s"], 3),
        "cpu_ms_per_image": cpu,
        # The job's CPU per image over the bare loop's (target 1.25): what Spark, S3 and the commit add.
        "cpu_ratio": round(cpu["job"] / cpu["bare"], 2),
    }


def _bare(files: list[Path], *, weights: str, model: tuple[str, str], features: Path) -> dict[str, Any]:
    """The plain loop, in its own process: nothing else's memory counts, and TensorFlow leaves with it. Its
    features go to `features`.npy."""
    code = (
        "import json, sys; from pathlib import Path; from pomona.bench.bare import run; "
        "files = [Path(p) for p in sys.argv[5:]]; "
        "print(json.dumps(run(files, weights=sys.argv[1], backend=sys.argv[2], precision=sys.argv[3], "
        "num_threads=2, features_out=Path(sys.argv[4]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, weights, *model, f"{features}.npy", *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _job(images: Path, *, weights: str, model: tuple[str, str]) -> dict[str, Any]:
    from pomona.bench.cpu import job_cpu
    from pomona.featurize.driver import run_job
    from pomona.featurize.entry import spark_session
    from pomona.featurize.lineage import prepare_model
    from pomona.local.poller import EventSourcePoller
    from pomona.local.stack_process import stack_process

    with stack_process() as stack, contextlib.redirect_stdout(io.StringIO()):
        backend, precision = model
        settings = stack.settings.replace(weights=weights, backend=backend, precision=precision)
        upload_files(
            [
                (upload_key(settings, label, path.name), path.read_bytes())
                for path, label in labelled_files(images)
            ],
            settings,
        )
        from pomona.ingest import handler

        handler._ingestor.cache_clear()
        EventSourcePoller(settings.events_queue_url, handler.lambda_handler).drain()
        prepare_model(settings)
        clock = time.monotonic()
        spark = spark_session("local[2]", app_name=f"pomona-bench-{backend}-{precision}")
        _start_python_workers(spark)
        startup_s = time.monotonic() - clock
        try:
            before = job_cpu(emulator_pid=stack.pid)
            manifest = run_job(spark, settings).manifest
            cpu = job_cpu(emulator_pid=stack.pid) - before
            worker_rss = _python_worker_peak_rss_mb()
        finally:
            spark.stop()
    assert manifest is not None, "the benchmark's batch did not commit"
    timings = manifest["timings"]
    work_s = timings["total_s"] - timings["drain_s"]
    return {
        "job_img_s": round(manifest["counts"]["featurized"] / work_s, 1),
        "job_s": round(work_s, 2),
        "drain_s": timings["drain_s"],
        "timings": timings,
        "spark_startup_s": round(startup_s, 2),
        "pca_k": manifest["k"],
        "worker_peak_rss_mb": max(worker_rss, default=None),
        "workers": len(worker_rss),
        "cpu_ms_per_image": cpu.ms_per_image(manifest["counts"]["featurized"]),
        # The job's own evaluation of its classifier on the held-out images (`quality.json`).
        "holdout_accuracy": manifest["quality"].get("accuracy"),
        "holdout_n": manifest["quality"].get("n"),
    }


def _start_python_workers(spark: Any) -> None:
    """Bring the JVM and one Python worker per core up, with the job's imports, as a run's first tasks do: about
    2 s per run (a fresh process each), paid once whatever the batch size; it counts as Spark start-up here."""

    def imports(tasks: Iterator[int]) -> Iterator[int]:
        import pomona.featurize.tasks  # noqa: F401  # the executors' imports: the model, pandas, pyarrow, boto3

        yield from tasks

    # RDD tasks, as the job's passes are (DataFrame tasks have Python workers of their own).
    parallelism = spark.sparkContext.defaultParallelism
    spark.sparkContext.parallelize(range(parallelism), parallelism).mapPartitions(imports).collect()


def _python_worker_peak_rss_mb() -> list[float]:
    """Peak RSS of each live Spark Python worker process on this machine."""
    from pomona.bench.cpu import peak_rss_mb, spark_python_workers

    peaks = []
    for pid in spark_python_workers():
        with contextlib.suppress(OSError):  # gone since it was listed
            peaks.append(round(peak_rss_mb(pid), 1))
    return peaks
