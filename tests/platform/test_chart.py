"""The Helm chart, rendered by the real helm and checked against the schemas the API server and operator use."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from manifests import CHART, HelmError, Render, by_kind, crd_errors, one, run_helm
from network_policies import OUTSIDE, Pod, may_connect

from pomona.core.settings import ENV_VARS, Settings

SPARK_KINDS = {"SparkApplication", "ScheduledSparkApplication"}
# Kinds from other operators' CRDs that kubernetes-validate has no schema for; checked by their own tests.
FOREIGN_KINDS = {"PodMonitor"}
KUBERNETES_VERSIONS = ["1.33.0", kubernetes_validate.utils.latest_version()]
ACCOUNT = "arn:aws:iam::123456789012"  # IAM ARNs of values-ci.yaml's account

VALUE_SETS = [
    pytest.param((), {}, id="defaults"),
    pytest.param(("values-ci.yaml",), {}, id="ci-everything-on"),
    pytest.param(("values-kind.yaml",), {}, id="kind"),
    pytest.param(
        (), {"dynamicAllocation.enabled": "false", "monitoring.enabled": "true"}, id="fixed-executors"
    ),
    pytest.param(
        ("values-ci.yaml",),
        {"monitoring.prometheus.jmxExporterJar": "/opt/jmx/jmx_prometheus_javaagent.jar"},
        id="jmx-exporter",
    ),
]


# The node label of the one platform the Spark image is built for.
AMD64 = {"kubernetes.io/arch": "amd64"}


def _spec(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The SparkApplication spec every run is made from: the ScheduledSparkApplication's template."""
    return one(manifests, "ScheduledSparkApplication")["spec"]["template"]  # type: ignore[no-any-return]


# -- lint and schemas ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values", [(), ("values-ci.yaml",), ("values-kind.yaml",)], ids=["defaults", "ci", "kind"]
)
def test_chart_passes_strict_lint(helm: Path, values: tuple[str, ...]) -> None:
    args = [arg for name in values for arg in ("--values", str(CHART / name))]

    output = run_helm(helm, "lint", "--strict", str(CHART), *args)

    assert "0 chart(s) failed" in output


@pytest.mark.parametrize(("files", "sets"), VALUE_SETS)
def test_core_resources_are_valid_for_kubernetes(
    render: Render, files: tuple[str, ...], sets: dict[str, str]
) -> None:
    core = [m for m in render(*files, set=sets) if m["kind"] not in SPARK_KINDS | FOREIGN_KINDS]

    assert core, "expected core resources (ConfigMap, ServiceAccount, RBAC) in the render"
    for manifest in core:
        for version in KUBERNETES_VERSIONS:
            # Raises ValidationError naming the field when the manifest is wrong for this version.
            kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize(("files", "sets"), VALUE_SETS)
def test_spark_resources_match_the_operator_crds(
    render: Render, files: tuple[str, ...], sets: dict[str, str]
) -> None:
    spark = [m for m in render(*files, set=sets) if m["kind"] in SPARK_KINDS]

    assert spark
    assert {m["kind"]: crd_errors(m) for m in spark} == {m["kind"]: [] for m in spark}


def test_crd_check_rejects_unknown_fields(render: Render) -> None:
    # GIVEN a rendered ScheduledSparkApplication with a misspelt field, as a typo in a template would make
    scheduled = one(render(), "ScheduledSparkApplication")
    scheduled["spec"]["template"]["driver"]["memoryOverhed"] = "1g"

    # THEN the CRD check names it: the validator is not silently open
    assert crd_errors(scheduled) == [
        "/spec/template/driver: Additional properties are not allowed ('memoryOverhed' was unexpected)"
    ]


