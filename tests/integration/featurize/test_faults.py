"""The featurization job under faults: killed at every commit phase, two runs at once, a flaky network.

The guarantee under test, after a clean run has followed whatever went wrong: every valid image is in the
committed outputs exactly once (by sha256), the LATEST PCA has seen each exactly once, no message is stuck on
the queue, and no file of an uncommitted run is left beside the committed ones.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest.mock import ANY

import boto3
import pyarrow.parquet as pq
import pytest
from job_process import (
    JOB_TIMEOUT_S,
    KILLED,
    SHORT_VISIBILITY_S,
    Uploaded,
    expire_leases,
    expire_lock,
    finish,
    list_keys,
    queue_depth,
    start_job,
    table_contents,
    wait_until_visible,
)

from fault_proxy import TRANSIENT, Call, Fault, FlakyProxy, Plan
from pomona.core.aws import get_json, put_json
from pomona.core.outputs import (
    CommittedOutputs,
    Latest,
    lock_key,
    pca_latest_key,
    pca_prefix,
)
from pomona.core.settings import Settings
from pomona.featurize.commit import Committer
from pomona.featurize.driver import BatchResult, Job, JobOptions, run_job
from pomona.featurize.entry import EXIT_CONCURRENT_RUN
from pomona.featurize.index import SeenIndex
from pomona.featurize.lock import ConcurrentRunError, RunLock
from pomona.featurize.recovery import Recovery
from pomona.ml.pca import load_state
from pomona.testing.samples import SYNTHETIC_LABELS

pytestmark = pytest.mark.slow

# Phases after LATEST moved: the killed run's batch is committed and the next run only finishes it.
ROLLED_FORWARD = ("after_latest", "after_index", "after_tables", "after_manifest", "mid_delete")
PHASES = ("after_receive", "after_features", "after_pca_version", *ROLLED_FORWARD)


# -- running the job ---------------------------------------------------------------------------------------------


def _run_until_drained(
    spark: Any, settings: Settings, job_options: JobOptions, *, max_runs: int = 4
) -> list[BatchResult]:
    """Clean runs, as the schedule would start them, until no message is left: returns what each did."""
    results: list[BatchResult] = []
    for _ in range(max_runs):
        wait_until_visible(settings)
        results.append(run_job(spark, settings, job_options))
        if queue_depth(settings) == (0, 0):
            return results
    pytest.fail(f"expected the queue to drain within {max_runs} runs, found {queue_depth(settings)} left")


# -- the state of a deployment -----------------------------------------------------------------------------------


def _batch_ids(settings: Settings) -> set[str]:
    """Batches with part files, committed or not."""
    return {
        key.split("batch_id=", 1)[1].split("/", 1)[0]
        for folder in ("features/", "projections/")
        for key in list_keys(settings, folder)
    }


def _column(settings: Settings, keys: list[str], column: str) -> list[Any]:
    s3 = boto3.client("s3")
    values: list[Any] = []
    for key in keys:
        body = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
        values += pq.read_table(io.BytesIO(body), columns=[column]).column(column).to_pylist()
    return values


def _assert_committed_exactly_once(settings: Settings, shas: frozenset[str]) -> list[dict[str, Any]]:
    """The end-to-end guarantee; returns the committed manifests."""
    s3 = boto3.client("s3")
    manifests = CommittedOutputs.in_bucket(s3, settings).manifests()
    features = [k for m in manifests for k in m["files"]["features"]]
    projections = [k for m in manifests for k in m["files"]["projections"]]
    # Every valid image once in the committed features and projections, nothing else.
    assert Counter(_column(settings, features, "sha256")) == Counter(shas)
    assert Counter(_column(settings, projections, "sha256")) == Counter(shas)
    # The PCA the readers use has seen each image once.
    version = CommittedOutputs.in_bucket(s3, settings).latest_version()
    committed = max(manifests, key=lambda m: int(m["pca_version"]))
    state_npz = s3.get_object(
        Bucket=settings.bucket,
        Key=pca_prefix(settings.output_prefix, version, committed["batch_id"]) + "state.npz",
    )
    state = load_state(state_npz["Body"].read())
    assert state.n == len(shas)
    assert max(m["pca_version"] for m in manifests) == version
    # Nothing stuck: no message visible or in flight, none dead-lettered.
    assert queue_depth(settings) == (0, 0)
    dead = boto3.client("sqs").receive_message(QueueUrl=settings.images_dlq_url, MaxNumberOfMessages=10)
    assert dead.get("Messages", []) == []
    # No part file, PCA version or lock of an uncommitted run is left.
    assert sorted(list_keys(settings, "features/")) == sorted(features)
    assert sorted(list_keys(settings, "projections/")) == sorted(projections)
    versions = {k.split("/")[2] for k in list_keys(settings, "models/pca/v")}
    assert versions == {f"v{m['pca_version']}-{m['batch_id']}" for m in manifests}
    assert list_keys(settings, "locks/") == []  # the run lock and every run's lease released
    # The tables, read through the catalog alone: each committed batch once, in commit order, each image once.
    in_order = [m["batch_id"] for m in sorted(manifests, key=lambda m: int(m["pca_version"]))]
    for batches, images in table_contents(settings).values():
        assert (batches, Counter(images)) == (in_order, Counter(shas))
    return manifests


# -- 1. killed at each phase -------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [pytest.param(phase, id=phase) for phase in PHASES])
def test_a_run_killed_at_any_phase_loses_and_doubles_nothing(
    phase: str, spark: Any, uploaded: Uploaded, job_options: JobOptions
) -> None:
    settings = uploaded.settings

    # GIVEN 13 queued uploads (12 distinct images, one of them twice), and a run killed at `phase`
    code, output = finish(start_job(settings, fault=phase))
    assert code == KILLED, output[-3000:]
    assert "Injected fault" in output
    killed_batches = _batch_ids(settings)

    # WHEN the dead run's lock expires and clean runs follow until the queue is empty
    expire_lock(settings)
    results = _run_until_drained(spark, settings, job_options)

    # THEN every image is committed exactly once, in one batch: the killed run's if it moved LATEST
    (manifest,) = _assert_committed_exactly_once(settings, uploaded.shas)
    assert manifest["counts"]["featurized"] == len(uploaded.shas)
    assert manifest["counts"]["duplicates"] == uploaded.queued - len(uploaded.shas)
    if phase in ROLLED_FORWARD:
        assert manifest["batch_id"] in killed_batches
        assert [r.manifest for r in results] == [None] * len(results)  # the reruns only finished its commit
    else:
        assert manifest["batch_id"] not in killed_batches  # rolled back: the killed run's files are gone
        assert results[0].manifest is not None
        assert results[0].manifest["batch_id"] == manifest["batch_id"]


@pytest.mark.parametrize("phase", ["after_features", "after_pca_version", "after_latest"])
def test_a_killed_runs_files_are_spared_while_its_lease_lives_and_deleted_once_it_lapses(
    phase: str, spark: Any, uploaded: Uploaded, job_options: JobOptions
) -> None:
    settings = uploaded.settings

    # GIVEN a run killed at `phase`
    code, output = finish(start_job(settings, fault=phase))
    assert code == KILLED, output[-3000:]
    killed = _batch_ids(settings)

    # WHEN, as in production, its lock lapses first (30 min) while its lease still lives (60 min), and the next
    # runs work the queue
    expire_lock(settings, leases=False)
    results = _run_until_drained(spark, settings, job_options)

    # THEN the images are committed (by the killed run's own batch if it had moved LATEST), and the killed run's
    # files are spared while its lease lives: a run whose lock was taken over may still be alive
    manifests = CommittedOutputs.in_bucket(boto3.client("s3"), settings).manifests()
    committed = {m["batch_id"] for m in manifests}
    assert len(committed) == 1
    if phase == "after_latest":
        assert committed == killed  # rolled forward whatever its lease says: LATEST names it
        assert [r.manifest for r in results] == [None] * len(results)
    else:
        assert killed <= _batch_ids(settings) - committed  # still there, uncommitted
    assert set(expire_leases(settings)) == killed  # only the killed run's lease is left

    # AND once its lease lapses too, the next run's recovery deletes what it left: nothing lost, nothing twice,
    # no orphan, no lease
    run_job(spark, settings, job_options)
    _assert_committed_exactly_once(settings, uploaded.shas)


def test_recovery_never_deletes_files_once_another_run_moved_latest(
    spark: Any, uploaded: Uploaded, job_options: JobOptions
) -> None:
    settings = uploaded.settings
    s3 = boto3.client("s3")

    # GIVEN a run killed after writing its part files, its lock and lease lapsed
    code, output = finish(start_job(settings, fault="after_features"))
    assert code == KILLED, output[-3000:]
    (orphaned,) = _batch_ids(settings)
    expire_lock(settings)

    # WHEN a recovery reads LATEST, and another run moves LATEST before the recovery fences it
    class Overtaken(Recovery):
        def _fence(self, latest: Latest) -> bool:
            put_json(
                s3,
                settings.bucket,
                pca_latest_key(settings.output_prefix),
                {"version": 1, "batch_id": "other"},
            )
            return super()._fence(latest)

    Overtaken(Committer(s3, settings, SeenIndex(boto3.client("dynamodb"), settings.seen_table))).recover()

    # THEN the fence fails and recovery deletes nothing: the orphan's files wait for a later recovery
    assert orphaned in _batch_ids(settings)
    s3.delete_object(Bucket=settings.bucket, Key=pca_latest_key(settings.output_prefix))

    # AND a later recovery, unhindered, deletes them, and a clean run commits every image once
    _run_until_drained(spark, settings, job_options)
    assert orphaned not in _batch_ids(settings)
    _assert_committed_exactly_once(settings, uploaded.shas)


# -- 2. two runs at once -----------------------------------------------------------------------------------------


def test_two_runs_started_at_once_commit_once(
    spark: Any, uploaded: Uploaded, job_options: JobOptions
) -> None:
    settings = uploaded.settings

    # GIVEN queued uploads
    # WHEN two runs start at the same moment
    processes = [start_job(settings) for _ in range(2)]
    outcomes = sorted(finish(p) for p in processes)

    # THEN one commits; the other stops at the lock with one error line, no traceback, and writes nothing
    (won, won_log), (lost, lost_log) = outcomes
    assert (won, lost) == (0, EXIT_CONCURRENT_RUN), lost_log[-3000:]
    assert "Batch committed" in won_log
    (stopped,) = [line for line in lost_log.splitlines() if "Run stopped" in line]
    assert "ERROR" in stopped
    assert "Traceback" not in lost_log
    (manifest,) = CommittedOutputs.in_bucket(boto3.client("s3"), settings).manifests()
    assert _batch_ids(settings) == {manifest["batch_id"]}
    assert {k.split("/")[2] for k in list_keys(settings, "models/pca/v")} == {f"v1-{manifest['batch_id']}"}

    # AND a later run finds nothing left to do: every image is committed exactly once
    (later,) = _run_until_drained(spark, settings, job_options)
    assert later.manifest is None
    _assert_committed_exactly_once(settings, uploaded.shas)


def test_a_run_whose_lock_was_taken_over_commits_nothing(
    spark: Any, uploaded: Uploaded, job_options: JobOptions
) -> None:
    settings = uploaded.settings
    s3 = boto3.client("s3")

    # GIVEN a run that has taken the lock and is working
    process = start_job(settings, short_visibility=True)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while get_json(s3, settings.bucket, lock_key(settings.output_prefix)) is None and process.poll() is None:
        assert time.monotonic() < deadline, "expected the run to take the lock"
        time.sleep(0.2)

    # WHEN its lease lapses (as if its heartbeat had failed for the whole TTL) and another run takes over
    expire_lock(settings)
    other = RunLock(s3, settings.bucket, lock_key(settings.output_prefix))
    other.acquire()
    code, output = finish(process)

    # THEN the first run stops before it writes a PCA version or moves LATEST, and leaves the other's lock be
    assert code == EXIT_CONCURRENT_RUN, output[-3000:]
    assert CommittedOutputs.in_bucket(s3, settings).manifests() == []
    assert list_keys(settings, "models/") == []
    assert get_json(s3, settings.bucket, lock_key(settings.output_prefix)) == (ANY, other.etag)

    # AND once the other run is done, clean runs commit every image exactly once
    other.release()
    _run_until_drained(spark, settings, job_options)
    _assert_committed_exactly_once(settings, uploaded.shas)


class HeldBeforeItsVersion(Committer):
    """A run's committer that stops before step 2 until told to go on: a run past its fencing, slowed down."""

    def __init__(self, s3: Any, settings: Settings) -> None:
        super().__init__(s3, settings, SeenIndex(boto3.client("dynamodb"), settings.seen_table))
        self.reached, self.go_on = threading.Event(), threading.Event()

    def write_version(self, *args: Any, **kwargs: Any) -> None:
        self.reached.set()
        assert self.go_on.wait(JOB_TIMEOUT_S), "expected the test to let the held run go on"
        super().write_version(*args, **kwargs)


