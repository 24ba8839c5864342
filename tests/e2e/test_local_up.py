"""`pomona local up` as a new user drives it: through S3 and SQS only, with a first upload, hostile messages and a
failed run along the way. Every real photo is committed, nothing hostile is featurized, and the stack stays up."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from PIL import Image

from pomona.core.contract import ImageMessage, utc_now
from pomona.core.outputs import CommittedOutputs, pca_latest_key
from pomona.core.queues import queue_depth
from pomona.core.settings import Settings
from pomona.local.stack import LOCAL_ENV

pytestmark = pytest.mark.slow

TIMEOUT_S = 300


class LocalUp:
    """`pomona local up` in its own process, its console lines collected as they come."""

    def __init__(self, model_cache: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {
            **os.environ,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "POMONA_CACHE_DIR": str(model_cache),
            "COLUMNS": "200",  # rich wraps at 80 columns when it writes to a pipe
        }
        pomona = Path(sys.executable).with_name("pomona")
        args = [
            "local",
            "up",
            "--port",
            str(port),
            "--schedule",
            "2s",
            "--workers",
            "1",
            "--weights",
            "random",
        ]
        self.process = subprocess.Popen(
            [str(pomona), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            started = self.wait_for("the job runs every")
            (line,) = [l for l in self.wait_for("classify endpoint") if "classify endpoint" in l]
        except BaseException:  # a stack that never came up is still a process to end
            self.stop()
            raise
        exports = dict(l.removeprefix("export ").split("=", 1) for l in started if l.startswith("export "))
        self.settings = Settings.from_env(exports)
        self.classify_url = next(word for word in line.split() if word.startswith("http://"))
        self.s3 = boto3.client("s3", endpoint_url=self.settings.endpoint_url, **_credentials())
        self.sqs = boto3.client("sqs", endpoint_url=self.settings.endpoint_url, **_credentials())

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str) -> list[str]:
        """The lines up to the next one containing `text`."""
        deadline = time.monotonic() + TIMEOUT_S
        taken: list[str] = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.process.poll() is None, f"expected local up to keep running: {self.seen[-20:]}"
                continue
            self.seen.append(line)
            taken.append(line)
            if text in line:
                return taken
        pytest.fail(f"expected a line with {text!r} within {TIMEOUT_S} s, got: {self.seen[-20:]}")

    def upload(self, key: str, body: bytes) -> str:
        return self.s3.put_object(Bucket=self.settings.bucket, Key=key, Body=body)["VersionId"]

    def committed(self) -> dict[str, str]:
        """sha256 → key of every committed image."""
        table, missing = CommittedOutputs.in_bucket(self.s3, self.settings).read_parts(
            "features", ["sha256", "key"]
        )
        assert missing == []
        return (
            {}
            if table is None
            else dict(zip(table.column("sha256").to_pylist(), table.column("key").to_pylist(), strict=True))
        )

    def wait_until(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not check():
            assert time.monotonic() < deadline, f"expected {what} within {TIMEOUT_S} s: {self.seen[-20:]}"
            assert self.process.poll() is None, f"expected local up to keep running: {self.seen[-20:]}"
            with contextlib.suppress(queue.Empty):
                self.seen.append(self.lines.get(timeout=1))

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        finally:
            self.process.kill()
        self.reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.process.returncode, "\n".join(self.seen)


def _credentials() -> dict[str, Any]:
    return {
        "aws_access_key_id": LOCAL_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": LOCAL_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": LOCAL_ENV["AWS_DEFAULT_REGION"],
    }


@pytest.fixture
def stack(model_cache: Path) -> Iterator[LocalUp]:
    up = LocalUp(model_cache)
    try:
        yield up
    finally:
        if up.process.poll() is None:
            up.stop()


def test_local_up_commits_every_real_photo_contains_hostile_messages_and_survives_a_failed_run(
    stack: LocalUp, sample_dir: Path
) -> None:
    photos = sorted(sample_dir.glob("*/*.jpg"))
    real = {f"uploads/{p.parent.name}/{p.name}": p.read_bytes() for p in photos[:: len(photos) // 8][:8]}
    first_key, *rest = real

    # GIVEN a new stack, WHEN its very first upload arrives
    stack.upload(first_key, real[first_key])

    # THEN it is committed on its own
    stack.wait_for("committed: PCA v1")
    assert set(stack.committed().values()) == {first_key}

    # WHEN real photos arrive beside hostile messages sent straight to the images queue
    for key in rest:
        stack.upload(key, real[key])
    secret = photos[-1].read_bytes()
    secret_version = stack.s3.put_object(Bucket=stack.settings.bucket, Key="private/secret.jpg", Body=secret)
    template = ImageMessage(
        bucket=stack.settings.bucket,
        key="uploads/Apple/forged.jpg",
        version_id="v1",
        etag='"0"',
        sha256=hashlib.sha256(b"forged").hexdigest(),
        size=len(secret),
        format="JPEG",
        width=100,
        height=100,
        mode="RGB",
        orientation=1,
        label="Apple",
        uploaded_at=utc_now(),
        validated_at=utc_now(),
    )
    hostile = [
        dataclasses.replace(template, bucket="someone-elses-bucket").to_json(),
        dataclasses.replace(  # a real object, outside uploads/
            template,
            key="private/secret.jpg",
            version_id=secret_version["VersionId"],
            etag=secret_version["ETag"],
            sha256=hashlib.sha256(secret).hexdigest(),
        ).to_json(),
        dataclasses.replace(template, key=first_key, version_id="no-such-version").to_json(),
        dataclasses.replace(template, key="uploads/Apple/bidi.jpg", label="Apple\u202eelppA").to_json(),
        "not json {",
    ]
    for body in hostile:
        stack.sqs.send_message(QueueUrl=stack.settings.images_queue_url, MessageBody=body)

    # THEN every real photo is committed once, and nothing hostile was featurized: the messages naming what
    # ingestion would never queue are quarantined by a sidecar, the missing version as gone, and the one that is no
    # message at all waits, in flight, for the DLQ
    shas = {hashlib.sha256(body).hexdigest(): key for key, body in real.items()}
    stack.wait_until(lambda: stack.committed() == shas, "every real photo committed")
    sidecars = CommittedOutputs.in_bucket(stack.s3, stack.settings).sidecars()
    assert sorted((s["reason"], s["original_key"]) for s in sidecars) == [
        ("bad_message", "private/secret.jpg"),
        ("bad_message", "uploads/Apple/bidi.jpg"),
        ("bad_message", "uploads/Apple/forged.jpg"),
        ("object_gone", first_key),
    ]
    assert (
        stack.s3.list_objects_v2(Bucket=stack.settings.bucket, Prefix="quarantine/bad_message/")["KeyCount"]
        == 3
    )
    assert queue_depth(stack.sqs, stack.settings.images_queue_url) == {"visible": 0, "in_flight": 1}

    # WHEN a run fails (a hand-edited, broken LATEST pointer) while a photo waits
    latest_key = pca_latest_key(stack.settings.output_prefix)
    latest = stack.s3.get_object(Bucket=stack.settings.bucket, Key=latest_key)["Body"].read()
    stack.s3.put_object(Bucket=stack.settings.bucket, Key=latest_key, Body=b"{broken")
    late_key = f"uploads/{photos[1].parent.name}/late-{photos[1].name}"
    stack.upload(late_key, photos[1].read_bytes())

    # THEN local up says why in one line and keeps going; once LATEST is repaired the photo commits
    (failed,) = [line for line in stack.wait_for("run failed:") if "run failed:" in line]
    assert "JSONDecodeError" in failed
    stack.s3.put_object(Bucket=stack.settings.bucket, Key=latest_key, Body=latest)
    shas[hashlib.sha256(photos[1].read_bytes()).hexdigest()] = late_key
    stack.wait_until(lambda: stack.committed() == shas, "the late photo committed")

    # AND the local classify endpoint answers: no label has 5 training images yet, so no classifier, and it says so
    request = urllib.request.Request(stack.classify_url, data=photos[2].read_bytes(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 503
    assert "no classifier is committed yet" in json.loads(refused.value.read())["error"]

    # AND no real photo is in the DLQ, and the stack stops cleanly when asked
    dead = stack.sqs.receive_message(QueueUrl=stack.settings.images_dlq_url, MaxNumberOfMessages=10)
    assert [m["Body"] for m in dead.get("Messages", [])] == []
    code, output = stack.stop()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output


def test_local_up_commits_real_photos_beside_poison_uploads_and_quarantines_each_poison_with_its_reason(
    stack: LocalUp, sample_dir: Path
) -> None:
    photos = sorted(sample_dir.glob("*/*.jpg"))[::60][:6]
    real = {f"uploads/{p.parent.name}/{p.name}": p.read_bytes() for p in photos}
    label = photos[0].parent.name
    picture = Image.open(io.BytesIO(real[next(iter(real))])).convert("RGB")

    # GIVEN real photos, uploads a decoder might choke on but the door accepts (EXIF that broke Pillow's
    # exif_transpose, a large half-transparent PNG), and uploads the door must refuse
    accepted_poison = {
        f"uploads/{label}/broken-exif.jpg": _save(picture, "JPEG", exif=_MALFORMED_EXIF),
        f"uploads/{label}/large-rgba.png": _save(
            _half_transparent(picture, (3000, 2600)), "PNG", compress_level=1
        ),
    }
    refused_poison = {
        f"uploads/{label}/cut.jpg": (real[next(iter(real))][:-500], "truncated"),
        f"uploads/{label}/bad-crc.png": (_with_bad_chunk(_save(picture, "PNG")), "corrupt"),
        f"uploads/{label}/huge.webp": (
            _save(Image.new("RGB", (6000, 6000)), "WEBP", lossless=True),
            "too_many_pixels",
        ),
        f"uploads/{label}/notes.jpg": (b"just some text, not a photo\n" * 10, "not_an_image"),
    }
    for key, body in {**real, **accepted_poison, **{k: b for k, (b, _) in refused_poison.items()}}.items():
        stack.upload(key, body)

    # THEN every photo the door accepted is committed once, each refused upload is quarantined with its reason
    expected = {hashlib.sha256(body).hexdigest(): key for key, body in {**real, **accepted_poison}.items()}
    stack.wait_until(lambda: stack.committed() == expected, "every accepted photo committed")
    stack.wait_until(
        lambda: len(CommittedOutputs.in_bucket(stack.s3, stack.settings).sidecars()) == len(refused_poison),
        "every refused upload quarantined",
    )
    sidecars = CommittedOutputs.in_bucket(stack.s3, stack.settings).sidecars()
    assert sorted((s["original_key"], s["reason"]) for s in sidecars) == sorted(
        (key, reason) for key, (_, reason) in refused_poison.items()
    )

    # AND no message is left behind or dead-lettered, and the stack stops cleanly
    assert queue_depth(stack.sqs, stack.settings.images_queue_url) == {"visible": 0, "in_flight": 0}
    dead = stack.sqs.receive_message(QueueUrl=stack.settings.images_dlq_url, MaxNumberOfMessages=10)
    assert dead.get("Messages", []) == []
    code, output = stack.stop()
    assert code == 0, output[-3000:]


# EXIF saying "rotate 90°" whose XResolution (a rational) is stored as text: Pillow's exif_transpose raised TypeError.
_MALFORMED_EXIF = (
    b"Exif\x00\x00II*\x00"
    + struct.pack("<IH", 8, 2)
    + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
    + struct.pack("<HHI", 0x011A, 2, 4)
    + b"72x\x00"
    + struct.pack("<I", 0)
)


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _half_transparent(picture: Image.Image, size: tuple[int, int]) -> Image.Image:
    large = picture.resize(size).convert("RGBA")
    large.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    return large


def _with_bad_chunk(png: bytes) -> bytes:
    """`png` with a text chunk whose CRC is wrong, right after IHDR."""
    chunk = struct.pack(">I", 4) + b"tEXt" + b"a\x00bc" + b"\x00\x00\x00\x00"
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + chunk + png[ihdr_end:]