# -- values rejected -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        pytest.param({"schedule.cron": "every 15 minutes"}, "/schedule/cron", id="cron-words"),
        pytest.param({"schedule.cron": "*/15 * * *"}, "/schedule/cron", id="cron-four-fields"),
        pytest.param({"trigger.cron": "@every 5m"}, "/trigger/cron", id="cronjob-has-no-every"),
        pytest.param(
            {"dynamicAllocation.maxExecutors": "-1"}, "/dynamicAllocation/maxExecutors", id="negative-max"
        ),
        pytest.param(
            {"dynamicAllocation.minExecutors": "-2"}, "/dynamicAllocation/minExecutors", id="negative-min"
        ),
        pytest.param({"executor.cores": "0"}, "/executor/cores", id="zero-cores"),
        pytest.param({"executor.memory": "lots"}, "/executor/memory", id="memory-words"),
        pytest.param({"trigger.mode": "sometimes"}, "/trigger/mode", id="unknown-trigger-mode"),
        pytest.param(
            {"schedule.concurrencyPolicy": "Allow"}, "/schedule/concurrencyPolicy", id="allow-overlap"
        ),
        # Replace would kill a running batch mid-commit to start another: recoverable, but wasted work.
        pytest.param(
            {"schedule.concurrencyPolicy": "Replace"}, "/schedule/concurrencyPolicy", id="replace-running"
        ),
        pytest.param(
            {"config.POMONA_BUKET": "x"}, "invalid propertyName 'POMONA_BUKET'", id="unknown-setting"
        ),
        pytest.param({"securityContext.runAsNonRoot": "false"}, "/securityContext/runAsNonRoot", id="root"),
        pytest.param({"image.digest": "latest"}, "/image/digest", id="digest-not-a-digest"),
        # The image is built for linux/amd64 alone (DEPLOY.md: buildx --platform linux/amd64).
        pytest.param(
            {"executor.nodeSelector.kubernetes\\.io/arch": "arm64"},
            "/executor/nodeSelector/kubernetes.io~1arch",
            id="arm64-executors",
        ),
        pytest.param(
            {"dynamicAllocation.minExecutors": "9"},
            "expected minExecutors <= maxExecutors, got 9 > 8",
            id="min>max",
        ),
        pytest.param(
            {"dynamicAllocation.initialExecutors": "20"},
            "expected minExecutors <= initialExecutors <= maxExecutors, got 0, 20, 8",
            id="initial>max",
        ),
        # The NetworkPolicy opens spark.ports: a port moved elsewhere would be silently closed.
        pytest.param(
            {"spark.conf.spark\\.driver\\.port": "7100"},
            "expected spark.driver.port to be set through spark.ports",
            id="port-in-spark-conf",
        ),
        pytest.param({"spark.ports.driver": "80"}, "/spark/ports/driver", id="privileged-port"),
        # Executors without a role of their own would fall back to the node's credentials.
        pytest.param(
            {"serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn": f"{ACCOUNT}:role/pomona-job"},
            "expected eks.amazonaws.com/role-arn (the stack's ExecutorRoleArn) since the driver's account has one",
            id="executors-without-a-role",
        ),
        pytest.param(
            {"executorServiceAccount.annotations.eks\\.amazonaws\\.com/role-arn": "pomona-executor"},
            "/executorServiceAccount/annotations/eks.amazonaws.com~1role-arn",
            id="role-arn-not-an-arn",
        ),
        pytest.param(
            {"config.POMONA_RUN_DEADLINE_SECONDS": "0"},
            "/config/POMONA_RUN_DEADLINE_SECONDS",
            id="no-deadline",
        ),
        pytest.param(
            {"config.POMONA_STALL_SECONDS": "-5"}, "/config/POMONA_STALL_SECONDS", id="negative-stall"
        ),
        pytest.param(
            {"config.POMONA_STALL_SECONDS": "15m"}, "/config/POMONA_STALL_SECONDS", id="stall-with-a-unit"
        ),
    ],
)
def test_bad_values_fail_the_render(helm: Path, sets: dict[str, str], message: str) -> None:
    args = [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]

    with pytest.raises(HelmError) as caught:
        run_helm(helm, "template", "pomona", str(CHART), *args)

    assert message in str(caught.value)


