"""`pomona demo`: the whole platform on one machine, through the same code paths as production.

Images are uploaded to the embedded stack's bucket as the app would, the S3 notifications reach the real Lambda
handler through the local event-source poller, the real Spark job featurizes them, and the committed outputs are
downloaded next to a summary and a report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from rich.console import Console

from pomona.core.aws import RETRIES
from pomona.core.errors import PomonaError
from pomona.core.outputs import CommittedOutputs
from pomona.core.settings import AUTO, Settings, configured
from pomona.demo.tables import localize_tables
from pomona.local.poller import EventSourcePoller
from pomona.local.stack import embedded_stack
from pomona.local.upload import labelled_files, upload_files, upload_key

log = logging.getLogger(__name__)

SYNTHETIC_PER_LABEL = 20
OUTPUT_FOLDERS = ("features/", "projections/", "models/", "batches/", "quarantine/")


class WeightsUnavailableError(PomonaError, RuntimeError):
    """No usable MobileNetV2 weights, and random ones were not asked for."""


@dataclass(frozen=True)
class WeightsChoice:
    spec: str
    note: str | None  # one line for the console, the summary and the report when the choice needs saying


def choose_weights(requested: str, *, synthetic: bool, environ: dict[str, str]) -> WeightsChoice:
    """`auto`: POMONA_WEIGHTS, else ImageNet if cached or downloadable, else random for the synthetic set only.

    A local file is named by its absolute path: the job records the spec, and `pomona classify --model OUT` finds
    the same file from any folder."""
    if requested != "auto":
        note = (
            "random weights (asked for): features carry no ImageNet meaning"
            if requested == "random"
            else None
        )
        return WeightsChoice(_absolute(requested), note)
    if spec := configured("weights", environ):
        return WeightsChoice(_absolute(spec), None)
    from pomona.ml.weights import WeightsError, resolve_weights

    try:
        resolve_weights("imagenet", cache_dir=Settings.from_env(environ).model_cache_dir)
        return WeightsChoice("imagenet", None)
    except (WeightsError, OSError) as err:
        if synthetic:
            return WeightsChoice(
                "random",
                "no ImageNet weights here (offline?): ran with random weights, so the features and the classifier "
                "are not meaningful; set POMONA_WEIGHTS=/path/to/mobilenet_v2_1.0_224_no_top.weights.h5 for real ones",
            )
        raise WeightsUnavailableError(
            "no usable MobileNetV2 weights: set POMONA_WEIGHTS=/path/to/mobilenet_v2_1.0_224_no_top.weights.h5 "
            "or pass --weights PATH (or --weights random to run without meaning)"
        ) from err


def _absolute(spec: str) -> str:
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.is_file() else spec


def demo_files(images: Path | None, settings: Settings) -> list[tuple[str, bytes]]:
    """(key, body) of every upload: a folder of `<label>/<image>`, or a synthetic set plus deliberately bad uploads."""
    from pomona.testing.samples import SYNTHETIC_LABELS, bad_uploads, fruit_image

    if images is not None:
        files = [
            (upload_key(settings, label, path.name), path.read_bytes())
            for path, label in labelled_files(images)
        ]
        if not files:
            raise PomonaError(f"expected <label>/<image> files under {images}, found none")
        return files
    good = [
        (upload_key(settings, label, f"{label.lower().replace(' ', '_')}_{i:03d}.jpg"), fruit_image(label, i))
        for label in SYNTHETIC_LABELS
        for i in range(SYNTHETIC_PER_LABEL)
    ]
    bad = [
        (upload_key(settings, "Unknown", f"{reason.value}-{name}"), body)
        for name, body, reason in bad_uploads()
    ]
    return good + bad


def waves(files: list[tuple[str, bytes]], count: int) -> list[list[tuple[str, bytes]]]:
    """Split the uploads into `count` waves, interleaved so each wave holds every label."""
    return [files[i::count] for i in range(count) if files[i::count]]


def run_demo(
    *,
    images: Path | None,
    out: Path,
    weights: str = "auto",
    backend: str = AUTO,
    precision: str = AUTO,
    workers: int = 2,
    batches: int = 1,
    console: Console,
) -> dict[str, Any]:
    import os

    from pomona.featurize.driver import run_job
    from pomona.featurize.entry import spark_session
    from pomona.featurize.lineage import prepare_model
    from pomona.ml.backends import choose_model

    choice = choose_weights(weights, synthetic=images is None, environ=dict(os.environ))
    backend, precision = choose_model(backend, precision)  # the embedded stack starts a new lineage
    if choice.note:
        console.print(f"[bold yellow]note:[/] {choice.note}")
    timings: dict[str, float] = dict.fromkeys(("upload", "ingest", "featurize"), 0.0)
    manifests: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack_exit, embedded_stack() as stack:
        settings = stack.settings.replace(weights=choice.spec, backend=backend, precision=precision)
        console.print(f"embedded stack at {stack.endpoint_url}, bucket {settings.bucket}")
        files = demo_files(images, settings)
        with console.status("preparing the model (converting for LiteRT once)…"):
            weights_id = prepare_model(settings)
        # The handler's stdout (JSON logs, EMF metrics) is what CloudWatch would get: here it goes to a file.
        lambda_log = stack_exit.enter_context((out / "lambda.log").open("a"))
        with contextlib.redirect_stdout(lambda_log):
            from pomona.ingest import handler  # powertools' Logger binds to stdout when it is built

        handler._ingestor.cache_clear()
        poller = EventSourcePoller(settings.events_queue_url, handler.lambda_handler, retry_after_s=1)
        with console.status("starting Spark…"):
            spark = spark_session(f"local[{workers}]", app_name="pomona-demo")
        try:
            for number, wave in enumerate(waves(files, batches), start=1):
                clock = time.monotonic()
                upload_files(wave, settings, console=console)
                timings["upload"] += time.monotonic() - clock
                clock = time.monotonic()
                with (
                    console.status(f"wave {number}: the Lambda handler validates {len(wave)} uploads…"),
                    contextlib.redirect_stdout(lambda_log),
                ):
                    poller.drain()
                timings["ingest"] += time.monotonic() - clock
                clock = time.monotonic()
                with console.status(f"wave {number}: Spark featurizes and refits the PCA…"):
                    result = run_job(spark, settings)
                timings["featurize"] += time.monotonic() - clock
                if result.manifest is not None:
                    manifests.append(result.manifest)
                    console.print(
                        f"wave {number}: committed batch {result.manifest['batch_id']} → PCA v"
                        f"{result.manifest['pca_version']} (n_seen {result.manifest['n_seen']}, k {result.manifest['k']})"
                    )
                else:
                    console.print(f"wave {number}: nothing committed ({result.skipped})")
        finally:
            spark.stop()
        leave_outputs(settings, out, console)
        summary = summarize(settings, files=files, manifests=manifests, timings=timings)
    summary |= {"weights_id": weights_id, "weights_note": choice.note, "backend": backend,
                "precision": precision, "variance_target": settings.variance_target}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def leave_outputs(settings: Settings, out: Path, console: Console) -> None:
    """The committed outputs in `out`: the bucket's folders, and the tables over them for offline readers."""
    with console.status(f"downloading the outputs to {out}…"):
        download_outputs(settings, out)
        tables = localize_tables(settings, out)
    if tables is not None:
        console.print(f"Iceberg tables for offline readers: PYICEBERG_HOME={tables}")


