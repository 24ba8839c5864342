"""`pomona.ops.spark_operator` and `pomona cluster …`: the real kubernetes client over real HTTP to a local API stand-in.

The ScheduledSparkApplication the stand-in serves is the chart's own render, so a manual run is checked against
what the chart deploys; the stand-in rejects any SparkApplication its CRD schema would.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_standin import KubeStandIn
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from manifests import Render, crd_errors, one
from typer.testing import CliRunner

from pomona.cli.cluster import app
from pomona.local.stack import LOCAL_ENV, local_session
from pomona.ops import spark_operator as cluster
from pomona.ops.spark_operator import (
    BACKLOG_SINCE_ANNOTATION,
    SCHEDULED_APP_LABEL,
    SCHEDULED_APPLICATIONS,
    SPARK_APPLICATIONS,
    TRIGGERED_BY_LABEL,
    RunTimeoutError,
)

NS = "pomona"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def scheduled_manifest(render: Render) -> dict[str, Any]:
    return one(render(), "ScheduledSparkApplication")


@pytest.fixture
def kube(scheduled_manifest: dict[str, Any]) -> Iterator[KubeStandIn]:
    standin = KubeStandIn()
    standin.add(scheduled_manifest)
    with standin.serving():
        yield standin


@pytest.fixture
def api(kube: KubeStandIn) -> Iterator[client.CustomObjectsApi]:
    with client.ApiClient(client.Configuration(host=kube.url)) as api_client:
        yield client.CustomObjectsApi(api_client)


@pytest.fixture
def images_queue(moto_endpoint: str) -> tuple[Any, str]:
    sqs = local_session().client("sqs", endpoint_url=moto_endpoint)
    return sqs, sqs.create_queue(QueueName=f"images-{uuid.uuid4().hex[:8]}")["QueueUrl"]


@pytest.fixture
def queue_settings(
    images_queue: tuple[Any, str], moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, str]:
    """The images queue, named in the environment as the CLI's settings read it."""
    _, queue_url = images_queue
    for var, value in {
        **LOCAL_ENV,
        "POMONA_IMAGES_QUEUE_URL": queue_url,
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(var, value)
    return images_queue


def _send(sqs: Any, queue_url: str, count: int) -> None:
    for start in range(0, count, 10):
        entries = [{"Id": str(i), "MessageBody": "{}"} for i in range(start, min(start + 10, count))]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)


def _run(name: str, *, state: str, created: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}, "creationTimestamp": created},
        "status": {"applicationState": {"state": state}},
    }


# -- pure --------------------------------------------------------------------------------------------------------


def test_manual_run_is_the_schedule_template_and_passes_the_crd(kube: KubeStandIn) -> None:
    scheduled = kube.get(SCHEDULED_APPLICATIONS, NS, "pomona")

    application = cluster.application_from_schedule(scheduled, name="pomona-manual-1", triggered_by="manual")

    assert crd_errors(application) == []
    assert application["spec"] == scheduled["spec"]["template"]
    assert application["metadata"]["labels"][SCHEDULED_APP_LABEL] == "pomona"
    assert application["metadata"]["labels"][TRIGGERED_BY_LABEL] == "manual"
    assert application["metadata"]["ownerReferences"][0]["uid"] == scheduled["metadata"]["uid"]


@pytest.mark.parametrize(
    ("scheduled_name", "expected"),
    [
        pytest.param("pomona", "pomona-manual-20260301120000", id="short"),
        pytest.param("x" * 60, "x" * 41 + "-manual-20260301120000", id="shortened-to-a-label-value"),
    ],
)
def test_run_name(scheduled_name: str, expected: str) -> None:
    name = cluster.run_name(scheduled_name, now=NOW)

    assert name == expected
    assert len(name) <= 63


@pytest.mark.parametrize(
    ("backlog", "since", "active", "start", "new_since"),
    [
        pytest.param(0, NOW - timedelta(hours=2), [], False, None, id="empty-queue-forgets"),
        pytest.param(500, None, [], True, None, id="enough-work"),
        pytest.param(10, None, [], False, NOW, id="small-backlog-first-seen"),
        pytest.param(
            10, NOW - timedelta(minutes=59), [], False, NOW - timedelta(minutes=59), id="still-waiting"
        ),
        pytest.param(10, NOW - timedelta(hours=1), [], True, None, id="waited-long-enough"),
        pytest.param(
            5000, NOW - timedelta(hours=3), ["pomona-1"], False, NOW - timedelta(hours=3), id="run-active"
        ),
    ],
)
def test_decide_trigger(
    backlog: int, since: datetime | None, active: list[str], start: bool, new_since: datetime | None
) -> None:
    decision = cluster.decide_trigger(
        backlog=backlog,
        backlog_since=since,
        active=active,
        now=NOW,
        min_backlog=500,
        max_wait=timedelta(hours=1),
    )

    assert (decision.start, decision.backlog_since) == (start, new_since)


