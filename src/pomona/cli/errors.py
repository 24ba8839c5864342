"""How the command line reports what went wrong: one clear line on stderr and exit code 1, not a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from pomona.core.errors import PomonaError

console = Console(stderr=True)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Errors Pomona raises on purpose, and AWS being out of reach or refusing, become one clear line and exit
    code 1, not a traceback."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except PomonaError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(1) from err
    except (BotoCoreError, ClientError) as err:
        console.print(
            f"[bold red]error:[/] AWS said: {str(err).rstrip('.')}. Check AWS_ENDPOINT_URL (`pomona local up` prints it), the "
            "credentials and the POMONA_* settings."
        )
        raise typer.Exit(1) from err
