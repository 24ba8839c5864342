"""An HTTP proxy in front of the moto server that fails the requests a plan picks, as AWS and networks do.

moto checks no IAM or bucket policy and never throttles, so these faults are made here, in the services' own wire
formats: S3's XML error documents (a HEAD gets its status alone), SQS's JSON errors, connections reset before or
after the service did the work. The job's fault tests and the Lambda's access tests both go through it.
"""

from __future__ import annotations

import dataclasses
import enum
import http.client
import itertools
import socket
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit


class Fault(enum.Enum):
    THROTTLE = "throttle"  # S3 503 SlowDown, SQS RequestThrottled
    SERVER_ERROR = "server_error"  # 500 InternalError
    RESET = "reset"  # the connection is reset before the request reaches the service
    LOST_RESPONSE = "lost_response"  # the service does the work, then the connection is reset
    DENIED = "denied"  # 403 AccessDenied: an IAM or bucket-policy mistake, until someone fixes it
    ARCHIVED = "archived"  # 403 InvalidObjectState: an object in an archive tier, until it is restored


TRANSIENT = (Fault.THROTTLE, Fault.SERVER_ERROR, Fault.RESET, Fault.LOST_RESPONSE)


@dataclasses.dataclass(frozen=True)
class Call:
    number: int
    method: str
    path: str
    service: str  # "s3", "sqs" or "glue"


Plan = Callable[[Call], Fault | None]


class FlakyProxy:
    """An HTTP proxy in front of the moto server that fails the requests `plan` picks; one per test.

    A client reaches AWS through it when its endpoint names `url`: the job's S3, SQS and Glue clients (pyiceberg's
    and pyarrow's too), in the driver and the Spark workers alike, with `settings.endpoint_url`; the Lambda's S3
    client with `AWS_ENDPOINT_URL_S3`.
    """

    def __init__(self, upstream: str, plan: Plan) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.plan = plan
        self.injected: list[tuple[Fault, Call]] = []
        self._count = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="flaky-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def decide(self, method: str, path: str, service: str) -> tuple[Fault | None, Call]:
        with self._lock:
            call = Call(number=next(self._count), method=method, path=path, service=service)
            fault = self.plan(call)
            if fault is not None:
                self.injected.append((fault, call))
            return fault, call

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "expect",
    "content-length",
    "proxy-connection",
}


def _handler_for(proxy: FlakyProxy) -> type[BaseHTTPRequestHandler]:
    class Relay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects, and 100-continue for S3 PUTs

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._relay()

        do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        def _relay(self) -> None:
            body = self._body()
            target = self.headers.get("X-Amz-Target", "")
            service = (
                "sqs" if target.startswith("AmazonSQS") else "glue" if target.startswith("AWSGlue") else "s3"
            )
            fault, _ = proxy.decide(self.command, self.path, service)
            if fault is Fault.RESET:
                self._reset()
                return
            if fault in _ERRORS:
                self._error(fault, service)
                return
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
            finally:
                upstream.close()
            if fault is Fault.LOST_RESPONSE:
                self._reset()
                return
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

        def _body(self) -> bytes:
            """The request's body: by its Content-Length, or chunk by chunk (pyarrow's S3 client streams PUTs)."""
            if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the chunk's CRLF
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers, up to the empty line
            return b"".join(chunks)

        def _error(self, fault: Fault, service: str) -> None:
            status, code = _ERRORS[fault]
            if service == "sqs":
                if fault is Fault.THROTTLE:
                    status, code = 400, "RequestThrottled"
                body = f'{{"__type": "com.amazonaws.sqs#{code}", "message": "injected"}}'.encode()
                content_type = "application/x-amz-json-1.0"
            elif service == "glue":
                status, code = (
                    (400, "ThrottlingException")
                    if fault is Fault.THROTTLE
                    else (500, "InternalServiceException")
                )
                body = f'{{"__type": "{code}", "message": "injected"}}'.encode()
                content_type = "application/x-amz-json-1.1"
            else:
                body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
                content_type = "application/xml"
            if self.command == "HEAD":  # S3 answers a HEAD's error with its status alone
                body = b""
            self.send_response_only(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _reset(self) -> None:
            # SO_LINGER 0: closing sends a TCP RST, as a dropped connection does; the client sees no response.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True

    return Relay


# An error a fault answers with, when it is not a reset connection: (HTTP status, S3's error code).
_ERRORS = {
    Fault.THROTTLE: (503, "SlowDown"),
    Fault.SERVER_ERROR: (500, "InternalError"),
    Fault.DENIED: (403, "AccessDenied"),
    Fault.ARCHIVED: (403, "InvalidObjectState"),
}


class Denials:
    """A plan that refuses chosen S3 objects until they are allowed again, as S3 does when a policy denies them;
    every request is relayed unchanged otherwise."""

    def __init__(self) -> None:
        self.refused: list[tuple[str, str]] = []  # (method, "bucket/key") of every request refused
        self._rules: dict[str, tuple[frozenset[str], Fault]] = {}
        self._lock = threading.Lock()

    def deny(
        self,
        bucket: str,
        key: str,
        *,
        methods: tuple[str, ...] = ("GET", "HEAD"),
        fault: Fault = Fault.DENIED,
    ) -> None:
        with self._lock:
            self._rules[f"{bucket}/{key}"] = (frozenset(methods), fault)

    def allow(self, bucket: str, key: str) -> None:
        with self._lock:
            self._rules.pop(f"{bucket}/{key}", None)

    def __call__(self, call: Call) -> Fault | None:
        target = unquote(urlsplit(call.path).path).lstrip("/")  # path-style: /bucket/key?query
        with self._lock:
            methods, fault = self._rules.get(target, (frozenset(), Fault.DENIED))
            if call.service != "s3" or call.method not in methods:
                return None
            self.refused.append((call.method, target))
            return fault
