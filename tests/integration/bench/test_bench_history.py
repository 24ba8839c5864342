"""`pomona bench history` end to end, small: two histories, the same batch, one run after each.

It runs as the command does, in a child process: the bench starts its own stacks and driver processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from pomona.bench.history import count_requests, recorded, recorder, stack_process
from pomona.core.settings import Settings

pytestmark = pytest.mark.slow


def test_requests_are_named_by_service_and_operation() -> None:
    # GIVEN the bench's stack, in its own process, recording what it receives
    with stack_process() as (env, recording):
        settings = Settings.from_env(env)
        s3, dynamodb, sqs = (
            boto3.client(name, endpoint_url=settings.endpoint_url) for name in ("s3", "dynamodb", "sqs")
        )
        recorder(settings.endpoint_url, "start-recording")

        # WHEN a client makes one call of each kind the job makes
        s3.put_object(Bucket=settings.bucket, Key="a/b", Body=b"x")
        s3.get_object(Bucket=settings.bucket, Key="a/b")
        s3.head_object(Bucket=settings.bucket, Key="a/b")
        s3.list_objects_v2(Bucket=settings.bucket, Prefix="a/")
        s3.delete_objects(Bucket=settings.bucket, Delete={"Objects": [{"Key": "a/b"}]})
        s3.put_object(Bucket=settings.bucket, Key="iceberg/features/metadata/v1.metadata.json", Body=b"{}")
        dynamodb.batch_get_item(RequestItems={settings.seen_table: {"Keys": [{"sha256": {"S": "a"}}]}})
        sqs.receive_message(QueueUrl=settings.images_queue_url, WaitTimeSeconds=0)
        recorder(settings.endpoint_url, "stop-recording")
        counts = count_requests(recorded(recording))

    # THEN each is counted once under its service and operation, the Iceberg tables' files apart
    assert counts == {
        "total": 8,
        "dynamodb:BatchGetItem": 1,
        "s3:DeleteObjects": 1,
        "s3:GetObject": 1,
        "s3:HeadObject": 1,
        "s3:ListObjectsV2": 1,
        "s3:PutObject": 1,
        "s3-tables:PutObject": 1,
        "sqs:ReceiveMessage": 1,
    }


def test_bench_history_runs_the_same_batch_after_each_history(tmp_path: Path) -> None:
    # GIVEN no history, and 3,000 committed images in 2 batches
    command = [
        str(Path(sys.executable).parent / "pomona"), "bench", "history", "--seen", "0", "--seen", "3000",
        "--images", "12",
    ]  # fmt: skip
    # (in a shell with no AWS settings: the bench gives each level its own stack's)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"POMONA_CACHE_DIR": str(tmp_path / "cache"), "SPARK_LOCAL_IP": "127.0.0.1"}

    # WHEN the benchmark runs
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, check=False)

    # THEN it prints one JSON object with a run per history, each featurizing the same 12 images
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    empty, full = result["runs"]
    assert (empty["seen"], full["seen"]) == (0, 3000)
    assert empty["featurized"] == full["featurized"] == 12
    assert all(run["run_s"] > 0 and run["driver_peak_rss_mb"] > 0 for run in result["runs"])
    # AND the dedupe index is looked up once and written once, whatever the history
    for run in (empty, full):
        assert run["requests"]["dynamodb:BatchGetItem"] >= 1
        assert run["requests"]["dynamodb:BatchWriteItem"] == 1
    assert full["requests"]["dynamodb:BatchGetItem"] == empty["requests"]["dynamodb:BatchGetItem"]
    # AND after history the run reads what an empty deployment lacks (LATEST, the version's metadata, its merge
    # state and the classifier's training statistics and holdout), but lists and reads nothing that grows with it
    # (the tables' own files are counted apart, as s3-tables)
    assert full["requests"]["s3:ListObjectsV2"] == empty["requests"]["s3:ListObjectsV2"]
    assert 0 < full["requests"]["s3:GetObject"] - empty["requests"]["s3:GetObject"] <= 6
    # AND each table is committed once per run, and created only by the first (`bench history --batch-images`
    # shows the tables' requests flat from 100 to 300 batches: README, "Tables" under Benchmarks)
    assert full["requests"]["glue:UpdateTable"] == empty["requests"]["glue:UpdateTable"] == 2
    assert empty["requests"]["glue:CreateTable"] == 2
    assert "glue:CreateTable" not in full["requests"]
    assert result["ratios_to_first"][0]["seen"] == 3000
