"""Drive the featurization job on Kubernetes: start a run now, list runs, start a run when the queue has work.

One source of truth: the Helm chart renders the job's SparkApplication spec once, as the ScheduledSparkApplication's
`.spec.template`; a run started here copies that template from the cluster. A manual run is labelled and owned like
the operator's scheduled runs (`sparkoperator.k8s.io/scheduled-app-name`), so the schedule's `Forbid` policy and
run-history limits see it too.

The Kubernetes objects and the trigger's decision are built by pure functions; the functions taking `api` (a
`kubernetes.client.CustomObjectsApi`) or `sqs` do the I/O.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pomona.core.errors import PomonaError
from pomona.core.queues import queue_depth

if TYPE_CHECKING:
    from kubernetes.client import CustomObjectsApi
    from mypy_boto3_sqs import SQSClient

GROUP = "sparkoperator.k8s.io"
VERSION = "v1beta2"
API_VERSION = f"{GROUP}/{VERSION}"
SPARK_APPLICATIONS = "sparkapplications"
SCHEDULED_APPLICATIONS = "scheduledsparkapplications"
# The label the operator puts on the runs it starts from a ScheduledSparkApplication.
SCHEDULED_APP_LABEL = f"{GROUP}/scheduled-app-name"
TRIGGERED_BY_LABEL = "pomona.io/triggered-by"
# When the trigger first saw a backlog too small to start a run (SQS has no oldest-message age in its API).
BACKLOG_SINCE_ANNOTATION = "pomona.io/backlog-since"
# The states the operator counts as finished when it applies `concurrencyPolicy: Forbid`.
FINISHED_STATES = frozenset({"COMPLETED", "FAILED"})
# Kubernetes label values (the operator labels pods with the application name) hold at most 63 characters.
MAX_NAME = 63


class ClusterError(PomonaError, RuntimeError):
    """The cluster did not do what a run needed."""


class RunTimeoutError(ClusterError, TimeoutError):
    """A run did not finish within the time given."""


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    name: str
    # The operator's `.status.applicationState.state`; "" until it has seen the application.
    state: str
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return self.state == "COMPLETED"


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    name: str
    state: str
    triggered_by: str
    started: datetime | None
    finished: datetime | None

    @property
    def duration(self) -> timedelta | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


@dataclass(frozen=True, kw_only=True)
class TriggerDecision:
    start: bool
    reason: str
    # What the backlog-since annotation should hold after this decision (None: no annotation).
    backlog_since: datetime | None


@dataclass(frozen=True, kw_only=True)
class TriggerOutcome:
    decision: TriggerDecision
    backlog: int
    active: tuple[str, ...]
    started: str | None


# -- pure ----------------------------------------------------------------------------------------------------


def run_name(scheduled_name: str, *, now: datetime, triggered_by: str = "manual") -> str:
    """`<scheduled>-<triggered_by>-<UTC timestamp>`, the scheduled part shortened to keep it a valid label value."""
    suffix = f"-{triggered_by}-{now.astimezone(UTC):%Y%m%d%H%M%S}"
    return scheduled_name[: MAX_NAME - len(suffix)].rstrip("-") + suffix


def application_from_schedule(
    scheduled: Mapping[str, Any], *, name: str, triggered_by: str
) -> dict[str, Any]:
    """A SparkApplication whose spec is the ScheduledSparkApplication's template, labelled and owned like its runs."""
    meta = scheduled["metadata"]
    labels = {**meta.get("labels", {}), SCHEDULED_APP_LABEL: meta["name"], TRIGGERED_BY_LABEL: triggered_by}
    metadata: dict[str, Any] = {"name": name, "namespace": meta["namespace"], "labels": labels}
    if meta.get("uid"):
        # Deleting the schedule deletes its runs, manual ones included, as for the operator's own runs.
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": "ScheduledSparkApplication",
                "name": meta["name"],
                "uid": meta["uid"],
                "blockOwnerDeletion": True,
            }
        ]
    return {
        "apiVersion": API_VERSION,
        "kind": "SparkApplication",
        "metadata": metadata,
        "spec": copy.deepcopy(scheduled["spec"]["template"]),
    }


