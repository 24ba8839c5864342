"""The everyday commands as a user runs them: `pomona validate --json`, `pomona upload`, `pomona status --json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pomona.cli.app import _VALIDATE_KEYS, app
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