def test_every_leaf_of_values_yaml_has_a_doc_comment() -> None:
    undocumented = _undocumented_leaves((CHART / "values.yaml").read_text().splitlines())

    assert undocumented == []


def _undocumented_leaves(lines: list[str]) -> list[str]:
    """Keys holding a value (not a nested map) without a `# --` comment above them or above an ancestor."""
    key_line = re.compile(r"^(\s*)([\w.-]+):\s*(.*)$")
    documented_at: list[int] = []  # indents of documented ancestors: their subtrees count as documented
    missing = []
    for number, line in enumerate(lines):
        match = key_line.match(line)
        if not match:
            continue
        indent = len(match[1])
        documented_at = [level for level in documented_at if level < indent]
        comments = []
        for above in reversed(lines[:number]):
            if not above.strip().startswith("#"):
                break
            comments.append(above.strip())
        if any(c.startswith("# --") for c in comments):
            documented_at.append(indent)
            continue
        following = next((n for n in lines[number + 1 :] if n.strip() and not n.strip().startswith("#")), "")
        holds_map = not match[3] and len(following) - len(following.lstrip()) > indent and ":" in following
        if not documented_at and not holds_map:
            missing.append(f"line {number + 1}: {line.strip()}")
    return missing


def test_schema_lists_exactly_the_settings_environment_variables() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    allowed = schema["properties"]["config"]["propertyNames"]["enum"]

    assert sorted(allowed) == sorted(ENV_VARS)


# -- what the templates render ---------------------------------------------------------------------------------


def test_schedule_defaults(render: Render) -> None:
    spec = one(render(), "ScheduledSparkApplication")["spec"]

    assert {k: spec[k] for k in ("schedule", "suspend", "concurrencyPolicy")} == {
        "schedule": "*/15 * * * *",
        "suspend": False,
        "concurrencyPolicy": "Forbid",
    }
    assert spec["successfulRunHistoryLimit"] >= 1
    assert spec["failedRunHistoryLimit"] >= 1


def test_application_spec_runs_the_python_job(render: Render) -> None:
    spec = _spec(render())

    assert {k: spec[k] for k in ("type", "mode", "pythonVersion", "mainApplicationFile")} == {
        "type": "Python",
        "mode": "cluster",
        "pythonVersion": "3",
        "mainApplicationFile": "local:///opt/pomona/spark/main.py",
    }
    assert spec["restartPolicy"] == {"type": "Never"}
    assert spec["image"] == "pomona-spark:0.1.0"


def test_spark_conf_reuses_python_workers_and_merges_user_conf(render: Render) -> None:
    conf = _spec(render("values-ci.yaml"))["sparkConf"]

    assert conf["spark.python.worker.reuse"] == "true"
    assert conf["spark.authenticate"] == "true"  # Spark makes the per-application secret on Kubernetes
    assert conf["spark.dynamicAllocation.shuffleTracking.enabled"] == "true"
    assert conf["spark.dynamicAllocation.executorIdleTimeout"] == "60s"
    assert conf["spark.sql.shuffle.partitions"] == "64"
    assert all(isinstance(v, str) for v in conf.values())


def test_dynamic_allocation_bounds_come_from_values(render: Render) -> None:
    spec = _spec(render("values-ci.yaml"))

    assert spec["dynamicAllocation"] == {
        "enabled": True,
        "initialExecutors": 2,
        "minExecutors": 1,
        "maxExecutors": 12,
        "shuffleTrackingEnabled": True,
        "shuffleTrackingTimeout": 60000,
    }
    assert "instances" not in spec["executor"]


def test_fixed_executors_when_dynamic_allocation_is_off(render: Render) -> None:
    spec = _spec(render(set={"dynamicAllocation.enabled": "false"}))

    assert spec["dynamicAllocation"] == {"enabled": False}
    assert spec["executor"]["instances"] == 2


