"""How the command line reports what went wrong: one clear line on stderr and exit code 1, not a traceback."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from pomona.core.errors import PomonaError

# stderr: what the commands say besides their results (progress, warnings, errors).
console = Console(stderr=True)


def print_error(line: str) -> None:
    """`error: <line>` on stderr, on one line however narrow the terminal."""
    console.print(f"[bold red]error:[/] {line}", soft_wrap=True)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Errors Pomona raises on purpose, AWS being out of reach or refusing, and the Kubernetes API or its
    configuration refusing become one clear line and exit code 1; any other error is a bug and keeps its
    traceback."""
    try:
        yield
    except Exception as err:
        line = _one_line(err)
        if line is None:
            raise
        print_error(line)
        raise typer.Exit(1) from err


def _one_line(err: Exception) -> str | None:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(err, PomonaError):
        return str(err)
    if isinstance(err, BotoCoreError | ClientError):
        return (
            f"AWS said: {str(err).rstrip('.')}. Check AWS_ENDPOINT_URL (`pomona local up` prints it), the "
            "credentials and the POMONA_* settings."
        )
    return _kubernetes_line(err)


def _kubernetes_line(err: Exception) -> str | None:
    """The Kubernetes client's API and configuration errors (`pomona cluster …`); None for any other error."""
    if "kubernetes" not in sys.modules:  # not loaded (or not installed): the error cannot be one of its
        return None
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    if isinstance(err, ApiException):
        return f"Kubernetes API: {_api_message(err)}"
    if isinstance(err, ConfigException):
        return str(err)
    return None


def _api_message(err: object) -> str:
    """`<status> <reason>: <the API's message>`, from an ApiException and the JSON body the API server sent."""
    status, reason, body = (getattr(err, attr, None) for attr in ("status", "reason", "body"))
    try:
        message = json.loads(body)["message"] if body else ""
    except (ValueError, KeyError, TypeError):
        message = ""
    return f"{status} {reason}" + (f": {message}" if message else "")