def state_of(application: Mapping[str, Any]) -> str:
    return str(application.get("status", {}).get("applicationState", {}).get("state", ""))


def active_runs(applications: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """Names of the runs the operator does not count as finished."""
    return tuple(a["metadata"]["name"] for a in applications if state_of(a) not in FINISHED_STATES)


def summarize_runs(
    applications: Iterable[Mapping[str, Any]], *, limit: int | None = None
) -> list[RunSummary]:
    """Runs newest first: state, who started them, when they started and finished."""
    runs = [
        RunSummary(
            name=a["metadata"]["name"],
            state=state_of(a) or "NEW",
            triggered_by=a["metadata"].get("labels", {}).get(TRIGGERED_BY_LABEL, "schedule"),
            started=_timestamp(a.get("status", {}).get("lastSubmissionAttemptTime"))
            or _timestamp(a["metadata"].get("creationTimestamp")),
            finished=_timestamp(a.get("status", {}).get("terminationTime")),
        )
        for a in applications
    ]
    runs.sort(key=lambda r: r.started or datetime.min.replace(tzinfo=UTC), reverse=True)
    return runs[:limit]


def decide_trigger(
    *,
    backlog: int,
    backlog_since: datetime | None,
    active: Iterable[str],
    now: datetime,
    min_backlog: int,
    max_wait: timedelta,
) -> TriggerDecision:
    """Start a run when the queue holds `min_backlog` messages, or has held some for `max_wait`, and none runs."""
    running = list(active)
    if running:
        # The run drains the queue; the clock keeps going for whatever it leaves.
        return TriggerDecision(start=False, reason=f"run {running[0]} is active", backlog_since=backlog_since)
    if backlog <= 0:
        return TriggerDecision(start=False, reason="the queue is empty", backlog_since=None)
    if backlog >= min_backlog:
        return TriggerDecision(start=True, reason=f"{backlog} messages ≥ {min_backlog}", backlog_since=None)
    since = backlog_since or now
    waited = now - since
    if waited >= max_wait:
        return TriggerDecision(
            start=True,
            reason=f"{backlog} messages waiting since {since:%Y-%m-%dT%H:%M:%SZ}",
            backlog_since=None,
        )
    return TriggerDecision(
        start=False,
        reason=f"{backlog} messages < {min_backlog}, waiting {_seconds(waited)} of {_seconds(max_wait)}",
        backlog_since=since,
    )


def _timestamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _seconds(delta: timedelta) -> str:
    return f"{int(delta.total_seconds())} s"


# -- Kubernetes and SQS ---------------------------------------------------------------------------------------


def get_scheduled(api: CustomObjectsApi, *, namespace: str, name: str) -> dict[str, Any]:
    return _object(api.get_namespaced_custom_object(GROUP, VERSION, namespace, SCHEDULED_APPLICATIONS, name))


def list_runs(api: CustomObjectsApi, *, namespace: str, scheduled_name: str) -> list[dict[str, Any]]:
    """Every SparkApplication started from the schedule: by the operator, `run_once` or `trigger`."""
    listed = api.list_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        SPARK_APPLICATIONS,
        label_selector=f"{SCHEDULED_APP_LABEL}={scheduled_name}",
    )
    return list(_object(listed).get("items", []))


def start_run(
    api: CustomObjectsApi, scheduled: Mapping[str, Any], *, triggered_by: str, now: datetime | None = None
) -> str:
    """Create a run from the schedule's template; return its name."""
    name = run_name(scheduled["metadata"]["name"], now=now or datetime.now(UTC), triggered_by=triggered_by)
    body = application_from_schedule(scheduled, name=name, triggered_by=triggered_by)
    api.create_namespaced_custom_object(
        GROUP, VERSION, scheduled["metadata"]["namespace"], SPARK_APPLICATIONS, body
    )
    return name