def test_two_runs_past_the_lock_commit_once_and_recovery_spares_the_live_ones_files(
    spark: Any, uploaded: Uploaded, job_options: JobOptions
) -> None:
    settings = uploaded.settings
    s3 = boto3.client("s3")

    # GIVEN run A, holding 7 of the 13 messages, stopped after its fencing renewal, just before its PCA version
    held = HeldBeforeItsVersion(s3, settings)
    a = Job(
        spark,
        settings.replace(max_images=7),
        dataclasses.replace(job_options, visibility_timeout_s=30),
        committer=held,
    )
    pool = ThreadPoolExecutor(1, thread_name_prefix="run-a")
    running_a = pool.submit(a.run)
    assert held.reached.wait(JOB_TIMEOUT_S), "expected run A to reach its commit"

    # WHEN the lock fails to exclude (its lease is made to look lapsed, A's own run lease is live), and run B
    # takes it over, recovers, and commits the rest of the queue
    expire_lock(settings, leases=False)
    b = run_job(spark, settings, job_options)
    assert b.manifest is not None
    assert a.batch_id in _batch_ids(settings), (
        "expected B's recovery to leave A's files be: A's lease is live"
    )

    # AND A goes on, past the lock, to write its version and move LATEST
    held.go_on.set()
    failed = running_a.exception(timeout=JOB_TIMEOUT_S)
    pool.shutdown()

    # THEN A's conditional write to LATEST fails: exactly one of the two commits, and B's version is untouched
    assert isinstance(failed, ConcurrentRunError), failed
    (manifest,) = CommittedOutputs.in_bucket(s3, settings).manifests()
    assert manifest["batch_id"] == b.manifest["batch_id"]
    latest = get_json(s3, settings.bucket, pca_latest_key(settings.output_prefix))
    assert latest is not None
    assert latest[0] == {"version": 1, "batch_id": b.manifest["batch_id"]}
    versions = {k.split("/")[2] for k in list_keys(settings, "models/pca/v")}
    assert versions == {f"v1-{b.manifest['batch_id']}", f"v1-{a.batch_id}"}
    state_npz = s3.get_object(
        Bucket=settings.bucket,
        Key=pca_prefix(settings.output_prefix, 1, b.manifest["batch_id"]) + "state.npz",
    )
    assert load_state(state_npz["Body"].read()).n == b.manifest["counts"]["featurized"]

    # AND once A's messages come back, clean runs commit every image exactly once; A's files are gone
    _run_until_drained(spark, settings, job_options)
    _assert_committed_exactly_once(settings, uploaded.shas)


