"""Who the chart's pods run as: the driver's, executors' and trigger's ServiceAccounts and their RBAC."""

from __future__ import annotations

import pytest
from cron import is_valid_cron
from manifests import (
    Render,
    application_spec,
    by_kind,
    chart_values,
    one,
)

ACCOUNT = "arn:aws:iam::123456789012"  # IAM ARNs of values-ci.yaml's account


def test_driver_and_executors_carry_their_own_irsa_roles(render: Render) -> None:
    manifests = render("values-ci.yaml")

    accounts = {a["metadata"]["name"]: a for a in by_kind(manifests, "ServiceAccount")}

    spec = application_spec(manifests)
    # The stack's JobRole (driver) and ExecutorRole (executors) each trust one of the two accounts.
    assert accounts[spec["driver"]["serviceAccount"]]["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": f"{ACCOUNT}:role/pomona-job"
    }
    assert accounts[spec["executor"]["serviceAccount"]]["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": f"{ACCOUNT}:role/pomona-job-executor"
    }


def test_executors_never_copy_the_drivers_annotations(render: Render) -> None:
    manifests = render(set={"serviceAccount.annotations.example\\.com/team": "fruit"})

    accounts = {a["metadata"]["name"]: a for a in by_kind(manifests, "ServiceAccount")}

    assert accounts["pomona"]["metadata"]["annotations"] == {"example.com/team": "fruit"}
    assert "annotations" not in accounts["pomona-executor"]["metadata"]


@pytest.mark.parametrize("files", [(), ("values-ci.yaml",)], ids=["defaults", "ci-backlog"])
def test_executors_have_their_own_service_account_without_api_access(
    render: Render, files: tuple[str, ...]
) -> None:
    manifests = render(*files)
    spec = application_spec(manifests)
    accounts = {a["metadata"]["name"]: a for a in by_kind(manifests, "ServiceAccount")}

    executor = accounts[spec["executor"]["serviceAccount"]]

    # Executors never call the Kubernetes API: no token in their pods, and nothing bound to their account.
    assert executor["metadata"]["name"] == "pomona-executor"
    assert executor["automountServiceAccountToken"] is False
    bound = {
        s["name"]
        for b in by_kind(manifests, "RoleBinding")
        for s in b["subjects"]
        if s["kind"] == "ServiceAccount"
    }
    assert executor["metadata"]["name"] not in bound
    # The driver keeps its own account and the Role that lets it create its executors.
    assert spec["driver"]["serviceAccount"] == "pomona"
    assert "pomona" in bound
    assert "automountServiceAccountToken" not in accounts["pomona"]
    # No pod template that could mount one anyway.
    assert "template" not in spec["executor"]


def test_executor_service_account_can_be_named_and_annotated(render: Render) -> None:
    manifests = render(
        set={
            "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn": f"{ACCOUNT}:role/driver",
            "executorServiceAccount.name": "featurizers",
            "executorServiceAccount.annotations.eks\\.amazonaws\\.com/role-arn": f"{ACCOUNT}:role/exec",
        }
    )

    accounts = {a["metadata"]["name"]: a for a in by_kind(manifests, "ServiceAccount")}

    assert application_spec(manifests)["executor"]["serviceAccount"] == "featurizers"
    assert accounts["featurizers"]["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": f"{ACCOUNT}:role/exec"
    }


def test_executor_service_account_follows_a_renamed_driver_account(render: Render) -> None:
    # The stack trusts <JobServiceAccount> and <JobServiceAccount>-executor: renaming one renames the pair.
    spec = application_spec(render(set={"serviceAccount.name": "featurize"}))

    assert (spec["driver"]["serviceAccount"], spec["executor"]["serviceAccount"]) == (
        "featurize",
        "featurize-executor",
    )


def test_executors_share_the_driver_account_when_theirs_is_not_created(render: Render) -> None:
    manifests = render(set={"executorServiceAccount.create": "false"})

    spec = application_spec(manifests)

    assert spec["executor"]["serviceAccount"] == spec["driver"]["serviceAccount"] == "pomona"
    assert [a["metadata"]["name"] for a in by_kind(manifests, "ServiceAccount")] == ["pomona"]


def test_driver_role_grants_what_spark_on_kubernetes_needs(render: Render) -> None:
    manifests = render()

    role = one(manifests, "Role")
    binding = one(manifests, "RoleBinding")

    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["pods", "services", "configmaps", "persistentvolumeclaims"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"],
        }
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == application_spec(manifests)["driver"]["serviceAccount"]


def test_schedule_mode_renders_no_trigger(render: Render) -> None:
    manifests = render()

    assert by_kind(manifests, "CronJob") == []
    assert [a["metadata"]["name"] for a in by_kind(manifests, "ServiceAccount")] == [
        "pomona",
        "pomona-executor",
    ]


def test_backlog_mode_suspends_the_schedule_and_renders_the_trigger(render: Render) -> None:
    # GIVEN backlog mode, with the schedule itself left unsuspended in values
    manifests = render(set={"trigger.mode": "backlog", "trigger.minBacklog": "300"})

    # THEN the schedule is suspended and a CronJob runs the trigger command against it
    assert one(manifests, "ScheduledSparkApplication")["spec"]["suspend"] is True
    cron_job = one(manifests, "CronJob")
    assert cron_job["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron_job["spec"]["schedule"] == chart_values()["trigger"]["cron"]
    assert is_valid_cron(cron_job["spec"]["schedule"])
    pod = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == [
        "pomona", "cluster", "trigger", "--namespace", "pomona", "--name", "pomona",
        "--min-backlog", "300", "--max-wait", str(chart_values()["trigger"]["maxWaitSeconds"]),
    ]  # fmt: skip
    assert container["securityContext"] == application_spec(manifests)["driver"]["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == "pomona-trigger"


def test_trigger_role_allows_only_starting_and_watching_runs(render: Render) -> None:
    manifests = render(set={"trigger.mode": "backlog"})

    roles = {r["metadata"]["name"]: r for r in by_kind(manifests, "Role")}
    bindings = {b["metadata"]["name"]: b for b in by_kind(manifests, "RoleBinding")}

    assert roles["pomona-trigger"]["rules"] == [
        {
            "apiGroups": ["sparkoperator.k8s.io"],
            "resources": ["sparkapplications"],
            "verbs": ["get", "list", "create"],
        },
        {
            "apiGroups": ["sparkoperator.k8s.io"],
            "resources": ["scheduledsparkapplications"],
            "resourceNames": ["pomona"],
            "verbs": ["get", "patch"],
        },
    ]
    assert bindings["pomona-trigger"]["subjects"][0]["name"] == "pomona-trigger"
