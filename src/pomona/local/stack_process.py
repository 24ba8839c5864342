"""The embedded stack in a process of its own, so what the emulator costs is not counted as the job's.

`python -m pomona.local.stack_process` starts a stack, prints its environment as one JSON line, and serves until
its standard input closes. `stack_process()` runs it and yields the settings that point at it and its pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pomona.core.settings import Settings
from pomona.local.stack import LOCAL_ENV, exported


@dataclass(frozen=True)
class StackProcess:
    """A running embedded stack in another process: its pid, and the settings and environment to use it."""

    pid: int
    settings: Settings
    env: dict[str, str]


@contextmanager
def stack_process() -> Iterator[StackProcess]:
    """Start the stack in a child process; its environment is exported here for the duration, then it stops."""
    with subprocess.Popen(
        [sys.executable, "-m", "pomona.local.stack_process"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **LOCAL_ENV},
    ) as child:  # on leaving: its pipes closed, and waited for
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            line = child.stdout.readline()
            if not line:
                raise RuntimeError(f"expected the stack process to print its environment, got {child.wait()}")
            env: dict[str, str] = json.loads(line)
            with exported(env):
                yield StackProcess(pid=child.pid, settings=Settings.from_env(env), env=env)
        finally:
            child.stdin.close()  # the stack stops when its stdin closes


def serve_until_stdin_closes(announce: str, stop: Callable[[], None]) -> None:
    """In a child process: print `announce` for the parent, serve until the parent closes our stdin (or dies),
    then `stop`."""
    print(announce, flush=True)
    try:
        sys.stdin.read()
    finally:
        stop()


def main() -> None:
    from pomona.local.stack import start_stack

    stack = start_stack()
    serve_until_stdin_closes(json.dumps(stack.env()), stack.stop)


if __name__ == "__main__":
    main()