# -- 3. transient AWS errors -------------------------------------------------------------------------------------


def every_kth(k: dict[str, int], faults: tuple[Fault, ...] = TRANSIENT) -> Plan:
    """Every `k[service]`-th request to that service fails, the faults taken in turn."""
    turn = itertools.cycle(faults)
    counts: Counter[str] = Counter()

    def plan(call: Call) -> Fault | None:
        counts[call.service] += 1
        return next(turn) if counts[call.service] % k[call.service] == 0 else None

    return plan


def lose_responses(puts: dict[str, set[int]]) -> Plan:
    """The n-th PUTs (counted from 1, retries included) to a key ending in a suffix land; their responses are lost."""
    counts: Counter[str] = Counter()

    def plan(call: Call) -> Fault | None:
        for suffix, lost in puts.items():
            if call.method == "PUT" and call.path.split("?")[0].endswith(suffix):
                counts[suffix] += 1
                return Fault.LOST_RESPONSE if counts[suffix] in lost else None
        return None

    return plan


def test_transient_errors_are_retried_and_commit_every_image_once(
    spark: Any, uploaded: Uploaded, job_options: JobOptions
) -> None:
    settings = uploaded.settings

    # GIVEN a network where every 5th S3 and every 3rd SQS and Glue request fails: throttled, 500, reset, response
    # lost (S3 requests include pyarrow's, which reads and writes the tables' files)
    with FlakyProxy(settings.endpoint_url or "", every_kth({"s3": 5, "sqs": 3, "glue": 3})) as proxy:
        flaky = settings.replace(endpoint_url=proxy.url)

        # WHEN the job runs through it until the queue is empty
        results = _run_until_drained(spark, flaky, dataclasses.replace(job_options, visibility_timeout_s=10))

    # THEN faults of every kind hit both driver and executors, and still every image is committed once
    kinds = Counter(fault for fault, _ in proxy.injected)
    assert set(kinds) == set(TRANSIENT), kinds
    assert {call.service for _, call in proxy.injected} == {"s3", "sqs", "glue"}
    executors = [c for _, c in proxy.injected if "versionId=" in c.path or "/part-" in c.path]
    assert executors, "expected faults in the Spark workers' requests too"
    assert results[0].manifest is not None
    _assert_committed_exactly_once(settings, uploaded.shas)


