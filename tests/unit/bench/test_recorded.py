"""`bench history` reads moto's recording of requests, whose entries concurrent requests can put on one line."""

from __future__ import annotations

import json
from pathlib import Path

from pomona.bench.history import recorded


def test_entries_sharing_a_line_are_each_read_once(tmp_path: Path) -> None:
    # GIVEN a recording where two concurrent requests' appends interleaved: two entries, then both newlines
    entries = [{"method": "GET", "url": f"/k{i}", "headers": {}} for i in range(4)]
    recording = tmp_path / "moto_recording"
    recording.write_text(
        json.dumps(entries[0])
        + "\n"
        + json.dumps(entries[1])
        + json.dumps(entries[2])
        + "\n\n"
        + json.dumps(entries[3])
        + "\n"
    )

    # THEN every entry is read once, in order
    assert list(recorded(recording)) == entries


def test_no_recording_is_no_request(tmp_path: Path) -> None:
    assert list(recorded(tmp_path / "absent")) == []
