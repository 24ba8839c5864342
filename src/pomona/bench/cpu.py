"""CPU time per process, from /proc: where every CPU-millisecond of a benchmark went.

A process's time is its user + system time, plus that of its children it has reaped (a pyspark daemon's forked
workers, once they exit). Linux only: elsewhere the figures are absent rather than wrong.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


def cpu_s(pid: int, *, reaped: bool = True) -> float:
    """User + system CPU seconds of process `pid` (and, with `reaped`, of the children it has waited for)."""
    fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    # After the command's closing parenthesis: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    utime, stime, cutime, cstime = (int(fields[i - 3]) for i in (14, 15, 16, 17))
    ticks = utime + stime + ((cutime + cstime) if reaped else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def parents() -> dict[int, int]:
    """Every live process's parent: pid → ppid."""
    found = {}
    for proc in _PROC.iterdir():
        if proc.name.isdigit():
            try:
                found[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return found


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
        return marker in (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False


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
