"""The `pomona` command line. Thin: parse, call a module, print. Heavy imports happen inside commands."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pomona.cli.bench import app as bench_app
from pomona.cli.cluster import app as cluster_app
from pomona.cli.dlq import app as dlq_app
from pomona.cli.errors import console, one_line_errors

app = typer.Typer(
    help="Pomona: fruit photos in S3 → validated, queued, featurized, PCA.", no_args_is_help=True
)
job_app = typer.Typer(help="The featurization job.", no_args_is_help=True)
model_app = typer.Typer(help="The MobileNetV2 featurizer's model files.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(model_app, name="model")
app.add_typer(cluster_app, name="cluster")
app.add_typer(dlq_app, name="dlq")
local_app = typer.Typer(help="The embedded AWS stack.", no_args_is_help=True)
app.add_typer(local_app, name="local")
app.add_typer(job_app, name="job")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Image files to check.", exists=True, dir_okay=False)],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Run the ingestion Lambda's validation core on local files. Exits 0 whatever the verdicts."""
    from rich.table import Table

    from pomona.core.settings import Settings
    from pomona.validation.checks import Limits, validate_image

    limits = Limits.from_settings(Settings.from_env())
    table = Table("file", "verdict", "reason", "format", "size", "detail")
    for path in files:
        verdict = validate_image(path.read_bytes(), limits=limits, filename=path.name)
        if as_json:
            row = {"file": str(path), **verdict.to_dict()}
            sys.stdout.write(json.dumps({k: row[k] for k in _VALIDATE_KEYS}) + "\n")
        else:
            table.add_row(
                str(path),
                "[green]accepted[/]" if verdict.accepted else "[red]rejected[/]",
                verdict.reason or "",
                verdict.format or "",
                f"{verdict.width}×{verdict.height}" if verdict.width else "",
                verdict.detail,
            )
    if not as_json:
        Console().print(table)


_VALIDATE_KEYS = ("file", "accepted", "reason", "detail", "format", "width", "height", "mode", "sha256")


@app.command()
def classify(
    photos: Annotated[list[Path], typer.Argument(help="Photos to identify.")],
    model: Annotated[
        Path | None,
        typer.Option(
            help="A folder laid out as the bucket (the demo's --out); default: the deployment's bucket.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(help="The lineage's weights, where its recorded spec is not here (POMONA_WEIGHTS)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per photo, one per line.")] = False,
) -> None:
    """Identify fruit in photos with the latest committed classifier; "not sure" below its threshold. Exits 0
    when it ran, whatever the answers."""
    from rich.table import Table

    from pomona.core.settings import Settings
    from pomona.ops.classify import classify_files, model_source

    with one_line_errors():
        settings = Settings.from_env()
        answers = classify_files(photos, model_source(settings, model_dir=model, weights=weights), settings)
        if as_json:
            for result in answers:
                sys.stdout.write(json.dumps(result) + "\n")
            return
        table = Table("photo", "answer", "confidence", "runner-up", title="classify")
        for result in answers:
            runner_up = result["top"][1] if len(result["top"]) > 1 else None
            table.add_row(
                result["file"],
                result["label"] or (f"rejected: {result['reason']}" if result["reason"] else "not sure"),
                "-" if result["confidence"] is None else f"{result['confidence']:.3f}",
                "-" if runner_up is None else f"{runner_up[0]} ({runner_up[1]:.3f})",
            )
        Console().print(table)


@job_app.command("run")
def job_run(
    workers: Annotated[int, typer.Option(help="Spark local[N] workers.")] = 2,
    max_images: Annotated[
        int | None, typer.Option(help="Cap on images this run (POMONA_MAX_IMAGES).")
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="imagenet | random | PATH | s3://… (POMONA_WEIGHTS).")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="auto | litert | openvino | tensorflow (POMONA_BACKEND).")
    ] = None,
    precision: Annotated[str | None, typer.Option(help="auto | f32 | bf16 (POMONA_PRECISION).")] = None,
) -> None:
    """Run one batch now against the configured endpoints (AWS, or `pomona local up`'s stack)."""
    from pomona.core.settings import Settings
    from pomona.featurize.driver import run_job
    from pomona.featurize.entry import spark_session

    with one_line_errors():
        settings = Settings.from_env().override(
            max_images=max_images, weights=weights, backend=backend, precision=precision
        )
        spark = spark_session(f"local[{workers}]")
        try:
            with console.status("featurizing the queued images…"):
                result = run_job(spark, settings)
        finally:
            spark.stop()
    if result.manifest is None:
        console.print(f"nothing committed: {result.skipped}")
    else:
        sys.stdout.write(json.dumps(result.manifest, indent=2) + "\n")


