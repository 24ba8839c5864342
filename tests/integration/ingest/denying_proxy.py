"""An S3 endpoint in front of the moto server that refuses chosen keys, as S3 does when a policy denies them.

moto checks no IAM or bucket policy unless its whole process enforces authentication, so the denial is made here,
in S3's own wire format: a GET gets the XML error document, a HEAD the bare status (S3 sends HEAD errors without
a body). Every other request is relayed unchanged.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import unquote, urlsplit

# Headers about one connection, not the message; http.client and the server set their own.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "expect", "content-length"})


@dataclass(frozen=True)
class Refusal:
    methods: frozenset[str]
    status: int
    code: str


class DenyingProxy:
    """Relays S3 requests to `upstream`, refusing the keys `deny` names until `allow` lifts it; one per test."""

    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.refused: list[
            tuple[str, str]
        ] = []  # (method, "bucket/key") of every request answered with an error
        self._rules: dict[str, Refusal] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _relay_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="denying-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def deny(
        self,
        bucket: str,
        key: str,
        *,
        methods: tuple[str, ...] = ("GET", "HEAD"),
        status: int = 403,
        code: str = "AccessDenied",
    ) -> None:
        with self._lock:
            self._rules[f"{bucket}/{key}"] = Refusal(frozenset(methods), status, code)

    def allow(self, bucket: str, key: str) -> None:
        with self._lock:
            self._rules.pop(f"{bucket}/{key}", None)

    def refusal(self, method: str, path: str) -> Refusal | None:
        """The error to answer `method` on `path` (path-style: /bucket/key?query) with, or None to relay it."""
        target = unquote(urlsplit(path).path).lstrip("/")
        with self._lock:
            rule = self._rules.get(target)
            if rule is None or method not in rule.methods:
                return None
            self.refused.append((method, target))
            return rule

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _relay_for(proxy: DenyingProxy) -> type[BaseHTTPRequestHandler]:
    class Relay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects, and 100-continue for S3 PUTs

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._relay()

        do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            refusal = proxy.refusal(self.command, self.path)
            if refusal is not None:
                self._refuse(refusal)
                return
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
            finally:
                upstream.close()
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            # A HEAD response announces the object's length and carries no body.
            length = response.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _refuse(self, refusal: Refusal) -> None:
            document = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{refusal.code}</Code><Message>Denied by the test</Message>"
                "<RequestId>DENYINGPROXY</RequestId></Error>"
            ).encode()
            self.send_response_only(refusal.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("x-amz-request-id", "DENYINGPROXY")
            self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(document)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(document)

    return Relay
