"""A small stand-in for the Kubernetes API on 127.0.0.1: just the custom-object endpoints `pomona.ops.spark_operator` uses.

It stores objects in memory, answers as the API server does (JSON objects, `Status` errors, label selectors, JSON
merge patches), validates created Spark objects against the operator's CRD schema as an API server with the CRDs
installed would, and plays the operator's part by moving a created SparkApplication through scripted states, one
state per read.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from manifests import crd_errors

_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(/(?P<name>[^/]+))?$"
)
_KINDS = {"sparkapplications": "SparkApplication", "scheduledsparkapplications": "ScheduledSparkApplication"}

Key = tuple[str, str, str]  # plural, namespace, name


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null removes a key."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


class KubeStandIn:
    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        # States a created SparkApplication goes through, one per GET of it (the operator's part).
        self.run_states: list[str] = ["SUBMITTED", "RUNNING", "COMPLETED"]
        self.run_error = ""
        self.requests: list[tuple[str, str]] = []
        self._pending: dict[Key, list[str]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Store `manifest` as if applied (a uid and creation time added); return the stored object."""
        stored = json.loads(json.dumps(manifest))
        meta = stored["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        plural = next(p for p, kind in _KINDS.items() if kind == stored["kind"])
        self.objects[(plural, meta["namespace"], meta["name"])] = stored
        return stored

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return self.objects[(plural, namespace, name)]

    @contextmanager
    def serving(self) -> Iterator[KubeStandIn]:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=5)

    # -- the API ------------------------------------------------------------------------------------------------

    def _handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, dict[str, Any]]:
        match = _PATH.match(path)
        if not match or match["plural"] not in _KINDS:
            return _status(HTTPStatus.NOT_FOUND, f"the server could not find the requested resource {path}")
        plural, namespace, name = match["plural"], match["ns"], match["name"]
        with self._lock:
            if method == "GET" and name is None:
                return HTTPStatus.OK, self._list(plural, namespace, query.get("labelSelector", [""])[0])
            if method == "POST" and name is None:
                return self._create(plural, namespace, body)
            key = (plural, namespace, name or "")
            if key not in self.objects:
                return _status(HTTPStatus.NOT_FOUND, f'{plural}.sparkoperator.k8s.io "{name}" not found')
            if method == "GET":
                self._advance(key)
                return HTTPStatus.OK, self.objects[key]
            if method == "PATCH":
                self.objects[key] = merge_patch(self.objects[key], body)
                return HTTPStatus.OK, self.objects[key]
        return _status(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not supported here")

    def _list(self, plural: str, namespace: str, selector: str) -> dict[str, Any]:
        wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
        items = [
            obj
            for (p, ns, _), obj in self.objects.items()
            if p == plural
            and ns == namespace
            and all(obj["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        return {"apiVersion": "sparkoperator.k8s.io/v1beta2", "kind": f"{_KINDS[plural]}List", "items": items}

    def _create(self, plural: str, namespace: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = body["metadata"]["name"]
        if (plural, namespace, name) in self.objects:
            return _status(HTTPStatus.CONFLICT, f'{plural}.sparkoperator.k8s.io "{name}" already exists')
        errors = crd_errors(body)
        if errors:
            return _status(HTTPStatus.UNPROCESSABLE_ENTITY, "; ".join(errors))
        stored = self.add(body)
        self._pending[(plural, namespace, name)] = list(self.run_states)
        return HTTPStatus.CREATED, stored

    def _advance(self, key: Key) -> None:
        states = self._pending.get(key)
        if not states:
            return
        state = states.pop(0)
        status = self.objects[key].setdefault("status", {})
        status["applicationState"] = {
            "state": state,
            **({"errorMessage": self.run_error} if self.run_error else {}),
        }
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if state == "SUBMITTED":
            status["lastSubmissionAttemptTime"] = now
        if state in {"COMPLETED", "FAILED"}:
            status["terminationTime"] = now

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                standin.requests.append((self.command, url.path))
                code, payload = standin._handle(self.command, url.path, parse_qs(url.query), body)
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test output is the place for failures, not access logs."""

        return Handler


def _status(code: HTTPStatus, message: str) -> tuple[int, dict[str, Any]]:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": code.phrase.replace(" ", ""),
        "code": int(code),
    }
