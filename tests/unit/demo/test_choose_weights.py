"""The demo names a local weights file by its absolute path, so the spec the job records works from any folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from pomona.demo.run import choose_weights


def test_a_relative_weights_path_is_recorded_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "w.weights.h5").write_bytes(b"not read here")
    monkeypatch.chdir(tmp_path)

    asked = choose_weights("w.weights.h5", synthetic=False, environ={})
    configured = choose_weights("auto", synthetic=False, environ={"POMONA_WEIGHTS": "./w.weights.h5"})

    assert asked.spec == configured.spec == str(tmp_path / "w.weights.h5")


@pytest.mark.parametrize("spec", ["random", "imagenet", "s3://bucket/w.h5", "missing.h5"])
def test_other_specs_are_kept_as_given(spec: str) -> None:
    assert choose_weights(spec, synthetic=True, environ={}).spec == spec