@app.command()
def demo(
    images: Annotated[
        Path | None,
        typer.Option(help="A folder of <label>/<image> files; default: a synthetic set.", file_okay=False),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the outputs, summary.json and report.html go.")] = Path(
        "pomona-out"
    ),
    weights: Annotated[str, typer.Option(help="auto | imagenet | random | PATH.")] = "auto",
    backend: Annotated[
        str,
        typer.Option(help="auto (a new lineage: litert) | litert | openvino | tensorflow."),
    ] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (a new lineage: f32) | f32 | bf16 (openvino).")
    ] = "auto",
    workers: Annotated[int, typer.Option(help="Spark local[N] workers.")] = 2,
    batches: Annotated[int, typer.Option(help="Upload in N waves, one job run each (PCA v1…vN).")] = 1,
) -> None:
    """The whole pipeline on this machine: upload → Lambda → queue → Spark → PCA → report."""
    from pomona.demo.report import write_report
    from pomona.demo.run import run_demo

    if images is not None and not images.is_dir():
        raise typer.BadParameter(f"expected a folder, got {images}", param_hint="--images")
    with one_line_errors():
        out.mkdir(parents=True, exist_ok=True)
        summary = run_demo(
            images=images,
            out=out,
            weights=weights,
            backend=backend,
            precision=precision,
            workers=workers,
            batches=batches,
            console=console,
        )
        report = write_report(out, summary)
    _print_summary(summary)
    console.print(f"outputs in {out}/, summary in {out / 'summary.json'}, report in [bold]{report}[/]")