def test_executor_is_sized_for_litert_workers(render: Render) -> None:
    executor = _spec(render())["executor"]

    # Two Python workers at ~1 GB each live in the overhead, beside the JVM's own native memory.
    assert (executor["cores"], executor["memory"], executor["memoryOverhead"]) == (2, "2g", "3g")


def _bytes(size: str) -> int:
    """A Spark size with its unit (512m, 2g) in bytes."""
    return int(size[:-1]) * 1024 ** "kmgt".index(size[-1].lower()) * 1024


@pytest.mark.parametrize("kind", sorted(SPARK_KINDS))
def test_runs_bound_driver_results_and_know_the_seen_table(render: Render, kind: str) -> None:
    # GIVEN the one-off SparkApplication and the schedule's template, rendered with the default values
    manifests = render(set={"oneOff.enabled": "true"})
    app = one(manifests, kind)
    spec = app["spec"] if kind == "SparkApplication" else app["spec"]["template"]
    config = one(manifests, "ConfigMap")

    # THEN what one action may collect on the driver is set (a batch of 50,000 brings ~75 MB of projections and
    # O(1) PCA states of 13 MB), and takes at most half the driver's heap
    conf = spec["sparkConf"]
    assert conf["spark.driver.maxResultSize"] == "512m"
    assert _bytes(conf["spark.driver.maxResultSize"]) <= _bytes(spec["driver"]["memory"]) // 2
    assert config["data"]["POMONA_MAX_IMAGES"] == "50000"
    # AND the driver and executors get the dedupe index's name and the PCA retention as environment variables
    for role in ("driver", "executor"):
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in spec[role]["envFrom"]
    assert config["data"]["POMONA_SEEN_TABLE"] == "pomona-seen"
    assert config["data"]["POMONA_KEEP_FULL_VERSIONS"] == "3"


def test_driver_result_size_can_be_raised_through_spark_conf(render: Render) -> None:
    conf = _spec(render(set={"spark.conf.spark\\.driver\\.maxResultSize": "1g"}))["sparkConf"]

    assert conf["spark.driver.maxResultSize"] == "1g"


@pytest.mark.parametrize("role", ["driver", "executor"])
def test_pods_run_as_spark_user_with_read_only_root(render: Render, role: str) -> None:
    spec = _spec(render())
    pod = spec[role]

    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 185,
        "runAsGroup": 185,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["podSecurityContext"]["runAsNonRoot"] is True
    # Every writable path is an emptyDir the spec declares.
    mounts = {m["mountPath"]: m["name"] for m in pod["volumeMounts"]}
    assert mounts == {"/tmp": "tmp", "/var/data/spark-local-dir-1": "spark-local-dir-1"}
    assert {v["name"] for v in spec["volumes"] if "emptyDir" in v} == set(mounts.values())


@pytest.mark.parametrize("role", ["driver", "executor"])
def test_pods_read_settings_from_the_config_map(render: Render, role: str) -> None:
    manifests = render("values-kind.yaml")

    env_from = _spec(manifests)[role]["envFrom"]

    config_map = one(manifests, "ConfigMap")
    assert env_from == [
        {"configMapRef": {"name": config_map["metadata"]["name"]}},
        {"secretRef": {"name": "moto-credentials"}},
    ]
    assert config_map["data"]["AWS_ENDPOINT_URL"] == "http://moto.pomona.svc:5000"
    assert set(config_map["data"]) <= set(ENV_VARS)


def test_liveness_settings_reach_the_config_map(render: Render) -> None:
    # GIVEN the defaults, and a release with a shorter deadline
    defaults = one(render(), "ConfigMap")["data"]
    shorter = one(render(set={"config.POMONA_RUN_DEADLINE_SECONDS": "1800"}), "ConfigMap")["data"]

    # THEN the driver and executors read the deadline, the stall limit and the metrics namespace from it
    assert (defaults["POMONA_RUN_DEADLINE_SECONDS"], defaults["POMONA_STALL_SECONDS"]) == ("3600", "900")
    assert defaults["POMONA_METRICS_NAMESPACE"] == "Pomona"
    assert shorter["POMONA_RUN_DEADLINE_SECONDS"] == "1800"
    assert Settings.from_env(shorter).run_deadline_s == 1800


