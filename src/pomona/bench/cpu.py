"""CPU time and peak memory per process: where every CPU-millisecond and megabyte of a benchmark went.

A process's time is its user + system time, plus that of its children it has reaped (a pyspark daemon's forked
workers, once they exit). psutil reads both the times and the process tree, on any platform it supports.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

# The Spark Python workers: the daemon and its forks (pyspark's `-m pyspark.daemon`, or its script path).
SPARK_WORKER_MARKERS = ("pyspark.daemon", "pyspark/daemon")


def cpu_s(pid: int, *, reaped: bool = True) -> float:
    """User + system CPU seconds of process `pid` (and, with `reaped`, of the children it has waited for).
    Raises ProcessLookupError when the process is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error as err:  # NoSuchProcess, AccessDenied: the process ended or is no longer ours to read
        raise ProcessLookupError(pid) from err
    reaped_s = times.children_user + times.children_system if reaped else 0.0
    return float(times.user + times.system + reaped_s)


def parents() -> dict[int, int]:
    """Every live process's parent: pid → ppid."""
    return {
        proc.pid: proc.info["ppid"] for proc in psutil.process_iter(["ppid"]) if proc.info["ppid"] is not None
    }


def descendants(pid: int, tree: dict[int, int]) -> list[int]:
    """The pids below `pid` in `tree` (pid → ppid), at any depth."""
    below, frontier = [], [pid]
    while frontier:
        kids = [child for child, parent in tree.items() if parent in frontier]
        below += kids
        frontier = kids
    return below


def runs(pid: int, marker: bytes) -> bool:
    """Whether process `pid`'s command line contains `marker`."""
    try:
        return marker.decode() in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def spark_python_workers() -> list[int]:
    """The pids of every live Spark Python worker on this machine."""
    return [
        proc.pid
        for proc in psutil.process_iter(["cmdline"])
        if any(marker in arg for arg in proc.info["cmdline"] or () for marker in SPARK_WORKER_MARKERS)
    ]


def peak_rss_mb(pid: int | None = None) -> float:
    """Process `pid`'s (default: this one's) peak resident set size in MiB.

    Linux's VmHWM, which psutil does not report; not getrusage's ru_maxrss, which Linux carries over exec, so a
    child started by a large process (a test runner with TensorFlow loaded) would report its parent's peak.
    """
    status = Path(f"/proc/{'self' if pid is None else pid}/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    if pid is None:
        return (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )  # no /proc: KiB on Linux, as a fallback
    raise FileNotFoundError(f"expected a VmHWM line in {status}, found none")


@dataclass(frozen=True)
class JobCpu:
    """Cumulative CPU seconds of the processes a local job runs in, at one moment."""

    emulator: float
    driver_python: float
    driver_jvm: float
    workers: float

    def __sub__(self, earlier: JobCpu) -> JobCpu:
        return JobCpu(
            emulator=self.emulator - earlier.emulator,
            driver_python=self.driver_python - earlier.driver_python,
            driver_jvm=self.driver_jvm - earlier.driver_jvm,
            workers=self.workers - earlier.workers,
        )

    def ms_per_image(self, images: int) -> dict[str, float]:
        """CPU-milliseconds per image: `job` is everything but the emulator, `driver` its Python and JVM."""
        per = 1000.0 / max(images, 1)
        driver = self.driver_python + self.driver_jvm
        return {
            "job": round((driver + self.workers) * per, 2),
            "emulator": round(self.emulator * per, 2),
            "driver": round(driver * per, 2),
            "driver_python": round(self.driver_python * per, 2),
            "driver_jvm": round(self.driver_jvm * per, 2),
            "workers": round(self.workers * per, 2),
        }


def job_cpu(*, emulator_pid: int) -> JobCpu:
    """Now: the emulator's process, this (driver) process, its JVM, and that JVM's Spark Python workers (another
    Spark on the machine is not counted)."""
    me, tree = os.getpid(), parents()
    jvms = [pid for pid, parent in tree.items() if parent == me and pid != emulator_pid]
    workers = [pid for jvm in jvms for pid in descendants(jvm, tree) if runs(pid, b"pyspark.daemon")]
    return JobCpu(
        emulator=_total([emulator_pid]),
        driver_python=cpu_s(me, reaped=False),
        driver_jvm=_total(jvms, reaped=False),
        # The daemon and its live forks; forks already gone are in the daemon's reaped time.
        workers=_total(workers),
    )


def _total(pids: Iterable[int], *, reaped: bool = True) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_s(pid, reaped=reaped)
        except OSError:  # gone since it was listed: its time is in its parent's reaped time
            continue
    return total
