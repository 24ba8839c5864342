"""Repository hygiene: no credentials committed (detect-secrets over every tracked file)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from detect_secrets import SecretsCollection
from detect_secrets.settings import default_settings
from manifests import ROOT

# Audited findings that are not secrets (the AWS sample events' request ids and sequencers); line numbers are
# left out of the comparison so editing a file does not break it.
BASELINE = ROOT / ".secrets.baseline"


def _scan(root: Path, files: list[str]) -> set[tuple[str, str, str]]:
    """(file, type, hashed secret) of every potential secret in `files`, with detect-secrets' default plugins."""
    secrets = SecretsCollection(root=str(root))
    with default_settings():
        for name in files:
            secrets.scan_file(name)
    return {(name, secret.type, secret.secret_hash) for name, secret in secrets}


def _tracked_files() -> list[str]:
    done = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(
            f"expected a git work tree at {ROOT} to list the tracked files, got: {done.stderr.strip()}"
        )
    # The baseline holds hashes of what it audited, which look like secrets themselves.
    return [name for name in done.stdout.splitlines() if (ROOT / name).is_file() and name != BASELINE.name]


def test_no_credentials_are_committed() -> None:
    # GIVEN the audited false positives
    audited = {
        (name, item["type"], item["hashed_secret"])
        for name, items in json.loads(BASELINE.read_text())["results"].items()
        for item in items
        if item.get("is_secret") is False
    }

    # WHEN every tracked file is scanned
    found = _scan(ROOT, _tracked_files())

    # THEN nothing but those turns up
    assert found - audited == set(), "a possible secret: remove it, or audit it into .secrets.baseline"
