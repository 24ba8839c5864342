"""The featurization job on a real Spark standalone cluster on loopback: executors follow the backlog.

The Spark drivers run in child processes: the first session of a process fixes its JVM's system properties
(PySpark launches the JVM with that session's conf), so a driver here would leak a cluster's settings into the
other tests' sessions, or find one of theirs already running.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pomona.bench.autoscale import changes
from pomona.local.spark_cluster import LOOPBACK, is_running, standalone_cluster

# A driver that runs one job on the cluster named by argv[1], says so, and keeps its executors until stdin closes.
DRIVER = """
import sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master(sys.argv[1]).appName("pomona-cluster-test")
         .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.executor.memory", "512m").getOrCreate())
print(spark.sparkContext.parallelize(range(8), 2).map(lambda x: x * 2).sum(), flush=True)
sys.stdin.read()
"""


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": LOOPBACK}


def _stop(child: subprocess.Popen[str]) -> None:
    """SIGINT first, so the child's `finally` blocks stop what it started; SIGKILL if it does not exit."""
    if child.poll() is None:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _end(driver: subprocess.Popen[str]) -> None:
    """Kill a driver that owns nothing to clean up; its JVM exits when its stdin, the driver's pipe, closes."""
    driver.kill()
    driver.communicate()  # waits, and closes the pipes


def _listening(url: str) -> bool:
    """Whether something listens on `url`'s port (with SO_REUSEADDR, closed connections don't count)."""
    port = int(url.rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # no /proc here, or the process has ended
        return b""


@pytest.mark.slow
def test_cluster_stopped_under_a_running_application_leaves_nothing_behind(tmp_path: Path) -> None:
    # GIVEN a master and two one-core workers on loopback, and an application whose executors ran Python tasks
    with standalone_cluster(2, log_dir=tmp_path) as cluster:
        state = cluster.state()
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, cluster.master_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=_child_env(),
        )
        try:
            assert driver.stdout is not None
            total = driver.stdout.readline().strip()
            pids = cluster.pids()
            commands = {_command(pid) for pid in pids}
            # WHEN the cluster stops with the application still running (as when a benchmark fails)
        except BaseException:
            _end(driver)
            raise
    try:
        # THEN the workers had registered with their core each, and the tasks ran
        assert (state["status"], state["aliveworkers"], state["cores"]) == ("ALIVE", 2, 2)
        assert total == "56"
        if Path("/proc").exists():  # where /proc tells: executors and Python workers were among them
            assert any(b"CoarseGrainedExecutorBackend" in c for c in commands)
            assert any(b"pyspark.daemon" in c for c in commands)
        # THEN no process it started runs any more and its ports are free
        assert [pid for pid in pids if is_running(pid)] == []
        assert not _listening(cluster.master_url)
        assert not _listening(cluster.web_url)
        assert "Registering worker" in (tmp_path / "master.log").read_text()
    finally:
        _end(driver)


@pytest.mark.slow
def test_executors_scale_up_with_the_backlog_and_back_to_zero(tmp_path: Path) -> None:
    # GIVEN 128 synthetic uploads accepted by the ingestion handler, and a cluster of two one-core workers
    # WHEN the job runs with dynamic allocation from zero executors (at most two, released after 5 s idle)
    command = [sys.executable, "-m", "pomona.bench.autoscale", "--images", "128", "--workers", "2"]
    command += ["--after-s", "25", "--cache-dir", str(tmp_path / "cache")]
    bench = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env()
    )
    try:
        out, err = bench.communicate(timeout=600)
    finally:
        _stop(bench)
    assert bench.returncode == 0, err[-3000:]
    result: dict[str, Any] = json.loads(out)

    # THEN it starts with none, has two while there is work, and is back to none after the idle timeout
    samples, job_s = [tuple(s) for s in result["samples"]], result["job_s"]
    assert samples[0] == (0.0, 0)
    assert max(n for t, n in samples if t <= job_s) == 2
    assert job_s < result["released_s"] <= job_s + 20
    assert result["executors_at_end"] == 0
    assert all(e["removed_s"] is not None for e in result["executors"]), result["executors"]
    assert all(e["added_s"] < e["removed_s"] <= result["released_s"] + 1 for e in result["executors"])
    # THEN the batch commits every image
    assert result["queued"] == 128
    assert result["committed"] == 128


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param([(0.0, 0), (0.5, 1), (1.0, 1), (1.5, 0)], [(0.0, 0), (0.5, 1), (1.5, 0)], id="up-down"),
        pytest.param([(0.0, 0), (0.5, 0)], [(0.0, 0), (0.5, 0)], id="flat-keeps-the-last"),
        pytest.param([], [], id="empty"),
    ],
)
def test_changes_keep_the_turning_points(
    samples: list[tuple[float, int]], expected: list[tuple[float, int]]
) -> None:
    assert changes(samples) == expected
