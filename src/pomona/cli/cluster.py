"""`pomona cluster …`: run and watch the featurization job on Kubernetes. Thin: parse, call `pomona.ops.spark_operator`, print."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from pomona.cli.errors import one_line_errors, print_error
from pomona.core.errors import PomonaError

if TYPE_CHECKING:
    from kubernetes.client import CustomObjectsApi

    from pomona.core.settings import Settings

app = typer.Typer(
    help="Run and watch the featurization job on Kubernetes (Spark Operator).", no_args_is_help=True
)
out = Console()

Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Namespace of the Helm release.")]
Name = Annotated[str, typer.Option("--name", help="The ScheduledSparkApplication: the release's full name.")]
Context = Annotated[
    str | None,
    typer.Option("--context", help="kubeconfig context; default: in-cluster, else the current one."),
]
Kubeconfig = Annotated[
    Path | None,
    typer.Option(dir_okay=False, help="kubeconfig file; default: $KUBECONFIG, else ~/.kube/config."),
]


def _custom_objects(context: str | None, kubeconfig: Path | None) -> CustomObjectsApi:
    from kubernetes import client, config

    if context is None and kubeconfig is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.CustomObjectsApi()
        except config.ConfigException:
            pass  # not in a pod: use the kubeconfig
    config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None, context=context)  # type: ignore[no-untyped-call]
    return client.CustomObjectsApi()


@app.command()
def run(
    *,
    namespace: Namespace = "pomona",
    name: Name = "pomona",
    wait: Annotated[bool, typer.Option("--wait", help="Follow the run until it completes or fails.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait, give up after this many seconds.")] = 3600.0,
    context: Context = None,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Start a run now, from the schedule's own spec. With --wait, exit 1 unless it completes."""
    from pomona.ops import spark_operator as cluster

    with one_line_errors():
        api = _custom_objects(context, kubeconfig)
        outcome = cluster.run_once(
            api,
            namespace=namespace,
            scheduled_name=name,
            wait=wait,
            timeout=timeout,
            on_state=lambda state: out.print(f"  {state or 'NEW'}"),
        )
    if not wait:
        out.print(f"started [bold]{outcome.name}[/]")
        return
    if not outcome.succeeded:
        print_error(f"run {outcome.name} {outcome.state}: {outcome.error or 'no message'}")
        raise typer.Exit(1)
    out.print(f"[green]run {outcome.name} COMPLETED[/]")


@app.command()
def status(
    *,
    namespace: Namespace = "pomona",
    name: Name = "pomona",
    limit: Annotated[int, typer.Option(help="Show at most this many runs.")] = 10,
    context: Context = None,
    kubeconfig: Kubeconfig = None,
) -> None:
    """The schedule's recent runs, newest first, and the images queue's backlog beside them."""
    from rich.table import Table

    from pomona.core.settings import Settings
    from pomona.ops import spark_operator as cluster

    with one_line_errors():
        runs = cluster.status(
            _custom_objects(context, kubeconfig), namespace=namespace, scheduled_name=name, limit=limit
        )
        settings = Settings.from_env()
    out.print(f"backlog: {_backlog(settings)}")
    if not runs:
        out.print(f"no runs of {namespace}/{name} yet")
        return
    table = Table("run", "state", "by", "started (UTC)", "finished (UTC)", "duration")
    for r in runs:
        table.add_row(
            r.name,
            r.state,
            r.triggered_by,
            f"{r.started:%Y-%m-%d %H:%M:%S}" if r.started else "",
            f"{r.finished:%Y-%m-%d %H:%M:%S}" if r.finished else "",
            str(r.duration) if r.duration is not None else "",
        )
    out.print(table)


def _backlog(settings: Settings) -> str:
    """The images queue's depth in words; the runs are worth showing even when the queue cannot be read."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from pomona.ops import spark_operator as cluster

    if not settings.images_queue_url:
        return "unknown (set POMONA_IMAGES_QUEUE_URL to see the images queue's depth)"
    sqs = boto3.client("sqs", region_name=settings.region, endpoint_url=settings.endpoint_url)
    try:
        return f"[bold]{cluster.queue_backlog(sqs, settings.images_queue_url)}[/] images waiting on the images queue"
    except (BotoCoreError, ClientError) as err:
        return f"unknown (the images queue did not answer: {err})"


@app.command()
def trigger(
    *,
    namespace: Namespace = "pomona",
    name: Name = "pomona",
    min_backlog: Annotated[int, typer.Option(min=1, help="Queue depth that starts a run at once.")] = 500,
    max_wait: Annotated[
        int, typer.Option(min=0, help="Seconds a smaller backlog waits before a run starts.")
    ] = 3600,
    context: Context = None,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Start a run if the images queue holds enough work (or has waited long enough) and no run is active."""
    import boto3

    from pomona.core.settings import Settings
    from pomona.ops import spark_operator as cluster

    with one_line_errors():
        settings = Settings.from_env()
        if not settings.images_queue_url:
            raise PomonaError("expected POMONA_IMAGES_QUEUE_URL to name the images queue, found it unset")
        outcome = cluster.trigger(
            _custom_objects(context, kubeconfig),
            boto3.client("sqs", region_name=settings.region, endpoint_url=settings.endpoint_url),
            namespace=namespace,
            scheduled_name=name,
            queue_url=settings.images_queue_url,
            min_backlog=min_backlog,
            max_wait=timedelta(seconds=max_wait),
        )
    verdict = f"started [bold]{outcome.started}[/]" if outcome.started else "no run started"
    out.print(f"{verdict}: {outcome.decision.reason}")
