"""An image's install, read from its replayed build and redone here with uv for the image's base.

A base is a platform and a Python: `target(dockerfile, stage)` reads the FROM line (and the Spark stages' uv venv)
and names the glibc the base ships as the newest manylinux platform uv knows at or below it (uv names no 2_26, so
Amazon Linux 2's glibc 2.26 is manylinux_2_17 there). `redo(...)` runs the image's `pip install` / `uv pip install`
with that platform and Python, keeping the image's own options (wheels only, excludes), so what fails here is what
would fail in `docker build`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from dockerfiles import Build, Call, base_image

# The glibc each base image ships, by image and the start of its tag. A base not listed fails `target`: add it
# with the glibc its distribution has.
GLIBC = {
    ("public.ecr.aws/lambda/python", "3.11"): "2.26",  # Amazon Linux 2
    ("public.ecr.aws/lambda/python", "3.12"): "2.34",  # Amazon Linux 2023
    ("public.ecr.aws/lambda/python", "3.13"): "2.34",
    ("public.ecr.aws/lambda/python", "3.14"): "2.34",
    ("apache/spark", "ubuntu"): "2.35",  # the -ubuntu tags: Ubuntu 22.04
}
# uv's words for a package index it cannot reach: the only failure that skips a test instead of failing it.
OFFLINE = re.compile(
    r"failed to fetch|dns error|error sending request|connection (refused|reset)|network is unreachable|timed out",
    re.IGNORECASE,
)
# Options of an image's install that take a value and change what is installed, which a redo keeps.
KEPT = ("--only-binary", "--no-binary", "--excludes")
# Options whose value the redo replaces (its own target and Python) or reads (constraints).
REPLACED = ("--target", "-t", "--python", "-p", "--constraint", "-c")


@dataclass(frozen=True)
class Target:
    """Where an image's packages must run: a uv `--python-platform` and a `--python-version`."""

    platform: str
    python: str


@dataclass
class Install:
    """One install of an image: its requirement (`<project>[extras]`), constraint files and kept options."""

    requirement: Path
    extras: tuple[str, ...]
    constraints: list[Path] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        pytest.skip("uv not found beside this Python or on PATH; it comes with the dev extra")
    return found


@cache
def manylinux_platforms() -> tuple[tuple[int, int], ...]:
    """The x86_64 manylinux glibc versions uv's --python-platform names, oldest first."""
    shown = subprocess.run(
        [uv(), "pip", "compile", "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return tuple(sorted({(int(a), int(b)) for a, b in re.findall(r"x86_64-manylinux_(\d+)_(\d+)", shown)}))


def platform_for(glibc: str) -> str:
    """The newest manylinux platform uv names that a system with this glibc runs."""
    wanted = tuple(int(part) for part in glibc.split("."))
    fits = [version for version in manylinux_platforms() if version <= wanted]
    assert fits, f"expected a manylinux platform uv names at or below glibc {glibc}, found none"
    major, minor = fits[-1]
    return f"x86_64-manylinux_{major}_{minor}"


def target(dockerfile: Path, build: Build, stage: str | None = None) -> Target:
    """The platform and Python the stage's packages run on: AWS's Lambda base by its tag, the Spark base with the
    Python its `uv venv` installs."""
    image, _, tag = base_image(dockerfile, stage).partition("@")[0].rpartition(":")
    venvs = [call.args for call in build.called("uv") if call.args[:1] == ["venv"]]
    if image == "apache/spark":
        key, python = "ubuntu" if tag.endswith("-ubuntu") else tag, venvs[0][venvs[0].index("--python") + 1]
    else:
        key = python = ".".join(tag.split(".")[:2])
    glibc = GLIBC.get((image, key))
    assert glibc, f"expected the glibc of {image}:{tag} in image_installs.GLIBC, found none: add it"
    return Target(platform_for(glibc), ".".join(python.split(".")[:2]))


def installs(build: Build) -> list[tuple[Call, Install]]:
    """The build's `pip install` / `uv pip install` calls, each read as an Install."""
    found = []
    for call in build.calls:
        if (call.tool, call.args[:1]) == ("pip", ["install"]) or (call.tool, call.args[:2]) == (
            "uv",
            ["pip", "install"],
        ):
            found.append((call, _read(build, call)))
    return found


def _read(build: Build, call: Call) -> Install:
    args = call.args[call.args.index("install") + 1 :]
    requirement, extras, constraints, options, i = None, (), [], [], 0

    def path(value: str) -> Path:
        return build.on_fs(value) if value.startswith("/") else (call.cwd / value).resolve()

    while i < len(args):
        word = args[i]
        if word in {"--constraint", "-c"}:
            constraints.append(path(args[i + 1]))
        if word == "--excludes":
            options += [word, str(path(args[i + 1]))]
        elif word in KEPT:
            options += [word, args[i + 1]]
        if word in KEPT or word in REPLACED:
            i += 2
            continue
        if not word.startswith("-"):
            source, _, rest = word.partition("[")
            requirement, extras = path(source), tuple(rest.rstrip("]").split(",")) if rest else ()
        i += 1
    assert requirement, f"expected a project to install in {shlex.join(call.args)}, found none"
    return Install(requirement, extras, constraints, options)


def run_uv(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """uv with these arguments; skips the test when the package index is out of reach."""
    done = subprocess.run([uv(), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=1200)
    if done.returncode != 0 and OFFLINE.search(done.stderr):
        pytest.skip(f"the package index is out of reach: {done.stderr}")
    return done


def redo(install: Install, root: Path, on: Target, *extra: str) -> subprocess.CompletedProcess[str]:
    """The image's install, into `root`, for `on`'s platform and Python."""
    constraints = [word for c in install.constraints for word in ("--constraint", str(c))]
    requirement = (
        f"{install.requirement}[{','.join(install.extras)}]" if install.extras else str(install.requirement)
    )
    return run_uv(
        "pip", "install", "--python", sys.executable, "--target", str(root),
        "--python-platform", on.platform, "--python-version", on.python,
        *install.options, *constraints, *extra, requirement,
        cwd=install.requirement,
    )  # fmt: skip


def pins(lock: Path) -> dict[str, str]:
    """A constraints file as {normalised package name: version}; every line must be an exact pin."""
    found = {}
    for line in lock.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            package, exact, version = line.partition("==")
            assert exact, f"expected 'package==version' in {lock.name}, got {line!r}"
            found[canonical(package)] = version.strip()
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