def _print_summary(summary: dict[str, object]) -> None:
    from rich.table import Table

    table = Table("", "", title="Pomona demo", show_header=False)
    for key in ("uploaded", "accepted", "quarantined", "featurized", "failed", "duplicates", "missing", "pca_versions", "k",
                "explained_variance", "throughput", "weights_id", "backend", "precision", "weights_note"):  # fmt: skip
        value = summary.get(key)
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    holdout = summary.get("holdout")
    if isinstance(holdout, dict) and holdout.get("skipped"):
        table.add_row("holdout", f"not evaluated: {holdout['skipped']}")
    elif isinstance(holdout, dict):

        def shown(name: str, spec: str) -> str:
            value = holdout.get(name)
            return format(value, spec) if isinstance(value, int | float) else str(value)

        for name, value in {
            "holdout images": shown("n", ","),
            "holdout accuracy": shown("accuracy", ".2%"),
            "holdout macro F1": shown("macro_f1", ".3f"),
            "threshold": shown("best_threshold", ".4f"),
            "answered": shown("answered_fraction", ".2%"),
            "answered accuracy": shown("answered_accuracy", ".2%"),
            "net revenue / 1000": shown("net_revenue_per_1000", ",.1f"),
        }.items():
            table.add_row(name, value)
    Console().print(table)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Queue depths, committed batches, PCA versions, counts by label and rejection reason."""
    import boto3
    from rich.table import Table

    from pomona.core.aws import RETRIES
    from pomona.core.settings import Settings
    from pomona.ops.status import collect_status

    with one_line_errors():
        settings = Settings.from_env()
        s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES)
        sqs = boto3.client("sqs", endpoint_url=settings.endpoint_url, config=RETRIES)
        report = collect_status(s3, sqs, settings)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    out = Console()
    colour = "green" if report["health"].startswith("ok") else "bold red"
    out.print(f"[{colour}]{report['health']}[/]")
    out.print(f"bucket [bold]{report['bucket']}[/], PCA version [bold]{report['pca_version']}[/]")
    queues = Table("queue", "visible", "in flight", title="queues")
    for name, depth in report["queues"].items():
        queues.add_row(name, str(depth.get("visible", "-")), str(depth.get("in_flight", "-")))
    out.print(queues)
    _print_batches(out, report["batches"])
    for title, counts in (
        ("images by label", report["labels"]),
        ("quarantined by reason", report["quarantined"]),
    ):
        table = Table("", "count", title=title)
        for name, count in counts.items():
            table.add_row(name, str(count))
        out.print(table)


export_app = typer.Typer(help="Export committed outputs.", no_args_is_help=True)
app.add_typer(export_app, name="export")


# Each batch's figures as `pomona status` shows them: its key in `collect_status`'s batch, and its label.
_BATCH_FIGURES = {"pca_version": "PCA", "n_seen": "n_seen", "k": "k", "featurized": "featurized", "failed": "failed",
                  "duplicates": "dup", "accuracy": "holdout acc.", "answered_fraction": "answered",
                  "answered_accuracy": "answered acc.", "threshold": "threshold",
                  "net_revenue_per_1000": "revenue/1000", "unfamiliar": "unfamiliar",
                  "refused_unfamiliar": "known refused", "never_taught_answered": "never-taught answered"}  # fmt: skip


def _print_batches(out: Console, batches: list[dict[str, object]]) -> None:
    """The last committed batches: a table, one row a batch, where the terminal (or the pipe's 80 columns) holds
    every figure whole; else one block a batch, its id on a line and its figures after it, as many to a line as
    fit."""
    from rich.columns import Columns
    from rich.table import Table
    from rich.text import Text

    title = "last committed batches"
    table = Table("batch", *_BATCH_FIGURES.values(), title=title)
    for b in batches:
        table.add_row(_cell(b.get("batch_id")), *(_cell(b.get(name)) for name in _BATCH_FIGURES))
    # The table's width with no cell cut: measured as if the terminal had no edge.
    if not batches or out.measure(table, options=out.options.update_width(10_000)).maximum <= out.width:
        out.print(table)
        return
    out.print(Text(title, style="italic"), justify="center")
    for b in batches:
        out.print(Text(_cell(b.get("batch_id")), style="bold"))
        figures = [
            Text.assemble((f"{label} ", "dim"), _cell(b.get(name))) for name, label in _BATCH_FIGURES.items()
        ]
        out.print(Columns(figures, padding=(0, 3)))


def _cell(value: object) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


@export_app.command("csv")
def export_csv(
    out: Annotated[Path, typer.Option("--out", help="The CSV file to write.")],
) -> None:
    """One row per committed image: key, label and its PCA components under the latest model."""
    import boto3

    from pomona.core.aws import RETRIES
    from pomona.core.outputs import CommittedOutputs
    from pomona.core.settings import Settings
    from pomona.ops.export import export_csv as write

    with one_line_errors():
        settings = Settings.from_env()
        s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES)
        rows, version = write(CommittedOutputs.in_bucket(s3, settings), out)
    console.print(f"wrote {rows} rows (PCA v{version}) to {out}")


@model_app.command("prepare")
def model_prepare(
    weights: Annotated[str, typer.Option(help="imagenet | PATH | s3://… | random.")] = "imagenet",
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where weights and .tflite files are cached.")
    ] = None,
    backend: Annotated[
        str, typer.Option(help="litert converts to TFLite; tensorflow only fetches.")
    ] = "litert",
) -> None:
    """Fetch the weights and convert them for LiteRT once (image build time), so runs find them cached."""
    from pomona.core.settings import Settings
    from pomona.featurize.lineage import prepare_model

    with one_line_errors():
        settings = Settings.from_env().override(
            weights=weights, backend=backend, cache_dir=str(cache_dir) if cache_dir else None
        )
        weights_id = prepare_model(settings)
    console.print(f"model ready: weights {weights_id}, backend {backend}")


@local_app.command("up")
def local_up(
    port: Annotated[int, typer.Option(help="Port of the embedded AWS endpoint on 127.0.0.1.")] = 4566,
    schedule: Annotated[
        str, typer.Option(help="How often the job runs when there is work: 30s, 1m, 2h.")
    ] = "1m",
    workers: Annotated[int, typer.Option(help="Spark local[N] workers.")] = 2,
    weights: Annotated[str | None, typer.Option(help="imagenet | random | PATH (POMONA_WEIGHTS).")] = None,
    classify_port: Annotated[
        int, typer.Option(help="Port of the local classify Function URL on 127.0.0.1 (0: any free one).")
    ] = 4567,
) -> None:
    """Keep the embedded stack up in the foreground: Lambda poller always on, the job on a schedule, the classify
    Lambda behind a local Function URL. Ctrl-C stops."""
    import os

    from pomona.featurize.lineage import prepare_model
    from pomona.local.stack import start_stack
    from pomona.local.up import export_lines, parse_interval, serve

    with one_line_errors():
        every = parse_interval(schedule)
        stack = start_stack(port=port)
        if weights:
            stack = dataclasses.replace(stack, settings=stack.settings.replace(weights=weights))
    try:
        os.environ.update(stack.env())
        console.print(f"endpoint [bold]{stack.endpoint_url}[/], bucket [bold]{stack.settings.bucket}[/]")
        console.print(f"images queue {stack.settings.images_queue_url}")
        console.print("in another terminal (then `pomona status`, `pomona job run`, `aws s3 cp`…):")
        for line in export_lines(stack.env()):
            sys.stdout.write(line + "\n")
        with one_line_errors():
            with console.status("preparing the model…"):
                prepare_model(stack.settings)  # fail now, not at the first scheduled run
            console.print(f"the job runs every {schedule} while the images queue holds work; Ctrl-C stops")
            serve(stack, every=every, workers=workers, console=console, classify_port=classify_port)
    finally:
        stack.stop()


@app.command()
def upload(
    folder: Annotated[
        Path, typer.Argument(help="A folder of <label>/<image> files.", exists=True, file_okay=False)
    ],
) -> None:
    """Upload a folder the way the app does: each image under uploads/<label>/, the label its parent folder."""
    from pomona.core.settings import Settings
    from pomona.local.upload import upload_folder

    with one_line_errors():
        count = upload_folder(folder, Settings.from_env(), console=console)
    console.print(f"uploaded {count} files")


if __name__ == "__main__":
    app()