def test_config_map_leaves_out_empty_settings(render: Render) -> None:
    data = one(render(), "ConfigMap")["data"]

    assert "POMONA_IMAGES_QUEUE_URL" not in data
    assert data["POMONA_BUCKET"] == "pomona-images"


def test_placement_is_per_role(render: Render) -> None:
    spec = _spec(render("values-ci.yaml"))

    # A release's labels add to the default arch label.
    assert spec["driver"]["nodeSelector"] == {"eks.amazonaws.com/capacityType": "ON_DEMAND", **AMD64}
    assert spec["executor"]["nodeSelector"] == {"eks.amazonaws.com/capacityType": "SPOT", **AMD64}
    assert spec["executor"]["tolerations"][0]["key"] == "spot"
    assert "tolerations" not in spec["driver"]


def test_a_digest_pins_the_image_every_pod_runs(render: Render) -> None:
    # GIVEN a release deployed by digest (DEPLOY.md), tag and digest both set, in backlog mode
    digest = "sha256:" + "ab" * 32
    manifests = render(set={"image.tag": "v1", "image.digest": digest, "trigger.mode": "backlog"})
    spec = _spec(manifests)
    cron = one(manifests, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]

    # THEN the runs and the trigger run that exact image, whatever the tag now points to
    assert spec["image"] == f"pomona-spark@{digest}"
    assert {c["image"] for c in cron["containers"]} == {f"pomona-spark@{digest}"}


def test_every_pod_of_the_image_runs_on_amd64_nodes_by_default(render: Render) -> None:
    # GIVEN the defaults, in both trigger modes: the driver, the executors, and the trigger's CronJob
    spec = _spec(render())
    cron = one(render(set={"trigger.mode": "backlog"}), "CronJob")["spec"]["jobTemplate"]["spec"]["template"]

    # THEN each selects x86_64 nodes, the only platform the image is built for (an arm64 node would fail it
    # with `exec format error`)
    assert spec["driver"]["nodeSelector"] == AMD64
    assert spec["executor"]["nodeSelector"] == AMD64
    assert cron["spec"]["nodeSelector"] == AMD64


def test_driver_and_executors_carry_their_own_irsa_roles(render: Render) -> None:
    manifests = render("values-ci.yaml")

    accounts = {a["metadata"]["name"]: a for a in by_kind(manifests, "ServiceAccount")}

    spec = _spec(manifests)
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
    spec = _spec(manifests)
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

    assert _spec(manifests)["executor"]["serviceAccount"] == "featurizers"
    assert accounts["featurizers"]["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": f"{ACCOUNT}:role/exec"
    }


def test_executor_service_account_follows_a_renamed_driver_account(render: Render) -> None:
    # The stack trusts <JobServiceAccount> and <JobServiceAccount>-executor: renaming one renames the pair.
    spec = _spec(render(set={"serviceAccount.name": "featurize"}))

    assert (spec["driver"]["serviceAccount"], spec["executor"]["serviceAccount"]) == (
        "featurize",
        "featurize-executor",
    )


def test_executors_share_the_driver_account_when_theirs_is_not_created(render: Render) -> None:
    manifests = render(set={"executorServiceAccount.create": "false"})

    spec = _spec(manifests)

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
    assert binding["subjects"][0]["name"] == _spec(manifests)["driver"]["serviceAccount"]


def test_one_off_application_uses_the_scheduled_spec(render: Render) -> None:
    manifests = render(set={"oneOff.enabled": "true"})

    one_off = one(manifests, "SparkApplication")

    assert one_off["spec"] == _spec(manifests)
    assert one_off["metadata"]["name"] == "pomona-once"


