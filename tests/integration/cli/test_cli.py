"""The everyday commands as a user runs them: `pomona validate --json`, `pomona upload`, `pomona status` (as JSON,
and as tables at any width)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from pomona.cli.app import _VALIDATE_KEYS, app
from pomona.core.aws import put_json
from pomona.core.outputs import manifest_key
from pomona.core.settings import Settings
from pomona.ingest import handler
from pomona.local.poller import EventSourcePoller
from pomona.testing.samples import fruit_image


def test_validate_prints_one_json_object_per_file_and_exits_0_whatever_the_verdicts(tmp_path: Path) -> None:
    # GIVEN a real JPEG and a text file named like one
    good, bad = tmp_path / "apple.jpg", tmp_path / "notes.jpg"
    good.write_bytes(fruit_image("Apple Red", 0))
    bad.write_text("not a picture")

    # WHEN both are validated
    result = CliRunner().invoke(app, ["validate", "--json", str(good), str(bad)])

    # THEN each gets its verdict on a line of its own, with the documented keys
    assert result.exit_code == 0, result.output
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [tuple(v) for v in verdicts] == [_VALIDATE_KEYS] * 2
    assert [(v["file"], v["accepted"], v["reason"]) for v in verdicts] == [
        (str(good), True, None),
        (str(bad), False, "not_an_image"),
    ]
    assert verdicts[0]["format"] == "JPEG"


def test_upload_then_status_show_what_the_lambda_did(ingest: Settings, tmp_path: Path) -> None:
    # GIVEN a folder in the app's layout: two labels, one file that is no image
    for label, index in [("Lime", 0), ("Lime", 1), ("Plum", 2)]:
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / f"{index}.jpg").write_bytes(fruit_image(label, index))
    (tmp_path / "Plum" / "readme.jpg").write_text("not a picture")

    # WHEN it is uploaded, the Lambda handles the notifications, and status is asked for
    uploaded = CliRunner().invoke(app, ["upload", str(tmp_path)])
    EventSourcePoller(ingest.events_queue_url, handler.lambda_handler).drain()
    status = CliRunner().invoke(app, ["status", "--json"])

    # THEN the three images wait on the images queue, the text file is quarantined, nothing is committed yet
    assert uploaded.exit_code == 0, uploaded.output
    assert "uploaded 4 files" in uploaded.stderr
    assert status.exit_code == 0, status.output
    report = json.loads(status.stdout)
    assert report["queues"]["images"] == {"visible": 3, "in_flight": 0}
    assert report["queues"]["images_dlq"] == {"visible": 0, "in_flight": 0}
    assert report["quarantined"] == {"not_an_image": 1}
    assert (report["bucket"], report["pca_version"], report["batches"]) == (ingest.bucket, 0, [])


@pytest.mark.slow  # botocore's adaptive mode retries 8 times with backoff first: about 10 s
def test_status_against_an_unreachable_endpoint_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port

    result = CliRunner().invoke(app, ["status"])

    assert result.exit_code == 1
    assert result.stderr.startswith("error: AWS said: Could not connect to the endpoint URL")
    assert "Traceback" not in result.output


def _manifest(batch_id: str, version: int, featurized: int) -> dict[str, Any]:
    """A committed batch's manifest, with the fields `pomona status` reads."""
    return {
        "batch_id": batch_id,
        "pca_version": version,
        "created_at": "2026-12-06T11:00:00+00:00",
        "n_seen": 1000 * version + featurized,
        "k": 40 + version,
        "counts": {
            "featurized": featurized,
            "failed": {"not_an_image": 2, "fetch_failed": 1},
            "deferred": {},
            "duplicates": 17,
            "labels": {"Lime": featurized},
            "unfamiliar": 4,
        },
        "quality": {"n": 54, "accuracy": 0.98, "answered_fraction": 0.9, "best_threshold": 0.9967},
    }


BATCHES = [("20261206T110000Z-1a2b3c4d", 1, 1234), ("20261206T120000Z-5e6f7a8b", 2, 56789)]


@pytest.mark.parametrize("how", ["columns-80", "piped"])
def test_status_shows_each_batch_whole_in_80_columns(deployment: Settings, how: str) -> None:
    # GIVEN two committed batches
    s3 = boto3.client("s3", endpoint_url=deployment.endpoint_url)
    for batch_id, version, featurized in BATCHES:
        put_json(
            s3,
            deployment.bucket,
            manifest_key(deployment.output_prefix, batch_id),
            _manifest(batch_id, version, featurized),
        )

    # WHEN status is asked for in an 80-column terminal, or with its output piped (no terminal, no COLUMNS)
    if how == "piped":
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        pomona = Path(sys.executable).with_name("pomona")
        done = subprocess.run(
            [pomona, "status"], capture_output=True, text=True, env=env, check=False, timeout=120
        )
        code, out = done.returncode, done.stdout
    else:
        result = CliRunner().invoke(app, ["status"], env={"COLUMNS": "80"})
        code, out = result.exit_code, result.stdout

    # THEN every line fits, and each batch's id and figures are there whole, not cut to "bat…", "n_s…"
    assert code == 0, out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    for batch_id, version, featurized in BATCHES:
        assert re.search(rf"^{batch_id}$", out, re.MULTILINE), out
        for label, value in [("PCA", version), ("n_seen", 1000 * version + featurized), ("k", 40 + version),
                             ("featurized", featurized), ("failed", 3), ("dup", 17), ("unfamiliar", 4),
                             ("holdout acc.", 0.98), ("threshold", 0.9967)]:  # fmt: skip
            assert re.search(rf"(^|\s){re.escape(label)} {value}(\s|$)", out, re.MULTILINE), (label, out)


def test_status_in_a_wide_terminal_is_one_table_row_a_batch(deployment: Settings) -> None:
    s3 = boto3.client("s3", endpoint_url=deployment.endpoint_url)
    batch_id, version, featurized = BATCHES[1]
    put_json(
        s3,
        deployment.bucket,
        manifest_key(deployment.output_prefix, batch_id),
        _manifest(batch_id, version, featurized),
    )

    result = CliRunner().invoke(app, ["status"], env={"COLUMNS": "250"})

    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if batch_id in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")][:7] == [
        batch_id,
        "2",
        "58789",
        "42",
        "56789",
        "3",
        "17",
    ]
