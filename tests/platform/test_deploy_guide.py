"""DEPLOY.md against the repository: every command of the guide names only what exists (files, build args, make
targets, stack parameters and outputs, chart values, `pomona` commands and flags), every variable is set before it
is used, and scripts/kind-e2e.sh --dry-run takes the same steps in the same order."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfiles import instructions
from guide import GIVEN, GUIDE, Command, commands, defined_and_used
from manifests import CHART, ROOT, run_helm
from test_kind_script import SCRIPT
from test_kind_script import commands as script_commands

POMONA = Path(sys.executable).parent / "pomona"
# Stand-ins for what the guide's variables and stack outputs hold on a real account, to render the chart with.
SAMPLE = {
    "REGISTRY": "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    "SPARK_DIGEST": "sha256:" + "0" * 64,
    "NAMESPACE": "pomona",
    "RELEASE": "pomona",
    "POMONA_BUCKET": "pomona-123456789012-images",
    "POMONA_IMAGES_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/pomona-123456789012-images",
    "POMONA_IMAGES_DLQ_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/pomona-123456789012-images-dlq",
    "POMONA_SEEN_TABLE": "pomona-123456789012-seen",
    "POMONA_GLUE_DATABASE": "pomona_123456789012",
}
OUTPUTS = {
    "JobRoleArn": "arn:aws:iam::123456789012:role/pomona-JobRole-1",
    "ExecutorRoleArn": "arn:aws:iam::123456789012:role/pomona-ExecutorRole-1",
}


def _template() -> dict[str, Any]:
    import cfnlint.decode

    decoded, problems = cfnlint.decode.decode(ROOT / "deploy" / "template.yaml")
    assert not problems
    return decoded  # type: ignore[no-any-return]


def _named(program: str, *start: str) -> list[Command]:
    found = [c for c in commands() if c.words[: 1 + len(start)] == [program, *start]]
    assert found, f"expected DEPLOY.md to run `{' '.join((program, *start))}`, found it nowhere"
    return found


def _option(words: list[str], name: str) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == name]


def _expand(word: str) -> str:
    word = re.sub(r"\$\(out (\w+)\)", lambda m: OUTPUTS[m[1]], word)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: SAMPLE[m[1]], word)


def test_every_variable_is_set_before_it_is_used() -> None:
    seen, unset = set(GIVEN), []
    for event, name in defined_and_used():
        if event == "set":
            seen.add(name)
        elif name not in seen:
            unset.append(name)

    assert unset == []
    assert {"ACCOUNT_ID", "NAME", "REGISTRY", "TAG", "OIDC_PROVIDER_ARN"} <= seen


def test_an_unset_variable_is_found() -> None:
    # The reader the checks rely on: a use before any assignment is reported, in order.
    text = "## x\n```sh\nexport A=1\necho \"$A ${B#x}\" '$C'\nB=2\n```\n"

    assert defined_and_used(text) == [("set", "A"), ("use", "A"), ("use", "B"), ("set", "B")]


def test_every_file_it_names_exists() -> None:
    named = [
        value
        for command in commands()
        if command.words[0] in {"docker", "kubectl", "aws"}
        for value in _option(command.words, "-f") + _option(command.words, "--template-file")
        if value != "-"
    ]
    named += [
        word for c in commands() for word in c.words if re.fullmatch(r"(helm|deploy|scripts)/[\w./-]+", word)
    ]

    assert {"Dockerfile.lambda", "Dockerfile.classify", "Dockerfile.spark", "deploy/template.yaml"} <= set(
        named
    )
    assert [path for path in named if not (ROOT / path).exists()] == []


def test_images_are_built_for_lambda_and_the_nodes_and_deployed_by_digest() -> None:
    builds = _named("docker", "buildx", "build")
    url = next(c.words[0].partition("=")[2] for c in commands() if c.words[0].startswith("MOBILENET_V2_URL="))

    for build in builds:
        dockerfile = ROOT / _option(build.words, "-f")[0]
        # An arm64 laptop would otherwise build images Lambda and x86_64 nodes cannot run; Lambda refuses the
        # attestation index buildx adds by default.
        assert _option(build.words, "--platform") == ["linux/amd64"]
        assert "--provenance=false" in build.words
        assert "--push" in build.words
        declared = {args.partition("=")[0] for name, args in instructions(dockerfile) if name == "ARG"}
        assert {arg.partition("=")[0] for arg in _option(build.words, "--build-arg")} <= declared
        # The sha256 the guide computes is of the file the Dockerfile downloads.
        urls = {a.partition("=")[2] for n, a in instructions(dockerfile) if a.startswith("MOBILENET_V2_URL=")}
        assert urls <= {url}
    assert len(builds) == 3


def test_stack_parameters_and_outputs_it_uses_exist() -> None:
    template = _template()
    (deploy,) = _named("aws", "cloudformation", "deploy")
    words = deploy.words
    overrides = words[words.index("--parameter-overrides") + 1 :]
    passed = {word.partition("=")[0] for word in overrides if "=" in word}
    required = {name for name, p in template["Parameters"].items() if "Default" not in p}
    outputs = {m for c in commands() for word in c.words for m in re.findall(r"\$\(out (\w+)\)", word)}
    outputs |= {c.words[1] for c in commands() if c.words[0] == "out"}

    assert passed <= set(template["Parameters"])
    assert required <= passed
    assert outputs <= set(template["Outputs"])
    assert _option(words, "--template-file") == ["deploy/template.yaml"]


def test_the_chart_installs_with_the_values_it_sets(helm: Path) -> None:
    # GIVEN the guide's `helm upgrade --install` of the chart, its variables standing for a real account's values
    (install,) = [c for c in _named("helm", "upgrade", "--install") if "helm/pomona" in c.words]
    sets = [_expand(value) for value in _option(install.words, "--set")]

    # WHEN the chart is rendered with exactly those values (the schema refuses any value it does not know)
    args = [word for value in sets for word in ("--set", value)]
    rendered = [d for d in yaml.safe_load_all(run_helm(helm, "template", "pomona", str(CHART), *args)) if d]

    # THEN the runs pull the pushed image by its digest, as the stack's roles
    (scheduled,) = [d for d in rendered if d["kind"] == "ScheduledSparkApplication"]
    accounts = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ServiceAccount"}
    assert (
        scheduled["spec"]["template"]["image"]
        == f"{SAMPLE['REGISTRY']}/pomona-spark@{SAMPLE['SPARK_DIGEST']}"
    )
    assert {
        a["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn") for a in accounts.values()
    } == set(OUTPUTS.values())


@pytest.mark.parametrize("sub", ["upload", "cluster trigger", "cluster status", "status"])
def test_every_pomona_command_and_flag_it_runs_exists(sub: str) -> None:
    uses = _named("pomona", *sub.split())
    shown = subprocess.run(
        [str(POMONA), *sub.split(), "--help"], capture_output=True, text=True, check=False, timeout=120
    )

    assert shown.returncode == 0, shown.stderr
    flags = {word for use in uses for word in use.words if word.startswith("--")}
    assert {flag for flag in flags if flag not in shown.stdout} == set()


def test_make_targets_it_names_exist() -> None:
    named = set(re.findall(r"`make (\w+)", GUIDE.read_text()))
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))

    assert named
    assert named <= targets


def test_the_namespace_exists_before_the_operator_watches_it() -> None:
    order = [c.words for c in commands()]
    namespace = next(i for i, w in enumerate(order) if w[:3] == ["kubectl", "create", "namespace"])
    operator = next(i for i, w in enumerate(order) if "spark-operator/spark-operator" in w)

    assert namespace < operator
    assert "spark.jobNamespaces={${NAMESPACE}}" in order[operator]


def _phase(words: list[str]) -> str | None:
    """Which step of a deployment a command is, in the guide and in the kind script alike."""
    text = " ".join(words)
    rules = [
        (r"^docker (buildx )?build ", "build the images"),
        (r"^kubectl .*(create namespace|apply -f -( <<EOF)?)$", "namespace"),
        (r"^aws cloudformation deploy|kubectl .* run provision ", "stack"),
        (r"^helm upgrade --install spark-operator ", "operator"),
        (r"^helm upgrade --install \S+ \S*helm/pomona", "chart"),
        (r"^(host_env )?pomona upload ", "upload"),
        (r"^pomona cluster (trigger|run) ", "first run"),
        (r"^pomona (cluster )?status", "status"),
    ]
    return next((phase for pattern, phase in rules if re.search(pattern, text)), None)


def _phases(sequence: list[list[str]]) -> list[str]:
    found: list[str] = []
    for words in sequence:
        phase = _phase(words)
        if phase and phase not in found:
            found.append(phase)
    return found


def test_kind_script_dry_run_takes_the_guides_steps_in_its_order() -> None:
    # GIVEN the guide's commands, and the commands scripts/kind-e2e.sh --dry-run prints
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    guide = _phases([c.words for c in commands()])
    script = _phases(script_commands(done.stdout))

    # THEN both take every step, in the same order
    assert guide == script
    assert guide[:5] == ["build the images", "namespace", "stack", "operator", "chart"]


def test_operator_is_installed_as_the_kind_script_installs_it() -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
        timeout=60,
        check=False,
    )
    ((guide,),) = [[c.words for c in _named("helm", "upgrade", "--install", "spark-operator")]]
    (script,) = [
        w for w in script_commands(done.stdout) if w[:4] == ["helm", "upgrade", "--install", "spark-operator"]
    ]

    def settings(words: list[str]) -> dict[str, list[str]]:
        return {name: _option(words, name) for name in ("--version", "--namespace", "--set")}

    assert settings(guide) == settings(script) | {
        "--set": [s.replace("pomona", "${NAMESPACE}") for s in settings(script)["--set"]]
    }
