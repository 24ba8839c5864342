"""Dockerfiles read and replayed as a builder would, without a Docker engine.

`replay(dockerfile, fs)` runs the final stage (or the stage named by `stage=`) into a folder standing for the
image's filesystem: WORKDIR and COPY (from the build context, `.dockerignore` applied) land under `fs`, ARG and ENV
become the RUN environment, and each RUN runs in the instruction's SHELL with a PATH holding only a few harmless
real tools and stubs for everything that would install, download or delete. The stubs record how they were called,
so a test reads the commands as the shell expanded them. Paths in ARG and ENV values are moved under `fs`; literal
paths in a RUN reach only stubs. `COPY --from=<stage>` copies from that stage's replay when `stages=` holds it, and
is skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath

from manifests import ROOT

# Real tools a replayed RUN may use: they read, or write only under the paths the environment points at.
REAL_TOOLS = ("grep", "sha256sum", "mkdir", "dirname")
# Tools a replayed RUN calls that must not run here; each is a stub that records its call.
STUBBED_TOOLS = ("pip", "uv", "wget", "pomona", "install", "rm", "chmod")
# Instructions that change nothing a replay checks.
NO_EFFECT_HERE = {"LABEL", "EXPOSE", "ENTRYPOINT", "HEALTHCHECK", "STOPSIGNAL", "VOLUME"}
# What the wget stub writes to its -O file: the "downloaded" file.
DOWNLOADED = b"stand-in for a downloaded file\n"

_STUB = """#!{python} -I
import json, os, sys
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps({{"tool": tool, "cwd": os.getcwd(), "args": args}}) + "\\n")
if tool == "wget":
    with open(args[args.index("-O") + 1], "wb") as out:
        out.write({content!r})
"""


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


def substitute(text: str, variables: dict[str, str]) -> str:
    """`${NAME}` and `$NAME` replaced as the builder does; an unset variable becomes empty."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], ""), text)


