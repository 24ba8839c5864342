"""`pomona dlq …`: look into the dead-letter queues and move their messages back. Thin: parse, call
`pomona.ops.dlq_describe` and `pomona.ops.dlq_redrive`, print."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console

from pomona.cli.errors import console, one_line_errors, print_error

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

    from pomona.core.settings import Settings
    from pomona.ops.dlq import QueueName
    from pomona.ops.dlq_describe import Listing

app = typer.Typer(
    help="The dead-letter queues of the images and events queues: look without consuming, move messages back.",
    no_args_is_help=True,
)

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@app.command("list")
def list_messages(
    queue: Annotated[
        Literal["images", "events"] | None,
        typer.Option(help="Whose DLQ; default: both (a source queue not configured is skipped)."),
    ] = None,
    limit: Annotated[int, typer.Option(help="Describe at most this many messages per DLQ.", min=0)] = 20,
    as_json: AsJson = False,
) -> None:
    """What each DLQ holds, without consuming it: its depth, and per message the id, earlier receives, when it
    was first sent, what it names (image key, version, label; or the S3 keys of a notification) and why it is
    there, where that can be known.

    The messages looked at are made visible again at once. SQS counts the look as a receive."""
    from pomona.ops.dlq import QUEUES, find_dlq, source_url
    from pomona.ops.dlq_describe import PEEK_VISIBILITY_S, peek

    listings: dict[str, Listing] = {}
    with one_line_errors():
        settings, sqs, _ = _clients()
        names: list[QueueName] = [queue] if queue else [n for n in QUEUES if source_url(settings, n)]
        if not names:
            names = ["images"]  # neither is configured: say what the images queue lacks
        for name in names:
            listings[name] = peek(sqs, find_dlq(sqs, settings, name), settings, limit=limit)
    if as_json:
        sys.stdout.write(json.dumps({n: dataclasses.asdict(v) for n, v in listings.items()}, indent=2) + "\n")
    else:
        _print_listings(listings)
    for listing in listings.values():
        if listing.not_released:
            console.print(
                f"[yellow]warning:[/] {listing.not_released} messages of {listing.dlq.url} could not be made "
                f"visible again now; they return within {PEEK_VISIBILITY_S} s",
                soft_wrap=True,
            )


@app.command()
def redrive(
    queue: Annotated[
        Literal["images", "events"], typer.Option(help="Whose DLQ to move back to its source queue.")
    ] = "images",
    max_messages: Annotated[
        int | None,
        typer.Option("--max", help="Move at most this many (by copying: a move task moves all).", min=1),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for SQS's move task.")] = 600.0,
    as_json: AsJson = False,
) -> None:
    """Move every message of the DLQ back to its source queue; exit 1 unless all moved.

    SQS's message move task does it where the endpoint has one; elsewhere (moto) each message is copied, body and
    message attributes, and deleted from the DLQ only once its copy was sent."""
    from pomona.ops.dlq import find_dlq
    from pomona.ops.dlq_redrive import redrive as move_back

    with one_line_errors():
        settings, sqs, task_sqs = _clients()
        dlq = find_dlq(sqs, settings, queue)
        console.print(f"moving {dlq.url} → {dlq.source_url}", soft_wrap=True)
        result = move_back(
            sqs,
            dlq,
            max_messages=max_messages,
            task_sqs=task_sqs,
            timeout_s=timeout,
            on_status=lambda line: console.print(f"  {line}", soft_wrap=True),
        )
    if as_json:
        sys.stdout.write(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    else:
        how = "a message move task" if result.method == "move-task" else "copying"
        Console().print(
            f"moved {result.moved} messages to the {queue} queue by {how}; {result.failed} failed"
        )
    if not result.succeeded:
        print_error(
            f"redrive {result.status}: {result.failed} messages not moved"
            + (f" ({result.detail})" if result.detail else "")
        )
        raise typer.Exit(1)


def _clients() -> tuple[Settings, SQSClient, SQSClient]:
    """The settings, an SQS client with the house retry policy, and one that tries each call once (for the move
    task calls, which an endpoint without them answers with a server error)."""
    import boto3
    from botocore.config import Config

    from pomona.core.aws import RETRIES
    from pomona.core.settings import Settings

    settings = Settings.from_env()
    sqs = boto3.client("sqs", endpoint_url=settings.endpoint_url, config=RETRIES)
    once = Config(retries={"mode": "standard", "max_attempts": 1})
    return settings, sqs, boto3.client("sqs", endpoint_url=settings.endpoint_url, config=once)


def _print_listings(listings: dict[str, Listing]) -> None:
    from rich.table import Table

    out = Console()
    for name, listing in listings.items():
        shown = len(listing.messages)
        table = Table(
            "message id",
            "receives",
            "sent (UTC)",
            "payload",
            "reason",
            title=f"{name} DLQ: {listing.visible} waiting, {listing.in_flight} in flight"
            + (f", {shown} shown" if shown < listing.visible else ""),
            caption=f"{listing.dlq.url} (maxReceiveCount {listing.dlq.max_receive_count})",
        )
        for m in listing.messages:
            table.add_row(m.message_id, str(m.receives), m.sent_at, m.payload, m.reason)
        out.print(table)