def test_no_one_off_application_by_default(render: Render) -> None:
    assert by_kind(render(), "SparkApplication") == []


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
    pod = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == [
        "pomona", "cluster", "trigger", "--namespace", "pomona", "--name", "pomona",
        "--min-backlog", "300", "--max-wait", "3600",
    ]  # fmt: skip
    assert container["securityContext"] == _spec(manifests)["driver"]["securityContext"]
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


# -- NetworkPolicy ------------------------------------------------------------------------------------------------


def _pods(manifests: list[dict[str, Any]]) -> tuple[Pod, Pod]:
    """The run's driver and one executor, labelled as the operator labels them from the spec."""
    spec = _spec(manifests)
    driver = Pod("pomona", {**spec["driver"]["labels"], "spark-role": "driver"})
    executor = Pod("pomona", {**spec["executor"]["labels"], "spark-role": "executor"})
    return driver, executor


KUBE_DNS = Pod("kube-system", {"k8s-app": "kube-dns"})
NEIGHBOUR = Pod("pomona", {"app": "moto"})


def test_network_policy_is_on_by_default_and_selects_the_spark_pods(render: Render) -> None:
    manifests = render()
    spec = _spec(manifests)

    policy = one(manifests, "NetworkPolicy")

    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert (
        policy["spec"]["podSelector"]["matchLabels"] == spec["driver"]["labels"] == spec["executor"]["labels"]
    )


def test_network_policy_opens_the_ports_spark_is_told_to_use(render: Render) -> None:
    manifests = render(set={"spark.ports.driver": "17078", "spark.ports.blockManager": "17079"})
    conf = _spec(manifests)["sparkConf"]
    driver, executor = _pods(manifests)

    assert (
        conf["spark.driver.port"],
        conf["spark.blockManager.port"],
        conf["spark.driver.blockManager.port"],
    ) == (
        "17078",
        "17079",
        "17079",
    )
    assert may_connect(manifests, executor, driver, 17078)
    assert may_connect(manifests, executor, driver, 17079)
    assert may_connect(manifests, driver, executor, 17079)  # task results, broadcast pieces
    assert may_connect(manifests, executor, executor, 17079)  # shuffle blocks, without a shuffle service
    assert not may_connect(manifests, executor, driver, 7078)


@pytest.mark.parametrize(
    ("source", "target", "port", "protocol", "allowed"),
    [
        pytest.param("executor", "driver", 7078, "TCP", True, id="executor-registers-with-driver"),
        pytest.param("driver", "executor", 7079, "TCP", True, id="driver-fetches-results"),
        pytest.param("executor", "executor", 7079, "TCP", True, id="shuffle-between-executors"),
        pytest.param("executor", "driver", 4040, "TCP", False, id="driver-ui-closed"),
        pytest.param("driver", KUBE_DNS, 53, "UDP", True, id="dns-udp"),
        pytest.param("driver", KUBE_DNS, 53, "TCP", True, id="dns-tcp"),
        pytest.param("executor", OUTSIDE, 443, "TCP", True, id="https-to-aws"),
        pytest.param("executor", OUTSIDE, 80, "TCP", False, id="no-plain-http-out"),
        pytest.param("executor", OUTSIDE, 53, "UDP", False, id="no-outside-resolver"),
        pytest.param("executor", NEIGHBOUR, 5000, "TCP", False, id="no-other-pods"),
        pytest.param(NEIGHBOUR, "driver", 7078, "TCP", False, id="no-one-else-reaches-the-driver"),
        pytest.param(NEIGHBOUR, "executor", 7079, "TCP", False, id="no-one-else-reaches-executors"),
        pytest.param(OUTSIDE, "driver", 7078, "TCP", False, id="nothing-from-outside"),
    ],
)
def test_network_policy_allows_the_run_dns_and_https_only(
    render: Render,
    source: str | Pod | None,
    target: str | Pod | None,
    port: int,
    protocol: str,
    allowed: bool,
) -> None:
    manifests = render()
    pods = dict(zip(("driver", "executor"), _pods(manifests), strict=True))

    def peer(p: str | Pod | None) -> Pod | None:
        return pods[p] if isinstance(p, str) else p

    assert may_connect(manifests, peer(source), peer(target), port, protocol) is allowed


