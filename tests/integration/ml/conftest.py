"""What this folder's model tests share: the real weights, and one cache of converted models for the session
(each conversion to `.tflite` runs TensorFlow in a child process for a while)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def weights(weights_path: Path) -> str:
    return str(weights_path)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pomona-cache")
