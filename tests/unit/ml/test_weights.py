"""The runtime ImageNet download is checked against the sha256 the images are built with, and refused if it
differs: served here by a local HTTP server, so no test reaches the internet."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pomona.ml import weights
from pomona.ml.weights import IMAGENET_FILE, IMAGENET_SHA256_VARIABLE, WeightsError, resolve_weights

OFFICIAL = b"the weights file the images were built with"
TAMPERED = b"a file that is not the one the images were built with"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bytes]]:
    """IMAGENET_URL pointed at a local server; it answers with the bytes the test puts under "body"."""
    answer = {"body": b""}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server calls it by this name
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer["body"])))
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args: object) -> None:  # quiet: the output stays the test's
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(weights, "IMAGENET_URL", f"http://127.0.0.1:{server.server_port}/{IMAGENET_FILE}")
    try:
        yield answer
    finally:
        server.shutdown()
        server.server_close()


def test_a_download_with_the_pinned_hash_is_cached(
    served: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served["body"] = OFFICIAL
    monkeypatch.setenv(IMAGENET_SHA256_VARIABLE, hashlib.sha256(OFFICIAL).hexdigest())

    resolved = resolve_weights("imagenet", cache_dir=tmp_path)

    assert resolved.path == tmp_path / "weights" / IMAGENET_FILE
    assert resolved.path.read_bytes() == OFFICIAL


def test_a_download_with_another_hash_is_refused_and_not_cached(
    served: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the hash the images are built with, and a server answering with another file
    expected = hashlib.sha256(OFFICIAL).hexdigest()
    found = hashlib.sha256(TAMPERED).hexdigest()
    served["body"] = TAMPERED
    monkeypatch.setenv(IMAGENET_SHA256_VARIABLE, expected)

    # WHEN "imagenet" is resolved, THEN the download is refused, naming both hashes
    with pytest.raises(WeightsError, match=f"sha256 {expected} .*found {found}: refused"):
        resolve_weights("imagenet", cache_dir=tmp_path)

    # AND nothing was cached for a later run to trust
    assert not (tmp_path / "weights" / IMAGENET_FILE).exists()


def test_without_a_pinned_hash_nothing_is_downloaded(
    served: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served["body"] = OFFICIAL
    monkeypatch.delenv(IMAGENET_SHA256_VARIABLE, raising=False)

    with pytest.raises(WeightsError, match=f"expected {IMAGENET_SHA256_VARIABLE}=<sha256 of http://127"):
        resolve_weights("imagenet", cache_dir=tmp_path)

    assert not (tmp_path / "weights" / IMAGENET_FILE).exists()