def wait_for(
    api: CustomObjectsApi,
    *,
    namespace: str,
    name: str,
    timeout: float,
    poll_interval: float = 5.0,
    on_state: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Follow `.status.applicationState.state` until COMPLETED or FAILED; `RunTimeoutError` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        application = _object(
            api.get_namespaced_custom_object(GROUP, VERSION, namespace, SPARK_APPLICATIONS, name)
        )
        state = state_of(application)
        if state != last and on_state is not None:
            on_state(state)
        last = state
        if state in FINISHED_STATES:
            error = application.get("status", {}).get("applicationState", {}).get("errorMessage", "")
            return RunOutcome(name=name, state=state, error=error)
        if time.monotonic() >= deadline:
            raise RunTimeoutError(
                f"run {name}: expected COMPLETED or FAILED within {timeout:g} s, found {state or 'NEW'}"
            )
        time.sleep(poll_interval)


def run_once(
    api: CustomObjectsApi,
    *,
    namespace: str,
    scheduled_name: str,
    wait: bool,
    timeout: float = 3600.0,
    poll_interval: float = 5.0,
    on_state: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Start a run from the schedule's spec now; with `wait`, follow it to the end."""
    scheduled = get_scheduled(api, namespace=namespace, name=scheduled_name)
    name = start_run(api, scheduled, triggered_by="manual")
    if not wait:
        return RunOutcome(name=name, state="")
    return wait_for(
        api, namespace=namespace, name=name, timeout=timeout, poll_interval=poll_interval, on_state=on_state
    )


def status(
    api: CustomObjectsApi, *, namespace: str, scheduled_name: str, limit: int = 10
) -> list[RunSummary]:
    """The schedule's most recent runs, newest first."""
    return summarize_runs(list_runs(api, namespace=namespace, scheduled_name=scheduled_name), limit=limit)


def _object(value: object) -> dict[str, Any]:
    """An API response as the JSON object it is (the client types custom objects as `object`)."""
    if not isinstance(value, dict):
        raise ClusterError(f"expected a JSON object from the Kubernetes API, got {type(value).__name__}")
    return value


def queue_backlog(sqs: SQSClient, queue_url: str) -> int:
    """Messages waiting in the queue (ApproximateNumberOfMessages: visible ones, not those a run holds)."""
    return queue_depth(sqs, queue_url)["visible"]


def trigger(
    api: CustomObjectsApi,
    sqs: SQSClient,
    *,
    namespace: str,
    scheduled_name: str,
    queue_url: str,
    min_backlog: int,
    max_wait: timedelta,
    now: datetime | None = None,
) -> TriggerOutcome:
    """Start a run if the backlog calls for one (see `decide_trigger`); remember when a small backlog was first seen."""
    now = now or datetime.now(UTC)
    scheduled = get_scheduled(api, namespace=namespace, name=scheduled_name)
    annotations = scheduled["metadata"].get("annotations") or {}
    since = _timestamp(annotations.get(BACKLOG_SINCE_ANNOTATION))
    active = active_runs(list_runs(api, namespace=namespace, scheduled_name=scheduled_name))
    backlog = queue_backlog(sqs, queue_url)
    decision = decide_trigger(
        backlog=backlog,
        backlog_since=since,
        active=active,
        now=now,
        min_backlog=min_backlog,
        max_wait=max_wait,
    )
    started = start_run(api, scheduled, triggered_by="backlog", now=now) if decision.start else None
    if decision.backlog_since != since:
        value = (
            None if decision.backlog_since is None else decision.backlog_since.strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        # A JSON merge patch: null removes the annotation.
        patch = {"metadata": {"annotations": {BACKLOG_SINCE_ANNOTATION: value}}}
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, SCHEDULED_APPLICATIONS, scheduled_name, patch
        )
    return TriggerOutcome(decision=decision, backlog=backlog, active=active, started=started)