def download_outputs(settings: Settings, out: Path) -> None:
    """Mirror the bucket's output folders into `out` (replacing what an earlier demo left there)."""
    s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES)
    for folder in OUTPUT_FOLDERS:
        shutil.rmtree(out / folder, ignore_errors=True)
        prefix = settings.quarantine_prefix if folder == "quarantine/" else settings.output_prefix + folder
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                target = out / folder / item["Key"][len(prefix) :]
                # Keys are the bucket's, not ours: never let one write outside `out`.
                if not target.resolve().is_relative_to(out.resolve()):
                    log.warning(
                        "Skipped a key that would leave the output folder", extra={"key": item["Key"]}
                    )
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(settings.bucket, item["Key"], str(target))


def summarize(
    settings: Settings,
    *,
    files: list[tuple[str, bytes]],
    manifests: list[dict[str, Any]],
    timings: dict[str, float],
) -> dict[str, Any]:
    """The accounting: uploaded = accepted + quarantined; accepted = featurized + failed + duplicates; and the
    uploads that ended nowhere (`missing`, which must be empty).

    Each side is counted where it happened: quarantined from the Lambda's sidecars, accepted from the messages
    the committed batches took off the queue, featurized, failed and duplicates from their manifests. The queue
    is at least once: a Lambda retried after queueing adds a message (a duplicate for the job), so `accepted`
    then exceeds the accepted uploads; `missing`, by key and sha256, is the check that holds regardless.
    """
    s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES)
    outputs = CommittedOutputs.in_bucket(s3, settings)
    sidecars = outputs.sidecars()
    quarantined = Counter(s["reason"] for s in sidecars if s["stage"] != "featurize")
    committed = outputs.manifests()
    failed: Counter[str] = Counter()
    for manifest in committed:
        failed.update(manifest["counts"]["failed"])
    featurized = sum(m["counts"]["featurized"] for m in committed)
    duplicates = sum(m["counts"]["duplicates"] for m in committed)
    uploaded = len(files)
    latest = committed[-1] if committed else None
    return {
        "uploaded": uploaded,
        "accepted": sum(m["counts"]["received"] - m["counts"]["malformed"] for m in committed),
        "quarantined": dict(quarantined),
        "featurized": featurized,
        "failed": dict(failed),
        "duplicates": duplicates,
        "missing": missing_uploads(files, sidecars=sidecars, committed=committed_shas(outputs, committed)),
        "pca_versions": [m["pca_version"] for m in committed],
        "k": latest["k"] if latest else None,
        "explained_variance": latest["explained_variance"] if latest else None,
        "n_seen": latest["n_seen"] if latest else 0,
        "throughput": {
            stage: round(count / timings[stage], 1)
            for stage, count in {"upload": uploaded, "ingest": uploaded, "featurize": featurized}.items()
            if timings.get(stage)
        },
        "timings_s": {stage: round(seconds, 2) for stage, seconds in timings.items()},
        "holdout": holdout_summary(latest),
        "batches": [m["batch_id"] for m in manifests],
    }