def test_summarize_runs_newest_first_with_durations() -> None:
    runs = [
        _run("old", state="COMPLETED", created="2026-03-01T10:00:00Z"),
        _run("new", state="RUNNING", created="2026-03-01T11:00:00Z", labels={TRIGGERED_BY_LABEL: "manual"}),
    ]
    runs[0]["status"]["terminationTime"] = "2026-03-01T10:12:30Z"

    summaries = cluster.summarize_runs(runs)

    assert [(s.name, s.state, s.triggered_by) for s in summaries] == [
        ("new", "RUNNING", "manual"),
        ("old", "COMPLETED", "schedule"),
    ]
    assert summaries[1].duration == timedelta(minutes=12, seconds=30)
    assert summaries[0].duration is None


# -- against the API stand-in ------------------------------------------------------------------------------------


def test_run_once_creates_a_run_and_follows_it_to_completion(
    kube: KubeStandIn, api: client.CustomObjectsApi
) -> None:
    seen: list[str] = []

    outcome = cluster.run_once(
        api,
        namespace=NS,
        scheduled_name="pomona",
        wait=True,
        timeout=10,
        poll_interval=0.01,
        on_state=seen.append,
    )

    assert outcome.succeeded
    assert outcome.name.startswith("pomona-manual-")
    assert seen == ["SUBMITTED", "RUNNING", "COMPLETED"]
    created = kube.get(SPARK_APPLICATIONS, NS, outcome.name)
    assert created["spec"] == kube.get(SCHEDULED_APPLICATIONS, NS, "pomona")["spec"]["template"]


def test_run_once_reports_a_failed_run(kube: KubeStandIn, api: client.CustomObjectsApi) -> None:
    kube.run_states = ["SUBMITTED", "FAILED"]
    kube.run_error = "driver container failed with ExitCode: 1"

    outcome = cluster.run_once(
        api, namespace=NS, scheduled_name="pomona", wait=True, timeout=10, poll_interval=0.01
    )

    assert (outcome.succeeded, outcome.state, outcome.error) == (False, "FAILED", kube.run_error)


def test_run_once_times_out_on_a_run_that_does_not_finish(
    kube: KubeStandIn, api: client.CustomObjectsApi
) -> None:
    kube.run_states = ["SUBMITTED", "RUNNING"]

    with pytest.raises(RunTimeoutError, match=r"expected COMPLETED or FAILED within 0.2 s, found RUNNING"):
        cluster.run_once(
            api, namespace=NS, scheduled_name="pomona", wait=True, timeout=0.2, poll_interval=0.02
        )


def test_run_once_without_wait_only_creates(kube: KubeStandIn, api: client.CustomObjectsApi) -> None:
    outcome = cluster.run_once(api, namespace=NS, scheduled_name="pomona", wait=False)

    assert outcome.state == ""
    assert kube.requests == [
        ("GET", f"/apis/sparkoperator.k8s.io/v1beta2/namespaces/{NS}/scheduledsparkapplications/pomona"),
        ("POST", f"/apis/sparkoperator.k8s.io/v1beta2/namespaces/{NS}/sparkapplications"),
    ]


