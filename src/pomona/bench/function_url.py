"""The app's door, measured as the app meets it: photos POSTed to the local Function URL (`pomona local up`'s).

The embedded stack runs in a process of its own, the committed model is copied into its bucket, and the classify
Lambda's handler is served behind the local Function URL in another process, as `pomona local up` serves it. This
process is the app: it POSTs a 100×100 and a 4000×3000 JPEG and times each answer, HTTP and the event's base64
included, the large one in turns with its 1/8-scale decode (this door's floor, timed here as the host is now).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from pomona.bench.floors import eighth_scale_decode, percentiles, timed_ms, timed_side_by_side_ms


def measure(
    folder: Path, small: bytes, large: bytes, *, repeats: int, weights: str | None, env: dict[str, str]
) -> dict[str, Any]:
    """p50 and p99 of the small and large photo's answers through the Function URL (keys `url_…`), the model
    under `folder` (laid out as the bucket) and its featurizer from `weights` (None: the spec its lineage
    recorded); `env` adds to the endpoint process's environment."""
    from pomona.local.stack_process import stack_process

    with stack_process() as stack:
        s3 = boto3.client("s3", endpoint_url=stack.settings.endpoint_url)
        for path in folder.rglob("*"):
            if path.is_file():
                s3.put_object(
                    Bucket=stack.settings.bucket,
                    Key=path.relative_to(folder).as_posix(),
                    Body=path.read_bytes(),
                )
        with subprocess.Popen(
            [sys.executable, "-m", "pomona.bench.function_url"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_endpoint_env(weights, env),
        ) as endpoint:
            assert endpoint.stdin is not None
            assert endpoint.stdout is not None
            try:
                url = endpoint.stdout.readline().strip()
                if not url:
                    raise RuntimeError(f"expected the endpoint to print its URL, got exit {endpoint.wait()}")
                small_ms = timed_ms(lambda: _post(url, small), repeats)
                large_ms, floor_ms = timed_side_by_side_ms(
                    lambda: _post(url, large), lambda: eighth_scale_decode(large), max(5, repeats // 7)
                )
            finally:
                endpoint.stdin.close()  # the endpoint stops when its stdin closes
    return percentiles("url_", small=small_ms, large=large_ms, eighth_scale_decode=floor_ms)


def _endpoint_env(weights: str | None, env: dict[str, str]) -> dict[str, str]:
    # The stack exports every setting, POMONA_WEIGHTS's default too, which would override the lineage's spec.
    inherited = {name: value for name, value in os.environ.items() if name != "POMONA_WEIGHTS"}
    return {**inherited, **env, **({"POMONA_WEIGHTS": weights} if weights else {})}


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"expected 200 from the Function URL, got {response.status}")


def main() -> None:
    from pomona.local.stack_process import serve_until_stdin_closes
    from pomona.local.up import classify_endpoint

    server = classify_endpoint(port=0)
    serve_until_stdin_closes(server.url, server.stop)


if __name__ == "__main__":
    main()
