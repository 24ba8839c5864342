"""Each image's lock against its base: `make lock` resolves it for the platform and Python the FROM line runs, it
resolves there from wheels alone, and the image's install succeeds there (PyPI, no Docker engine).

A base change that strands an image (a glibc older than its wheels need, a Python they were not built for) fails
here, not in a user's `docker build`.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from dockerfiles import DOWNLOADED, Build, replay
from image_installs import (
    GLIBC,
    Install,
    Target,
    canonical,
    installs,
    pins,
    platform_for,
    redo,
    run_uv,
    target,
)
from manifests import ROOT

VERIFIED = {"MOBILENET_V2_SHA256": hashlib.sha256(DOWNLOADED).hexdigest()}
# Every install of every image: (Dockerfile, stage); None is the final stage.
STAGES = {
    "lambda": (ROOT / "Dockerfile.lambda", None),
    "classify": (ROOT / "Dockerfile.classify", None),
    "classify-builder": (ROOT / "Dockerfile.classify", "builder"),
    "spark": (ROOT / "Dockerfile.spark", None),
    "spark-builder": (ROOT / "Dockerfile.spark", "builder"),
}
FINAL = ["lambda", "classify", "spark"]


@cache
def _replayed(name: str, fs: Path) -> Build:
    dockerfile, stage = STAGES[name]
    build = replay(dockerfile, fs, VERIFIED, stage=stage)
    assert build.returncode == 0, build.stderr
    return build


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Build, Target, Install]]:
    """Each stage replayed: its build, its base's target and its one install."""
    found = {}
    for name, (dockerfile, stage) in STAGES.items():
        build = _replayed(name, tmp_path_factory.mktemp(name) / "fs")
        ((_, install),) = installs(build)
        found[name] = (build, target(dockerfile, build, stage), install)
    return found


def _lock_of(install: Install) -> Path:
    (lock,) = install.constraints
    return ROOT / "constraints" / lock.name


@cache
def _make_lock_lines() -> dict[str, list[str]]:
    """`make lock`'s uv commands as make expands them, by the constraints file each writes."""
    make = shutil.which("make")
    if not make:
        pytest.skip("make not found: the Makefile's lock target says how each lock is resolved")
    printed = subprocess.run(
        [make, "-n", "--no-print-directory", "-o", ".venv/.installed", "lock"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.replace("\\\n", " ")
    lines = [shlex.split(line) for line in printed.splitlines() if "--output-file" in line]
    return {Path(words[words.index("--output-file") + 1]).name: words for words in lines}


def _option(words: list[str], name: str) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words) if word == name]


@pytest.mark.parametrize("name", list(STAGES))
def test_make_lock_resolves_each_image_lock_for_its_base(
    replayed: dict[str, tuple[Build, Target, Install]], name: str
) -> None:
    # GIVEN the stage's base, read from its FROM line, and the lock its install is constrained by
    _, on, install = replayed[name]
    words = _make_lock_lines()[_lock_of(install).name]

    # THEN `make lock` resolves that lock for the base's platform and Python, wheels only, and for every extra the
    # stage installs
    assert (_option(words, "--python-platform"), _option(words, "--python-version")) == (
        [on.platform],
        [on.python],
    )
    assert _option(words, "--only-binary") == [":all:"]
    assert set(install.extras) <= set(_option(words, "--extra"))


def test_the_lambda_bases_are_amazon_linux_2023(replayed: dict[str, tuple[Build, Target, Install]]) -> None:
    # Amazon Linux 2 (python:3.11 and older) has glibc 2.26: Pillow, numpy, LiteRT and OpenVINO have no wheels there.
    assert {replayed[name][1] for name in ("lambda", "classify")} == {Target("x86_64-manylinux_2_34", "3.13")}