def test_run_once_without_a_schedule_is_a_404(api: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as caught:
        cluster.run_once(api, namespace=NS, scheduled_name="nope", wait=False)

    assert caught.value.status == 404


def test_status_lists_only_the_schedules_runs(kube: KubeStandIn, api: client.CustomObjectsApi) -> None:
    # GIVEN a run the operator started, a manual one, and an unrelated application
    template = kube.get(SCHEDULED_APPLICATIONS, NS, "pomona")["spec"]["template"]
    for name, labels, created in [
        ("pomona-1772366400", {SCHEDULED_APP_LABEL: "pomona"}, "2026-03-01T12:00:00Z"),
        ("other-app", {}, "2026-03-01T12:30:00Z"),
    ]:
        kube.add({"apiVersion": "sparkoperator.k8s.io/v1beta2", "kind": "SparkApplication", "spec": template,
                  "metadata": {"name": name, "namespace": NS, "labels": labels, "creationTimestamp": created}})  # fmt: skip
    manual = cluster.run_once(api, namespace=NS, scheduled_name="pomona", wait=False).name

    # WHEN
    runs = cluster.status(api, namespace=NS, scheduled_name="pomona")

    # THEN newest first, the unrelated application left out
    assert [(r.name, r.triggered_by) for r in runs] == [(manual, "manual"), ("pomona-1772366400", "schedule")]


def test_trigger_starts_a_run_when_the_backlog_is_large(
    kube: KubeStandIn, api: client.CustomObjectsApi, images_queue: tuple[Any, str]
) -> None:
    sqs, queue_url = images_queue
    _send(sqs, queue_url, 12)

    outcome = cluster.trigger(
        api, sqs, namespace=NS, scheduled_name="pomona", queue_url=queue_url, min_backlog=10,
        max_wait=timedelta(hours=1), now=NOW,
    )  # fmt: skip

    assert (outcome.backlog, outcome.started) == (12, "pomona-backlog-20260301120000")
    started = kube.get(SPARK_APPLICATIONS, NS, "pomona-backlog-20260301120000")
    assert started["metadata"]["labels"][TRIGGERED_BY_LABEL] == "backlog"


def test_trigger_waits_on_a_small_backlog_then_starts(
    kube: KubeStandIn, api: client.CustomObjectsApi, images_queue: tuple[Any, str]
) -> None:
    sqs, queue_url = images_queue
    _send(sqs, queue_url, 3)

    def trigger_at(now: datetime) -> cluster.TriggerOutcome:
        return cluster.trigger(
            api, sqs, namespace=NS, scheduled_name="pomona", queue_url=queue_url, min_backlog=10,
            max_wait=timedelta(minutes=30), now=now,
        )  # fmt: skip

    # WHEN first seen, the backlog's start is remembered on the schedule
    first = trigger_at(NOW)
    annotations = kube.get(SCHEDULED_APPLICATIONS, NS, "pomona")["metadata"]["annotations"]
    assert (first.started, annotations[BACKLOG_SINCE_ANNOTATION]) == (None, "2026-03-01T12:00:00Z")

    # WHEN it has waited long enough, a run starts and the mark is cleared
    later = trigger_at(NOW + timedelta(minutes=30))
    assert later.started == "pomona-backlog-20260301123000"
    assert (
        BACKLOG_SINCE_ANNOTATION
        not in kube.get(SCHEDULED_APPLICATIONS, NS, "pomona")["metadata"]["annotations"]
    )


def test_trigger_leaves_an_active_run_alone(
    kube: KubeStandIn, api: client.CustomObjectsApi, images_queue: tuple[Any, str]
) -> None:
    sqs, queue_url = images_queue
    _send(sqs, queue_url, 20)
    running = cluster.run_once(api, namespace=NS, scheduled_name="pomona", wait=False).name

    outcome = cluster.trigger(
        api, sqs, namespace=NS, scheduled_name="pomona", queue_url=queue_url, min_backlog=10,
        max_wait=timedelta(hours=1), now=NOW,
    )  # fmt: skip

    assert (outcome.started, outcome.active) == (None, (running,))
    assert outcome.decision.reason == f"run {running} is active"


# -- the CLI -----------------------------------------------------------------------------------------------------


@pytest.fixture
def kubeconfig(kube: KubeStandIn, tmp_path: Path) -> list[str]:
    """CLI arguments pointing at the stand-in."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "standin", "cluster": {"server": kube.url}}],
                "users": [{"name": "standin", "user": {"token": "standin"}}],
                "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin"}}],
                "current-context": "standin",
            }
        )
    )
    return ["--kubeconfig", str(path)]


def test_cli_run_wait_prints_the_states(kubeconfig: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster.time, "sleep", lambda _: None)

    result = CliRunner().invoke(app, ["run", "--wait", "--timeout", "10", *kubeconfig])

    assert result.exit_code == 0, result.output
    assert "COMPLETED" in result.stdout
    assert "RUNNING" in result.stdout


def test_cli_run_wait_exits_1_on_a_failed_run(
    kube: KubeStandIn, kubeconfig: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster.time, "sleep", lambda _: None)
    kube.run_states = ["SUBMITTED", "FAILED"]
    kube.run_error = "executor lost"

    result = CliRunner().invoke(app, ["run", "--wait", *kubeconfig])

    assert result.exit_code == 1
    assert "FAILED: executor lost" in result.stderr


def test_cli_errors_are_one_line(kubeconfig: list[str]) -> None:
    result = CliRunner().invoke(app, ["run", "--name", "missing", *kubeconfig])

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        'error: Kubernetes API: 404 Not Found: scheduledsparkapplications.sparkoperator.k8s.io "missing" not found'
    ]
    assert "Traceback" not in result.output


def test_cli_status_shows_runs_and_the_backlog(
    kubeconfig: list[str], queue_settings: tuple[Any, str]
) -> None:
    _send(*queue_settings, 3)
    started = CliRunner().invoke(app, ["run", *kubeconfig])
    assert started.exit_code == 0, started.output

    result = CliRunner().invoke(app, ["status", *kubeconfig], env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    assert "backlog: 3 images waiting on the images queue" in result.stdout
    assert "pomona-manual-" in result.stdout
    assert "manual" in result.stdout


def test_cli_status_without_a_queue_says_the_backlog_is_unknown(
    kubeconfig: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POMONA_IMAGES_QUEUE_URL", raising=False)

    result = CliRunner().invoke(app, ["status", *kubeconfig], env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    assert "backlog: unknown (set POMONA_IMAGES_QUEUE_URL" in result.stdout


def test_cli_trigger_reads_the_queue_from_settings(
    kubeconfig: list[str], queue_settings: tuple[Any, str]
) -> None:
    _send(*queue_settings, 2)

    result = CliRunner().invoke(app, ["trigger", "--min-backlog", "2", *kubeconfig])

    assert result.exit_code == 0, result.output
    assert "started pomona-backlog-" in result.stdout
    assert "2 messages ≥ 2" in result.stdout


def test_cli_trigger_needs_the_queue_url(kubeconfig: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POMONA_IMAGES_QUEUE_URL", raising=False)

    result = CliRunner().invoke(app, ["trigger", *kubeconfig])

    assert result.exit_code == 1
    assert "expected POMONA_IMAGES_QUEUE_URL to name the images queue, found it unset" in result.stderr
