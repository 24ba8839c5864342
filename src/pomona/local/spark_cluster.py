"""A Spark standalone cluster on loopback: one master and N workers, each a `spark-class` subprocess.

It gives local mode a real cluster manager, where dynamic allocation starts and stops executor processes as the
Spark Operator starts and stops pods on Kubernetes. The daemons come from the pyspark install (its jars hold the
master and the worker), so the driver and the cluster always run the same Spark.

Each daemon leads a process group of its own, which its executors join; stopping the cluster signals the groups
and then every process it had started, by id, so nothing outlives the context manager.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from pomona.core.errors import PomonaError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


class ClusterStartError(PomonaError, RuntimeError):
    """The standalone cluster did not come up."""


@dataclass
class StandaloneCluster:
    """A running master and its workers; `master_url` is what a SparkSession's master is set to."""

    master_url: str
    web_url: str
    log_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    def state(self) -> dict[str, Any]:
        """The master's view, from its web UI's JSON: `aliveworkers`, `coresused`, `activeapps`…"""
        with urllib.request.urlopen(f"{self.web_url}/json", timeout=5) as response:
            state: dict[str, Any] = json.load(response)
        return state

    def pids(self) -> set[int]:
        """The daemons and every process they started (executors, their Python workers) that still runs."""
        return _descendants({p.pid for p in self.processes if p.poll() is None})

    def stop(self, *, timeout_s: float = 20.0) -> None:
        """SIGTERM the daemons' process groups, then SIGKILL whatever the cluster started that still runs."""
        started = self.pids()
        for process in reversed(self.processes):  # workers first: a stopping master makes them reconnect
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(is_running(pid) for pid in started):
            for process in self.processes:
                process.poll()  # reap the daemons this process started, so they stop counting as alive
            time.sleep(0.2)
        # The pyspark daemons lead groups of their own, so they are killed by id, not by group.
        for pid in started:
            if is_running(pid):
                log.warning("Killing a cluster process that outlived SIGTERM", extra={"pid": pid})
                _signal_group(pid, signal.SIGKILL)
                _signal(pid, signal.SIGKILL)
        for process in self.processes:
            process.wait()

    def _spawn(self, name: str, *args: str, env: dict[str, str]) -> None:
        spark_class = str(spark_home() / "bin" / "spark-class")
        with (self.log_dir / f"{name}.log").open("wb") as out:
            self.processes.append(
                subprocess.Popen(
                    [spark_class, *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # a process group of its own, which its executors join
                )
            )

    def _wait_for_workers(self, workers: int, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        alive = 0
        while time.monotonic() < deadline:
            for process, name in zip(self.processes, self._names(), strict=True):
                if process.poll() is not None:
                    raise ClusterStartError(
                        f"expected the {name} to keep running, it exited with {process.returncode}: "
                        f"{_tail(self.log_dir / f'{name}.log')}"
                    )
            try:
                alive = int(self.state().get("aliveworkers", 0))
            except OSError:  # the master's web UI is not up yet
                alive = 0
            if alive >= workers:
                return
            time.sleep(0.5)
        raise ClusterStartError(
            f"expected {workers} workers registered with {self.master_url} within {timeout_s:.0f} s, "
            f"found {alive} (logs in {self.log_dir})"
        )

    def _names(self) -> list[str]:
        return ["master"] + [f"worker-{i}" for i in range(len(self.processes) - 1)]


def spark_home() -> Path:
    """The pyspark install: its `bin/spark-class` and jars run the same Spark as the driver."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def start_cluster(
    workers: int = 2,
    *,
    cores: int = 1,
    memory: str = "2g",
    log_dir: Path | None = None,
    timeout_s: float = 120.0,
) -> StandaloneCluster:
    """Start a master and `workers` workers (`cores` and `memory` each) on free loopback ports.

    Returns once every worker has registered with the master; stops what it started if that fails.
    """
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="pomona-cluster-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    port, web_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": LOOPBACK,
        # A taken port must fail the master, not move it silently to the next one the URLs don't name; the
        # submission REST server is unused and would take the fixed port 6066.
        "SPARK_MASTER_OPTS": "-Dspark.port.maxRetries=0 -Dspark.master.rest.enabled=false",
    }
    cluster = StandaloneCluster(
        master_url=f"spark://{LOOPBACK}:{port}", web_url=f"http://{LOOPBACK}:{web_port}", log_dir=log_dir
    )
    try:
        cluster._spawn(
            "master",
            MASTER_CLASS,
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--webui-port",
            str(web_port),
            env=env,
        )
        for i in range(workers):
            work_dir = log_dir / f"worker-{i}"
            cluster._spawn(
                f"worker-{i}",
                WORKER_CLASS,
                *("--host", LOOPBACK, "--cores", str(cores), "--memory", memory),
                *("--webui-port", "0", "--work-dir", str(work_dir), cluster.master_url),
                env=env,
            )
        cluster._wait_for_workers(workers, timeout_s=timeout_s)
    except BaseException:
        cluster.stop()
        raise
    log.info("Standalone cluster ready", extra={"master": cluster.master_url, "workers": workers})
    return cluster


@contextmanager
def standalone_cluster(
    workers: int = 2, *, log_dir: Path | None = None, **kwargs: Any
) -> Iterator[StandaloneCluster]:
    """`start_cluster` as a context manager; a temporary log folder is removed after a clean exit only."""
    cluster = start_cluster(workers, log_dir=log_dir, **kwargs)
    try:
        yield cluster
    except BaseException:
        log.error("Cluster logs kept", extra={"log_dir": str(cluster.log_dir)})
        raise
    finally:
        cluster.stop()
    if log_dir is None:
        shutil.rmtree(cluster.log_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


def _descendants(roots: set[int]) -> set[int]:
    """`roots` and their descendants still alive."""
    found = set(roots)
    for pid in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    return found


def is_running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie has: it holds no port and runs nothing)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _signal(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group has no process left
        os.killpg(pgid, signum)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
