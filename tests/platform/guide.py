"""DEPLOY.md read as a shell script: its ```sh blocks, as commands (words), the variables they set and use.

Only what the guide's commands need is understood: continuation lines, comments, `|`, `&&`, `||` and `;` between
commands, `$(...)` inside a word (its command is taken out as a command of its own), `export`, `for NAME in`,
and `name() {` functions.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from manifests import ROOT

GUIDE = ROOT / "DEPLOY.md"
# A use of a variable: $NAME, ${NAME}, ${NAME#...}; $1 is a function's argument.
USE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
SUBSTITUTION = re.compile(r"\$\(([^()]*)\)")
SEPARATORS = {"|", "&&", "||", ";", "do", "done", "then", "fi", "{", "}"}
# What a shell or the guide's reader already has.
GIVEN = {"HOME", "PATH"}


@dataclass
class Command:
    """One simple command of the guide: its words, and the ## section it is in."""

    words: list[str]
    section: str


def blocks(text: str) -> list[tuple[str, str]]:
    """(section heading, body) of every ```sh block, in order."""
    found, section = [], ""
    for part in re.split(r"^(## [^\n]*|```sh\n.*?^```)$", text, flags=re.MULTILINE | re.DOTALL):
        if part.startswith("## "):
            section = part[3:].strip()
        elif part.startswith("```sh"):
            found.append((section, part.removeprefix("```sh\n").removesuffix("```")))
    return found


def logical_lines(body: str) -> list[str]:
    return [line for line in body.replace("\\\n", " ").splitlines() if line.strip()]


def commands(text: str | None = None) -> list[Command]:
    """Every simple command of the guide's sh blocks, `$(...)` substitutions first, in order."""
    found = []
    for section, body in blocks(text if text is not None else GUIDE.read_text()):
        for line in logical_lines(body):
            for inner in SUBSTITUTION.findall(line):
                found += [Command(words, section) for words in _split(inner)]
            found += [Command(words, section) for words in _split(line)]
    return found


def _split(line: str) -> list[list[str]]:
    # Every substitution of the guide is inside double quotes, so it stays within its word.
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
    lexer.whitespace_split, lexer.commenters = True, "#"
    simple: list[list[str]] = [[]]
    for word in lexer:
        if word in SEPARATORS or re.fullmatch(r"[|&;]+", word):
            simple.append([])
        elif word.startswith((">", "2>")):
            continue
        else:
            simple[-1].append(word)
    return [words for words in simple if words and not re.fullmatch(r"\w+\(\)", words[0])]


def defined_and_used(text: str | None = None) -> list[tuple[str, str]]:
    """("set" | "use", NAME) in the order the guide's lines do them (a line's uses before its assignment)."""
    events = []
    for _, body in blocks(text if text is not None else GUIDE.read_text()):
        for line in logical_lines(body):
            code = line.split(" #", 1)[0]
            if code.lstrip().startswith("#"):
                continue
            assigned = re.match(r"\s*(?:export\s+)?([A-Za-z_]\w*)=", code)
            loop = re.match(r"\s*for\s+([A-Za-z_]\w*)\s+in\b", code)
            function = re.match(r"\s*([A-Za-z_]\w*)\(\)\s*\{", code)
            # Single-quoted text is not expanded by the shell (the JMESPath queries).
            unquoted = re.sub(r"'[^']*'", "''", code)
            events += [("use", name) for name in USE.findall(unquoted)]
            for match in (assigned, loop, function):
                if match:
                    events.append(("set", match[1]))
    return events