# What the summary says of the latest classifier's evaluation on the holdout (the manifest's `quality`).
HOLDOUT_FIGURES = (
    "accuracy",
    "macro_f1",
    "n",
    "best_threshold",
    "answered_fraction",
    "answered_accuracy",
    "net_revenue_per_1000",
    "temperature",
    "familiar_distance",
    "unfamiliar_fraction",
)


def holdout_summary(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """The latest committed classifier's figures on the holdout; `{"skipped": why}` when it was not evaluated,
    None before any commit."""
    if manifest is None:
        return None
    quality = manifest.get("quality") or {"skipped": "the manifest has no evaluation"}
    if quality.get("skipped"):
        return {"skipped": quality["skipped"]}
    return {name: quality.get(name) for name in HOLDOUT_FIGURES}


def missing_uploads(
    files: list[tuple[str, bytes]], *, sidecars: list[dict[str, Any]], committed: set[str]
) -> list[str]:
    """Keys of uploads that ended nowhere: not quarantined (by the Lambda or the job) and their image (sha256) in
    no committed batch. A duplicate upload counts as committed through the copy that was featurized."""
    quarantined = {sidecar["original_key"] for sidecar in sidecars}
    return [
        key
        for key, body in files
        if key not in quarantined and hashlib.sha256(body).hexdigest() not in committed
    ]


def committed_shas(outputs: CommittedOutputs, manifests: list[dict[str, Any]]) -> set[str]:
    """sha256 of every image in the features part files of committed batches."""
    table, _ = outputs.read_parts("features", ["sha256"], manifests)
    return set() if table is None else set(table.column("sha256").to_pylist())