@pytest.mark.slow
@pytest.mark.parametrize("lock", ["lambda", "classify", "spark"])
def test_each_lock_resolves_from_wheels_alone_for_its_base(
    replayed: dict[str, tuple[Build, Target, Install]], lock: str
) -> None:
    # GIVEN make lock's command for this lock, and the base of every stage that installs from it
    words = _make_lock_lines()[f"{lock}.txt"]
    (on,) = {t for _, t, install in replayed.values() if _lock_of(install).name == f"{lock}.txt"}
    excludes = [w for path in _option(words, "--excludes") for w in ("--excludes", str(ROOT / path))]

    # WHEN uv resolves the same extras for that base, wheels only, within the committed lock
    done = run_uv(
        "pip", "compile", str(ROOT / "pyproject.toml"), "--quiet", "--no-header", "--no-annotate",
        "--python-platform", on.platform, "--python-version", on.python, "--only-binary", ":all:",
        *[w for extra in _option(words, "--extra") for w in ("--extra", extra)], *excludes,
        "--constraint", str(ROOT / "constraints" / f"{lock}.txt"),
        cwd=ROOT,
    )  # fmt: skip

    # THEN it resolves, to exactly the lock's pins
    assert done.returncode == 0, done.stderr
    resolved = {
        canonical(name): version
        for name, _, version in (line.partition("==") for line in done.stdout.splitlines() if "==" in line)
    }
    assert resolved == pins(ROOT / "constraints" / f"{lock}.txt")


@pytest.mark.slow
@pytest.mark.parametrize("name", FINAL)
def test_each_image_installs_for_its_base(
    replayed: dict[str, tuple[Build, Target, Install]], name: str, tmp_path: Path
) -> None:
    # GIVEN the image's install, as its Dockerfile runs it
    _, on, install = replayed[name]
    locked = pins(_lock_of(install))

    # WHEN it is redone into an empty root for the image's base
    done = redo(install, tmp_path / "root", on)

    # THEN it succeeds from wheels, and every package it put there is at its pin (pomona, built from the source)
    assert done.returncode == 0, done.stderr
    installed = {
        canonical(d.metadata["Name"]): d.version
        for d in metadata.distributions(path=[str(tmp_path / "root")])
    }
    assert installed.pop("pomona") == metadata.version("pomona")
    assert {
        package: version for package, version in installed.items() if locked.get(package) != version
    } == {}


@pytest.mark.slow
def test_the_spark_image_holds_neither_tensorflow_nor_a_second_spark(
    replayed: dict[str, tuple[Build, Target, Install]], tmp_path: Path
) -> None:
    # GIVEN the Spark image's install redone for its base
    _, on, install = replayed["spark"]
    done = redo(install, tmp_path / "root", on, "--dry-run")

    # THEN it would install neither TensorFlow (the builder's) nor pyspark and its jars (the base's /opt/spark)
    assert done.returncode == 0, done.stderr
    would = {
        canonical(line.split()[1].partition("==")[0]) for line in done.stderr.splitlines() if " + " in line
    }
    assert would, done.stderr
    assert would & {"tensorflow", "tensorflow-cpu", "keras", "pyspark", "py4j"} == set()


@pytest.mark.slow
def test_a_base_older_than_the_wheels_fails_the_check(
    replayed: dict[str, tuple[Build, Target, Install]], tmp_path: Path
) -> None:
    # GIVEN the classify image's install, moved back onto AWS's Python 3.11 base (Amazon Linux 2, glibc 2.26)
    _, _, install = replayed["classify"]
    older = Target(platform_for(GLIBC["public.ecr.aws/lambda/python", "3.11"]), "3.11")

    # WHEN the check redoes it there
    done = redo(install, tmp_path / "root", older, "--dry-run")

    # THEN it fails, naming a package without a wheel for that glibc
    assert older.platform == "x86_64-manylinux_2_17"
    assert done.returncode != 0
    assert "no usable wheels" in done.stderr or "no wheels" in done.stderr, done.stderr
