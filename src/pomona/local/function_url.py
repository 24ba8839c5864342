"""A Lambda Function URL on loopback: HTTP requests in, payload-2.0 events to a real handler, its response out.

`pomona local up` serves the classify Lambda's handler this way, so the app's developers call it as they would
the deployed URL (without the SigV4 signature, which only AWS checks). Given a `page`, a browser's GET of `/` gets
that HTML instead (`pomona.local.page`); every other request, the app's included, reaches the handler.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pybase64

from pomona.local.poller import Handler, LambdaContext

log = logging.getLogger(__name__)

# AWS caps a synchronous invocation's event at 6 MB, and the event carries the body base64-encoded (4 bytes per 3):
# a body above ~4.5 MB gets a 413 there, so here too.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024 * 3 // 4
# The page may run only its own inline style and script, show the photo picked (a blob: URL) and call this server.
PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def wants_page(method: str, target: str, accept: str) -> bool:
    """A browser opening `/`: a GET that asks for HTML. The app, curl and urllib do not ask for it, so they get the
    handler's own answer to a GET (405), as from the deployed URL."""
    return method == "GET" and (urlsplit(target).path or "/") == "/" and "text/html" in accept.lower()


def function_url_event(method: str, target: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The event a Function URL hands its Lambda for this request (payload format 2.0, body base64-encoded)."""
    parts = urlsplit(target)
    now = datetime.now(UTC)
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": parts.path or "/",
        "rawQueryString": parts.query,
        "queryStringParameters": dict(parse_qsl(parts.query)) or None,
        "headers": {name.lower(): value for name, value in headers.items()},
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "local",
            "domainName": "127.0.0.1",
            "http": {
                "method": method,
                "path": parts.path or "/",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("User-Agent", ""),
            },
            "requestId": f"local-{time.monotonic_ns()}",
            "routeKey": "$default",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "body": pybase64.b64encode(body).decode(),  # as fast as AWS's own: CPython's takes 6 ms for 4 MB
        "isBase64Encoded": True,
    }


class FunctionUrlServer:
    """`handler` behind http://127.0.0.1:`port`/ until `stop()`; port 0 picks a free one. With `page`, browsers
    opening `/` get that HTML."""

    def __init__(
        self,
        handler: Handler,
        *,
        port: int = 0,
        function_name: str = "pomona-classify",
        page: bytes | None = None,
    ) -> None:
        self._server = ThreadingHTTPServer(
            ("127.0.0.1", port), _request_handler(handler, function_name, page)
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="function-url", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> FunctionUrlServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _request_handler(
    handler: Handler, function_name: str, page: bytes | None
) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()  # one invocation at a time, as one Lambda container runs them

    class FunctionUrlRequest(BaseHTTPRequestHandler):
        # Headers and body go out as two writes: with Nagle's algorithm on, the second waits for the client's
        # delayed ACK of the first (tens of ms on loopback), as the deployed URL never makes the app wait.
        disable_nagle_algorithm = True

        def _invoke(self) -> None:
            if page is not None and wants_page(self.command, self.path, self.headers.get("Accept") or ""):
                headers = {
                    "content-type": "text/html; charset=utf-8",
                    "cache-control": "no-store",  # a restarted stack may serve a newer page
                    "content-security-policy": PAGE_POLICY,
                }
                self._send(200, headers, page)
                return
            length = self.headers.get("Content-Length") or "0"
            if not length.isdigit() or int(length) > MAX_PAYLOAD_BYTES:
                self._error(
                    413, f"expected a Content-Length of at most {MAX_PAYLOAD_BYTES} bytes, got {length}"
                )
                return
            body = self.rfile.read(int(length))
            event = function_url_event(self.command, self.path, dict(self.headers.items()), body)
            context = LambdaContext(
                function_name=function_name, log_group_name=f"/aws/lambda/{function_name}"
            )
            try:
                with lock:
                    response = handler(event, context)
            except Exception:  # as a Function URL answers a function error: 502, and the error in the logs
                log.exception("function error")
                self._error(502, "the function raised; see the log")
                return
            payload = response.get("body") or ""
            data = pybase64.b64decode(payload) if response.get("isBase64Encoded") else str(payload).encode()
            self._send(int(response.get("statusCode", 200)), dict(response.get("headers") or {}), data)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"content-type": "application/json"}, json.dumps({"error": message}).encode())

        def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _invoke

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("function url: %s", format % args)

    return FunctionUrlRequest