def test_a_conditional_write_whose_response_was_lost_is_not_a_conflict(
    spark: Any, uploaded: Uploaded, job_options: JobOptions, caplog: pytest.LogCaptureFixture
) -> None:
    settings = uploaded.settings

    # GIVEN a network that loses the responses of the run's conditional writes after S3 has applied them:
    # taking the lock, its first renewal, moving LATEST and writing the manifest. botocore retries each, and
    # the retry meets the precondition its own first attempt broke.
    # The lock's 2nd PUT is the retry of the 1st; its 3rd is the first renewal.
    plan = lose_responses({"locks/featurize.json": {1, 3}, "models/pca/LATEST": {1}, "/manifest.json": {1}})
    with FlakyProxy(settings.endpoint_url or "", plan) as proxy:
        # WHEN one run goes through it, renewing its lock every second
        result = run_job(
            spark, settings.replace(endpoint_url=proxy.url), dataclasses.replace(job_options, heartbeat_s=1)
        )

    # THEN that run commits every image once and kept its lock throughout
    assert len(proxy.injected) == 4, [(c.number, c.method, c.path) for _, c in proxy.injected]
    assert result.manifest is not None
    assert not [r for r in caplog.records if r.getMessage() == "Heartbeat failed"]
    _assert_committed_exactly_once(settings, uploaded.shas)