def test_network_policy_isolates_runs_of_other_releases(render: Render) -> None:
    manifests = render()
    driver, executor = _pods(manifests)
    stranger = Pod("pomona", {**executor.labels, "app.kubernetes.io/instance": "other"})

    assert not may_connect(manifests, stranger, driver, 7078)
    assert not may_connect(manifests, driver, stranger, 7079)


def test_network_policy_rules_are_never_wider_than_a_port(render: Render) -> None:
    # Every rule names its ports; one without peers (anywhere) names HTTPS alone; no peer selects everything.
    spec = one(render(), "NetworkPolicy")["spec"]

    rules = spec["ingress"] + spec["egress"]

    assert all(rule.get("ports") for rule in rules)
    anywhere = [rule["ports"] for rule in spec["egress"] if "to" not in rule]
    assert anywhere == [[{"protocol": "TCP", "port": 443}]]
    assert all("from" in rule for rule in spec["ingress"])
    peers = [peer for rule in rules for peer in rule.get("to", []) + rule.get("from", [])]
    assert all(peer.get("podSelector", {}).get("matchLabels") for peer in peers)


def test_kind_values_let_the_job_reach_moto_and_the_api_server(render: Render) -> None:
    manifests = render("values-kind.yaml")
    driver, executor = _pods(manifests)
    moto = Pod("pomona", {"app": "moto"})

    assert may_connect(manifests, executor, moto, 5000)
    assert may_connect(manifests, driver, OUTSIDE, 6443)  # kind's API server behind the kubernetes Service
    assert not may_connect(
        manifests, executor, Pod("pomona", {"app": "ingest"}), 5000
    )  # moto's port, not moto


def test_network_policy_can_be_turned_off(render: Render) -> None:
    assert by_kind(render(set={"networkPolicy.enabled": "false"}), "NetworkPolicy") == []


def test_monitoring_uses_the_prometheus_servlet_and_a_pod_monitor(render: Render) -> None:
    manifests = render("values-ci.yaml")

    conf = _spec(manifests)["sparkConf"]
    monitor = one(manifests, "PodMonitor")

    assert conf["spark.ui.prometheus.enabled"] == "true"
    assert (
        conf["spark.metrics.conf.*.sink.prometheusServlet.class"]
        == "org.apache.spark.metrics.sink.PrometheusServlet"
    )
    assert [e["path"] for e in monitor["spec"]["podMetricsEndpoints"]] == [
        "/metrics/driver/prometheus/",
        "/metrics/executors/prometheus/",
    ]
    assert monitor["spec"]["selector"]["matchLabels"]["spark-role"] == "driver"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_jmx_exporter_uses_the_operator_monitoring_block(render: Render) -> None:
    manifests = render("values-ci.yaml", set={"monitoring.prometheus.jmxExporterJar": "/opt/jmx/agent.jar"})

    spec = _spec(manifests)

    assert spec["monitoring"] == {
        "exposeDriverMetrics": True,
        "exposeExecutorMetrics": True,
        "prometheus": {"jmxExporterJar": "/opt/jmx/agent.jar", "port": 8090},
    }
    assert "spark.ui.prometheus.enabled" not in spec["sparkConf"]
    assert [e["port"] for e in one(manifests, "PodMonitor")["spec"]["podMetricsEndpoints"]] == [
        "jmx-exporter"
    ]


def test_no_optional_resources_by_default(render: Render) -> None:
    kinds = {m["kind"] for m in render()}

    assert kinds == {
        "ServiceAccount",
        "ConfigMap",
        "Role",
        "RoleBinding",
        "ScheduledSparkApplication",
        "NetworkPolicy",
    }
