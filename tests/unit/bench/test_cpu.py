"""Per-process accounting for the benchmarks: a child's CPU time, its place in the process tree, the Spark
Python workers found by their command line, and peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pomona.bench.cpu import cpu_s, descendants, parents, peak_rss_mb, runs, spark_python_workers

# Busy for a moment, then waits for its stdin to close; the extra argument is a Spark worker's marker.
_CHILD = "import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\nprint(flush=True)\nsys.stdin.read()"


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, "pyspark.daemon"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stdin is not None
        process.stdout.readline()  # its busy moment is over
        yield process
        process.stdin.close()


def test_a_child_is_found_below_this_process_with_its_cpu_time(child: subprocess.Popen[str]) -> None:
    tree = parents()

    assert tree[child.pid] == os.getpid()
    assert child.pid in descendants(os.getpid(), tree)
    assert cpu_s(child.pid) >= 0.25
    assert runs(child.pid, b"pyspark.daemon")
    assert not runs(child.pid, b"no such marker")
    assert child.pid in spark_python_workers()
    assert peak_rss_mb(child.pid) > 0


def test_a_process_that_is_gone_has_no_cpu_time(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait()

    with pytest.raises(ProcessLookupError):
        cpu_s(child.pid)
    assert not runs(child.pid, b"pyspark.daemon")
