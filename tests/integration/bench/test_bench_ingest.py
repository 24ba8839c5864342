"""`pomona bench ingest` end to end, small: uploads → Lambda handler → one job run, and its accounting.

It runs as the command does, in a child process: the bench starts (and stops) its own Spark session, which must
not be this process's shared one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pomona.bench.ingest import accounting_holds, bench_files
from pomona.core.settings import Settings

pytestmark = pytest.mark.slow


def test_bench_files_mix_bad_uploads_and_duplicates_in() -> None:
    files = bench_files(20, Settings(), bad_every=10, duplicate_every=4)

    keys = [key for key, _ in files]
    assert len(set(keys)) == 20
    assert sum(key.startswith("uploads/Unknown/") for key in keys) == 2
    assert files[3][1] == files[2][1]  # the 4th repeats the 3rd's bytes under its own key
    assert len({body for _, body in files}) == 16  # the 4th, 8th, 12th and 16th repeat; the 20th is bad


def test_bench_ingest_accounts_for_every_upload(tmp_path: Path) -> None:
    # GIVEN 60 uploads, every 20th bad and every 7th a duplicate
    command = [
        str(Path(sys.executable).parent / "pomona"), "bench", "ingest", "--count", "60", "--bad-every", "20",
        "--duplicate-every", "7",
    ]  # fmt: skip
    env = {**os.environ, "POMONA_CACHE_DIR": str(tmp_path / "cache"), "SPARK_LOCAL_IP": "127.0.0.1"}

    # WHEN the benchmark runs
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, check=False)

    # THEN it prints one JSON object (nothing of the handler's logs) whose accounting closes
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert accounting_holds(result)
    assert (result["uploaded"], result["quarantined"], result["missing"]) == (60, 3, 0)
    assert result["duplicates"] >= 1
    assert all(result[f"{stage}_img_s"] > 0 for stage in ("upload", "ingest", "featurize", "end_to_end"))
    # ... and the queue depths were sampled from the first upload to the end, where both queues are empty
    assert result["queue_depth"][-1][1:] == [0, 0]
    assert max(images for _, _, images in result["queue_depth"]) > 0