def test_an_image_denied_access_is_deferred_while_the_rest_of_its_batch_commits(
    spark: Any, uploaded: Uploaded, job_options: JobOptions
) -> None:
    settings = uploaded.settings
    denied_key = f"uploads/{SYNTHETIC_LABELS[2]}/img_5.jpg"
    fixed = threading.Event()

    def deny_one_image(call: Call) -> Fault | None:
        is_its_get = call.method == "GET" and call.path.split("?")[0].endswith(denied_key)
        return Fault.DENIED if is_its_get and not fixed.is_set() else None

    # GIVEN a bucket policy that denies the job one image's GET (S3 answers 403 AccessDenied)
    with FlakyProxy(settings.endpoint_url or "", deny_one_image) as proxy:
        denied = settings.replace(endpoint_url=proxy.url)
        options = dataclasses.replace(job_options, visibility_timeout_s=SHORT_VISIBILITY_S)

        # WHEN the job runs
        first = run_job(spark, denied, options)

        # THEN every other image commits; the denied one is counted by its error code, neither quarantined nor
        # deleted: its message comes back once its visibility timeout passes
        assert proxy.injected, "expected the proxy to deny the image's GET"
        assert first.manifest is not None
        assert first.manifest["counts"]["featurized"] == len(uploaded.shas) - 1
        assert first.manifest["counts"]["deferred"] == {"AccessDenied": 1}
        assert first.manifest["counts"]["failed"] == {}
        assert sum(queue_depth(settings)) == 1
        assert list_keys(settings, settings.quarantine_prefix) == []

        # AND once access is fixed, the next run commits it, and every image is committed exactly once
        fixed.set()
        _run_until_drained(spark, denied, options)
    _assert_committed_exactly_once(settings, uploaded.shas)
