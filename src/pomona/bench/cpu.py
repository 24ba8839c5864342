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


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid`."""
    found = []
    for proc in _PROC.iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(proc.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def pids_running(marker: bytes) -> list[int]:
    """The pids whose command line contains `marker` (e.g. b"pyspark.daemon")."""
    found = []
    for proc in _PROC.iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


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
    """Now: the emulator's process, this (driver) process, its JVM children, and the Spark Python workers."""
    me = os.getpid()
    jvms = [pid for pid in children(me) if pid != emulator_pid]
    return JobCpu(
        emulator=_total([emulator_pid]),
        driver_python=cpu_s(me, reaped=False),
        driver_jvm=_total(jvms, reaped=False),
        # The daemon and its live forks; forks already gone are in the daemon's reaped time.
        workers=_total(pids_running(b"pyspark.daemon")),
    )


def _total(pids: Iterable[int], *, reaped: bool = True) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_s(pid, reaped=reaped)
        except OSError:  # gone since it was listed: its time is in its parent's reaped time
            continue
    return total
