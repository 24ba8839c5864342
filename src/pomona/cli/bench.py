"""`pomona bench …`: the benchmarks, each printing one JSON object."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from pomona.cli.errors import one_line_errors, print_error

app = typer.Typer(help="Benchmarks; each prints one JSON object.", no_args_is_help=True)


@app.command("validate")
def bench_validate(
    as_json: Annotated[
        bool, typer.Option("--json/--pretty", help="One line of JSON (default), or indented for reading.")
    ] = True,
) -> None:
    """Validation time per image (100×100 and 4000×3000 JPEG) and peak RSS over hostile inputs."""
    from pomona.bench import validate as bench

    sys.stdout.write(json.dumps(bench.run(), indent=None if as_json else 2) + "\n")


@app.command("classify")
def bench_classify(
    model: Annotated[
        Path | None,
        typer.Option(
            help="A folder laid out as the bucket (the demo's --out); default: one trained on synthetic "
            "fruit.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="A POMONA_WEIGHTS value; default: the model's own.")
    ] = None,
    repeats: Annotated[
        int, typer.Option(help="Warm answers to the small photo (the large: a seventh).")
    ] = 200,
    as_json: Annotated[
        bool, typer.Option("--json/--pretty", help="One line of JSON (default), or indented for reading.")
    ] = True,
) -> None:
    """Per-photo latency of the serving core (100×100 and 4000×3000 JPEG), cold start and peak RSS."""
    from pomona.bench import classify as bench

    with one_line_errors():
        result = bench.run(model=model, weights=weights, repeats=repeats)
    sys.stdout.write(json.dumps(result, indent=None if as_json else 2) + "\n")


@app.command("featurize")
def bench_featurize(
    images: Annotated[
        Path, typer.Option(help="A folder of <label>/<image> files.", exists=True, file_okay=False)
    ],
    weights: Annotated[str, typer.Option(help="A POMONA_WEIGHTS value (a local .h5 offline).")] = "imagenet",
    backend: Annotated[
        list[str] | None,
        typer.Option(
            help="BACKEND[:PRECISION] to measure, repeatable; the first is the headline (default: auto, the model "
            "a new deployment gets here). LiteRT f32 and OpenVINO bf16 are measured in every run."
        ),
    ] = None,
    repeat: Annotated[
        int,
        typer.Option(help="Each image and N-1 re-encoded flips/rotations of it (at most 8).", min=1, max=8),
    ] = 1,
    seed: Annotated[
        bool,
        typer.Option(
            "--seed/--no-seed",
            help="Also run the seed project's pattern on the same images (Keras in a pandas UDF, MLlib "
            "StandardScaler + PCA) and report job_over_seed.",
        ),
    ] = True,
    as_json: Annotated[
        bool, typer.Option("--json/--pretty", help="One line of JSON (default), or indented for reading.")
    ] = True,
) -> None:
    """Plain-loop vs whole-job images/s and CPU per image by process, per model; agreement with float32 and holdout
    accuracy; peak RSS per Python worker, Spark start-up, PCA refit time; the job against the seed's pattern."""
    from pomona.bench import featurize as bench

    models = [(name, precision or "auto") for name, _, precision in (b.partition(":") for b in backend or [])]
    with one_line_errors():
        result = bench.run(images=images, weights=weights, models=models, repeat=repeat, seed=seed)
    sys.stdout.write(json.dumps(result, indent=None if as_json else 2) + "\n")


@app.command("autoscale")
def bench_autoscale(
    images: Annotated[int, typer.Option(help="Backlog of synthetic uploads.", min=1)] = 256,
    workers: Annotated[int, typer.Option(help="One-core standalone workers, the executor cap.", min=1)] = 2,
    after_s: Annotated[float, typer.Option(help="Seconds sampled after the job ends.")] = 15.0,
    as_json: Annotated[
        bool, typer.Option("--json/--pretty", help="One line of JSON (default), or indented for reading.")
    ] = True,
) -> None:
    """Executors over time as the job runs with dynamic allocation on a Spark standalone cluster on loopback."""
    import contextlib

    from pomona.bench import autoscale as bench

    # The ingestion handler logs to stdout; stdout carries the result alone.
    with one_line_errors(), contextlib.redirect_stdout(sys.stderr):
        result = bench.run(images=images, workers=workers, after_s=after_s)
    sys.stdout.write(json.dumps(result, indent=None if as_json else 2) + "\n")


@app.command("ingest")
def bench_ingest(
    count: Annotated[int, typer.Option(help="Uploads.", min=1)] = 5000,
    bad_every: Annotated[int, typer.Option(help="Every Nth upload is a bad one (0: none).", min=0)] = 100,
    duplicate_every: Annotated[
        int, typer.Option(help="Every Nth upload repeats the one before (0: none).", min=0)
    ] = 50,
    workers: Annotated[int, typer.Option(help="Spark local[N] workers for the job.", min=1)] = 2,
    weights: Annotated[
        str, typer.Option(help="A POMONA_WEIGHTS value; the rate does not depend on it.")
    ] = "random",
    backend: Annotated[str, typer.Option(help="litert | tensorflow.")] = "litert",
    as_json: Annotated[
        bool, typer.Option("--json/--pretty", help="One line of JSON (default), or indented for reading.")
    ] = True,
) -> None:
    """N uploads through the embedded stack: images/s per stage, queue depth over time, the accounting.

    Exits 1 when the accounting does not close (an upload missing, or a message left on a queue).
    """
    from pomona.bench import ingest as bench

    with one_line_errors():
        result = bench.run(
            count=count,
            bad_every=bad_every,
            duplicate_every=duplicate_every,
            workers=workers,
            weights=weights,
            backend=backend,
        )
    sys.stdout.write(json.dumps(result, indent=None if as_json else 2) + "\n")
    if not bench.accounting_holds(result):
        print_error("the accounting does not close: see missing and left_on_queues")
        raise typer.Exit(1)


@app.command("history")
def bench_history(
    seen: Annotated[
        list[int] | None,
        typer.Option(help="Committed images of history before the run; repeat for each level.", min=0),
    ] = None,
    images: Annotated[int, typer.Option(help="The batch each level's run featurizes.", min=1)] = 256,
    batch_images: Annotated[
        int,
        typer.Option(
            help="Images per batch of the history: smaller makes more batches (table snapshots).", min=1
        ),
    ] = 25_000,
    as_json: Annotated[
        bool, typer.Option("--json/--pretty", help="One line of JSON (default), or indented for reading.")
    ] = True,
) -> None:
    """One run of the same batch after 0, 100,000 and 1,000,000 committed images (or each --seen): run time,
    the driver's peak RSS and the requests the run made, each against a fresh embedded stack."""
    from pomona.bench import history as bench

    with one_line_errors():
        result = bench.run(seen=tuple(seen or bench.DEFAULT_SEEN), images=images, batch_images=batch_images)
    sys.stdout.write(json.dumps(result, indent=None if as_json else 2) + "\n")
