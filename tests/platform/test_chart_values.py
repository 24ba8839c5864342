"""The chart's values: lint, the schemas the API server and operator use, what the schema refuses, and
the defaults, which are `Settings`'."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
from manifests import (
    CHART,
    SPARK_KINDS,
    HelmError,
    Render,
    crd_errors,
    one,
    run_helm,
)

from pomona.core.settings import ENV_VARS, Settings

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


def test_chart_defaults_are_the_settings_defaults(render: Render) -> None:
    # GIVEN the ConfigMap the default values render, WHEN the job reads it as its environment
    settings = Settings.from_env(one(render(), "ConfigMap")["data"])

    # THEN each setting is Settings' own default: values.yaml states them for the reader, it does not change them
    defaults = Settings()
    differing = {
        name: (value, getattr(defaults, name))
        for name, value in dataclasses.asdict(settings).items()
        if value != getattr(defaults, name)
    }
    assert differing == {}