def global_args(dockerfile: Path, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The ARGs declared before the first FROM (the ones FROM lines can use), `--build-arg` overrides applied."""
    found: dict[str, str] = {}
    for name, args in instructions(dockerfile):
        if name == "FROM":
            break
        if name == "ARG":
            key, _, default = args.partition("=")
            found[key] = (overrides or {}).get(key, _unquoted(default))
    return found


def _unquoted(value: str) -> str:
    return " ".join(shlex.split(value))


def base_image(dockerfile: Path, stage: str | None = None) -> str:
    """The FROM of the final stage (or of the stage named `stage`), build args substituted."""
    start, _ = _stage_bounds(dockerfile, stage)
    return substitute(instructions(dockerfile)[start][1].split()[0], global_args(dockerfile))


def _stage_name(from_args: str) -> str | None:
    """`image AS name` → name; None for a stage without one."""
    words = from_args.split()
    return words[-1] if len(words) >= 3 and words[-2].lower() == "as" else None


def _stage_bounds(dockerfile: Path, stage: str | None) -> tuple[int, int]:
    """The index of the stage's FROM and of the step after its last instruction."""
    steps = instructions(dockerfile)
    starts = [i for i, (name, _) in enumerate(steps) if name == "FROM"]
    if stage is None:
        start = starts[-1]
    else:
        named = [i for i in starts if _stage_name(steps[i][1]) == stage]
        if len(named) != 1:
            raise AssertionError(
                f"expected one stage named {stage!r} in {dockerfile.name}, found {len(named)}"
            )
        start = named[0]
    return start, next((i for i in starts if i > start), len(steps))


def _stage(dockerfile: Path, stage: str | None) -> list[tuple[str, str]]:
    start, end = _stage_bounds(dockerfile, stage)
    return instructions(dockerfile)[start + 1 : end]


def stage_env(dockerfile: Path, stage: str | None = None) -> dict[str, str]:
    """The ENV a stage sets (ARG values substituted), in the image's terms, without replaying it."""
    variables = dict(global_args(dockerfile))
    env: dict[str, str] = {}
    for name, args in _stage(dockerfile, stage):
        if name == "ARG":
            key, has_default, default = args.partition("=")
            variables[key] = _unquoted(default) if has_default else variables.get(key, "")
        elif name == "ENV":
            pairs = dict(_pairs(substitute(args, variables | env)))
            env |= pairs
            variables |= pairs
    return env


def copies_from_stages(dockerfile: Path, stage: str | None = None) -> list[tuple[str, str, str]]:
    """(stage, source, destination) of each `COPY --from=<stage>` of the final stage (or of `stage`)."""
    found = []
    for name, args in _stage(dockerfile, stage):
        words = args.split()
        origin = [w.removeprefix("--from=") for w in words if w.startswith("--from=")]
        if name == "COPY" and origin:
            *sources, dest = [w for w in words if not w.startswith("--")]
            found += [(origin[0], source, dest) for source in sources]
    return found


# -- the build context -------------------------------------------------------------------------------------------


def _pattern(text: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match, plus `**` for any number of folders) as a regex."""
    out, i = "", 0
    while i < len(text):
        if text.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif text.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(text[i], re.escape(text[i]))
            i += 1
    return re.compile(out)


@cache
def _dockerignore() -> tuple[tuple[bool, str, re.Pattern[str]], ...]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keep = line.startswith("!")
            text = line.removeprefix("!").strip().strip("/")
            rules.append((keep, text, _pattern(text)))
    return tuple(rules)


def _ignored(path: str) -> bool:
    """The last rule matching `path` or a folder above it decides, as in Docker's pattern matcher."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for keep, _, regex in _dockerignore():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not keep
    return ignored


@cache
def build_context() -> frozenset[str]:
    """The files `docker build .` sends from the repository root, as paths relative to it."""
    exceptions = [text for keep, text, _ in _dockerignore() if keep]
    found = set()
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if here == "." else f"{here}/"
        # An ignored folder is only walked when an exception could let something under it back in.
        dirs[:] = [
            d
            for d in dirs
            if not _ignored(prefix + d)
            or any(e.startswith(f"{prefix}{d}/") or set("*?[") & set(e) for e in exceptions)
        ]
        found |= {prefix + name for name in files if not _ignored(prefix + name)}
    return frozenset(found)


def _context_files(source: str) -> tuple[bool, dict[str, str]]:
    """Whether COPY `source` is one file, and the context files it copies, each with its path below `source`."""
    source = source.strip("/").removeprefix("./")
    if source in build_context():
        return True, {source: PurePosixPath(source).name}
    under = {
        name: name.removeprefix(f"{source}/") for name in build_context() if name.startswith(f"{source}/")
    }
    if not under:
        raise AssertionError(f"expected COPY {source} in the build context, found it excluded or absent")
    return False, under


# -- the replay ----------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One call of a stubbed tool: its name, the folder it ran in (under `fs`) and its arguments."""

    tool: str
    cwd: Path
    args: list[str]


@dataclass
class Build:
    fs: Path
    returncode: int = 0
    stderr: str = ""
    calls: list[Call] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    cmd: list[str] = field(default_factory=list)

    def on_fs(self, path: str | Path) -> Path:
        """An absolute path in the image as the folder standing for it here."""
        return self.fs / PurePosixPath(path).relative_to("/")

    def called(self, tool: str) -> list[Call]:
        return [call for call in self.calls if call.tool == tool]


def replay(
    dockerfile: Path,
    fs: Path,
    build_args: dict[str, str] | None = None,
    *,
    stage: str | None = None,
    stages: dict[str, Build] | None = None,
) -> Build:
    """Run the final stage of `dockerfile` (or the stage named `stage`) into `fs`, with earlier stages' replays in
    `stages` for `COPY --from` (see the module docstring); stops at the first failing RUN."""
    build = Build(fs=fs)
    fs.mkdir(parents=True, exist_ok=True)
    tools, log = fs.parent / f"{fs.name}-tools", fs.parent / f"{fs.name}-calls.jsonl"
    _tools(tools, log)

    known = global_args(dockerfile, build_args)
    variables: dict[str, str] = {}  # ARG and ENV values in the image's terms
    shell, workdir = ["/bin/sh", "-c"], PurePosixPath("/")
    for name, args in _stage(dockerfile, stage):
        if name == "ARG":
            key, has_default, default = args.partition("=")
            value = _unquoted(default) if has_default else known.get(key, "")
            variables[key] = (build_args or {}).get(key, value)
        elif name == "ENV":
            variables |= dict(_pairs(substitute(args, variables)))
        elif name == "SHELL":
            shell = json.loads(args)
        elif name == "WORKDIR":
            workdir = workdir / substitute(args, variables)
            build.on_fs(workdir).mkdir(parents=True, exist_ok=True)
        elif name == "COPY":
            _copy(build, workdir, substitute(args, variables), stages or {})
        elif name == "USER":
            build.user = substitute(args, variables)
        elif name == "CMD":
            build.cmd = json.loads(args)
        elif name == "RUN":
            environment = {k: _moved(build, v) for k, v in variables.items()} | {"PATH": str(tools)}
            done = subprocess.run(
                [*shell, args],
                cwd=build.on_fs(workdir),
                env=environment,
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            if done.returncode != 0:
                build.returncode, build.stderr = done.returncode, done.stderr
                break
        elif name not in NO_EFFECT_HERE:
            raise AssertionError(
                f"expected instructions the replay knows, got {name}: teach dockerfiles.replay it"
            )
    build.env = variables
    if log.exists():
        build.calls = [
            Call(c["tool"], Path(c["cwd"]), c["args"]) for c in map(json.loads, log.read_text().splitlines())
        ]
    return build


def _tools(folder: Path, log: Path) -> None:
    folder.mkdir(exist_ok=True)
    for tool in REAL_TOOLS:
        real = shutil.which(tool, path="/usr/bin:/bin")
        assert real, f"expected {tool} in /usr/bin or /bin, found none"
        (folder / tool).symlink_to(real)
    stub = _STUB.format(python=sys.executable, log=str(log), content=DOWNLOADED)
    for tool in STUBBED_TOOLS:
        (folder / tool).write_text(stub)
        (folder / tool).chmod(0o755)


def _pairs(args: str) -> list[tuple[str, str]]:
    """ENV's `KEY=value ...` (or legacy `KEY value`) as pairs."""
    words = shlex.split(args)
    if "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    return [(key, value) for key, _, value in (word.partition("=") for word in words)]


def _moved(build: Build, value: str) -> str:
    """An absolute path moved under `fs`; any other value as it is."""
    return str(build.on_fs(value)) if value.startswith("/") and not set(":; ") & set(value) else value


def _copy_words(args: str) -> tuple[list[str], str] | None:
    """COPY's sources and destination; None when it copies from another stage or image, not from the context."""
    words = json.loads(args) if args.startswith("[") else args.split()
    if any(word.startswith("--from") for word in words):
        return None
    *sources, dest = [word for word in words if not word.startswith("--")]
    return sources, dest


def copy_sources(dockerfile: Path) -> set[str]:
    """What the Dockerfile's COPY instructions take from the build context, as paths relative to it."""
    found = set()
    for name, args in instructions(dockerfile):
        copied = _copy_words(args) if name == "COPY" else None
        if copied:
            found |= {source.strip("/").removeprefix("./") for source in copied[0]}
    return found


def _copy(build: Build, workdir: PurePosixPath, args: str, stages: dict[str, Build]) -> None:
    copied = _copy_words(args)
    if copied is None:
        _copy_from_stage(build, workdir, args, stages)
        return
    sources, dest = copied
    target = build.on_fs(workdir / dest)
    into_folder = dest.endswith("/") or len(sources) > 1
    for source in sources:
        one_file, files = _context_files(source)
        for name, relative in files.items():
            path = target if one_file and not into_folder else target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes((ROOT / name).read_bytes())


def _copy_from_stage(build: Build, workdir: PurePosixPath, args: str, stages: dict[str, Build]) -> None:
    """`COPY --from=<stage> src... dest` from that stage's replayed filesystem; skipped for a stage not replayed."""
    words = args.split()
    (origin,) = [w.removeprefix("--from=") for w in words if w.startswith("--from=")]
    if origin not in stages:
        return
    *sources, dest = [w for w in words if not w.startswith("--")]
    target = build.on_fs(workdir / dest)
    for source in sources:
        found = stages[origin].on_fs(source)
        if found.is_dir():
            shutil.copytree(found, target, dirs_exist_ok=True)
        elif found.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(found, target / found.name if dest.endswith("/") else target)
        else:
            raise AssertionError(f"expected COPY --from={origin} {source} in that stage, found nothing there")
