"""`validate_image`, the ingestion Lambda's pure core: every hostile case, every real sample, the messages."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
import zlib
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL import _imaging as pillow_core  # Image.core: its allocation counters

from pomona.bench.validate import measure_peak_rss
from pomona.core.contract import Reason
from pomona.core.settings import Settings
from pomona.testing.samples import (
    FUZZ_FORMATS,
    Case,
    fruit_image,
    hostile_cases,
    large_jpeg,
    mutate,
    reencode,
)
from pomona.validation.checks import ImageVerdict, Limits, validate_image

LIMITS = Limits()
CASES = {case.id: case for case in hostile_cases()}


def _judge(case: Case, limits: Limits = LIMITS) -> ImageVerdict:
    return validate_image(case.data, limits=limits, declared_type=case.declared_type, filename=case.filename)


def _assert_well_formed(verdict: ImageVerdict, data: bytes, limits: Limits = LIMITS) -> None:
    """What every verdict promises, whatever the input."""
    assert verdict.sha256 == hashlib.sha256(data).hexdigest()
    assert verdict.size == len(data)
    assert verdict.accepted == (verdict.reason is None)
    assert 1 <= verdict.orientation <= 8
    assert verdict.detail
    if verdict.accepted:
        assert verdict.format in limits.allowed_formats
        assert verdict.width is not None
        assert verdict.height is not None
        assert min(verdict.width, verdict.height) >= limits.min_side
        assert verdict.width * verdict.height <= limits.max_pixels
        assert verdict.mode
    else:
        assert verdict.detail.startswith("expected ")
    assert json.loads(json.dumps(verdict.to_dict()))["sha256"] == verdict.sha256


def _real_images(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/*.jpg"))


# -- the hostile matrix ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CASES.values()])
def test_each_hostile_case_gets_its_verdict(case: Case) -> None:
    # WHEN
    verdict = _judge(case)

    # THEN
    assert verdict.reason == case.expected, verdict.detail
    assert verdict.orientation == case.orientation
    _assert_well_formed(verdict, case.data)


def test_the_matrix_covers_every_reason_the_validator_gives() -> None:
    # bad_key is decided from the key, too_large_bytes needs 20 MiB (tested below with a lower limit), and the
    # rest are the featurization job's.
    elsewhere = {Reason.BAD_KEY, Reason.TOO_LARGE_BYTES}
    job = {Reason.OBJECT_GONE, Reason.OBJECT_CHANGED, Reason.DECODE_FAILED, Reason.BAD_MESSAGE}
    covered = {case.expected for case in CASES.values()}
    assert covered == {*Reason, None} - elsewhere - job


# -- messages are part of the contract -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case_id", "pattern"),
    [
        pytest.param("empty", r"expected at least 1 byte, got 0", id="empty"),
        pytest.param(
            "text-named-jpg",
            r"expected one of \['JPEG', 'PNG', 'WEBP'\], got no image header: b'this",
            id="text",
        ),
        pytest.param("gif-animated", r"expected one of \['JPEG', 'PNG', 'WEBP'\], got 'GIF'", id="gif"),
        pytest.param("tiff", r"got 'TIFF'", id="tiff"),
        pytest.param(
            "png-named-jpg", r"expected 'JPEG' as named by the extension '\.jpg', got 'PNG'", id="extension"
        ),
        pytest.param(
            "jpeg-declared-png",
            r"expected 'PNG' as declared by Content-Type 'image/png', got 'JPEG'",
            id="content-type",
        ),
        pytest.param(
            "png-bomb-header-50000x50000",
            r"expected at most 40000000 pixels, got 50000×50000 = 2500000000",
            id="png-bomb",
        ),
        pytest.param("png-1x1", r"expected both sides at least 32 px, got 1×1", id="too-small"),
        pytest.param("webp-animated", r"expected a single frame, got 3 frames", id="animated"),
        pytest.param(
            "jpeg-truncated-half",
            r"expected a complete JPEG stream, got 1\d{3} bytes ending early: OSError: image file is truncated",
            id="truncated-jpeg",
        ),
        pytest.param(
            "png-truncated-no-iend", r"got \d+ bytes ending early: .*truncated PNG", id="truncated-png"
        ),
        pytest.param(
            "png-bad-crc", r"expected a decodable PNG image, got SyntaxError: .*checksum", id="corrupt-png"
        ),
        pytest.param("jpeg-header-then-garbage", r"got SyntaxError: no marker found", id="corrupt-jpeg"),
    ],
)
def test_detail_says_what_was_expected_and_what_was_found(case_id: str, pattern: str) -> None:
    assert re.fullmatch(f"(?s).*{pattern}.*", _judge(CASES[case_id]).detail)


def test_too_many_bytes_is_judged_before_anything_is_parsed() -> None:
    # GIVEN a limit below the size of a perfectly good JPEG
    data = fruit_image("Lime", 0)
    limits = Limits(max_bytes=1000)

    # WHEN
    verdict = validate_image(data, limits=limits)

    # THEN
    assert verdict.reason == Reason.TOO_LARGE_BYTES
    assert verdict.detail == f"expected at most 1000 bytes, got {len(data)}"
    assert verdict.format is None


# -- format mismatch -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "declared_type", "filename", "mismatch"),
    [
        pytest.param(
            "PNG",
            "image/jpeg",
            None,
            "expected 'JPEG' as declared by Content-Type 'image/jpeg', got 'PNG'",
            id="png-declared-jpeg",
        ),
        pytest.param("JPEG", "IMAGE/PNG", None, "expected 'PNG' as declared", id="type-is-case-insensitive"),
        pytest.param("JPEG", "image/webp", "a.jpg", "expected 'WEBP' as declared", id="type-checked-first"),
        pytest.param(
            "WEBP",
            None,
            "photo.JPG",
            "expected 'JPEG' as named by the extension '.jpg', got 'WEBP'",
            id="upper-case-extension",
        ),
        pytest.param("JPEG", None, "uploads/a.b/photo.png", "extension '.png'", id="dotted-folder"),
        pytest.param(
            "JPEG",
            None,
            "photo.gif",
            "expected 'GIF' as named by the extension '.gif'",
            id="other-image-extension",
        ),
        pytest.param("JPEG", "image/jpeg", "a.jpeg", None, id="both-agree"),
        pytest.param("JPEG", "image/pjpeg", "a.jfif", None, id="jpeg-aliases"),
        pytest.param("PNG", "image/apng", "a.apng", None, id="apng-names"),
        pytest.param("JPEG", "application/octet-stream", "a.bin", None, id="octet-stream"),
        pytest.param("JPEG", "binary/octet-stream", None, None, id="binary-octet-stream"),
        pytest.param("JPEG", "image/heic", "a.heic", None, id="unknown-type-and-extension"),
        pytest.param("JPEG", "", "", None, id="blank"),
    ],
)
def test_format_mismatch_by_declared_type_or_extension(
    fmt: str, declared_type: str | None, filename: str | None, mismatch: str | None
) -> None:
    # GIVEN a real image of `fmt`
    data = fruit_image("Plum", 2, fmt=fmt)

    # WHEN
    verdict = validate_image(data, limits=LIMITS, declared_type=declared_type, filename=filename)

    # THEN
    if mismatch is None:
        assert verdict.accepted, verdict.detail
    else:
        assert verdict.reason == Reason.FORMAT_MISMATCH
        assert mismatch in verdict.detail
        assert verdict.format == fmt


def test_not_an_image_is_judged_before_the_name_it_came_with() -> None:
    verdict = validate_image(b"%PDF-1.7\n", limits=LIMITS, declared_type="image/jpeg", filename="scan.jpg")
    assert verdict.reason == Reason.NOT_AN_IMAGE


# -- truncation: what Pillow catches, and what the container framing adds --------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "magic"),
    [
        pytest.param("JPEG", {}, 3, id="jpeg-baseline"),
        pytest.param("JPEG", {"progressive": True}, 3, id="jpeg-progressive"),
        pytest.param("PNG", {}, 8, id="png"),
        pytest.param("WEBP", {}, 16, id="webp-lossy"),
        pytest.param("WEBP", {"lossless": True}, 16, id="webp-lossless"),
    ],
)
def test_every_cut_of_a_stream_is_truncated(fmt: str, params: dict[str, bool], magic: int) -> None:
    # GIVEN a small image, and every prefix of it that still has the format's magic bytes
    image = Image.open(io.BytesIO(fruit_image("Orange", 4, size=48)))
    limits = Limits(min_side=8)
    data = _encode(image, fmt, **params)
    assert validate_image(data, limits=limits).accepted

    # WHEN
    reasons = {cut: validate_image(data[:cut], limits=limits).reason for cut in range(len(data))}

    # THEN no cut decodes silently, and each is called truncated
    assert {reasons[cut] for cut in range(magic)} <= {Reason.EMPTY, Reason.NOT_AN_IMAGE}
    wrong = {cut: reason for cut, reason in reasons.items() if cut >= magic and reason != Reason.TRUNCATED}
    assert wrong == {}


def test_a_large_jpeg_cut_near_its_end_is_truncated() -> None:
    data = large_jpeg()
    for cut in (len(data) - 1, len(data) - 4096, len(data) * 9 // 10):
        assert validate_image(data[:cut], limits=LIMITS).reason == Reason.TRUNCATED


@pytest.mark.xfail(
    reason="Pillow drops libjpeg's 'premature end' warnings (JpegDecode.c), so a cut scan followed by EOI "
    "decodes with grey rows; nothing short of another decoder would tell",
    strict=True,
)
def test_a_jpeg_cut_mid_scan_then_closed_with_eoi_is_rejected() -> None:
    data = fruit_image("Banana", 0)
    assert not validate_image(data[: len(data) // 2] + b"\xff\xd9", limits=LIMITS).accepted


@pytest.mark.xfail(
    reason="Pillow's ZIP decoder stops quietly when the zlib stream ends before the last row (ZipDecode.c)",
    strict=True,
)
def test_a_png_whose_pixel_data_ends_early_is_rejected() -> None:
    data = _png_with_rows(width=64, height=64, rows=10)
    assert not validate_image(data, limits=LIMITS).accepted


# -- decompression bombs ---------------------------------------------------------------------------------------


def test_a_bomb_is_rejected_from_its_header_without_allocating_pixels() -> None:
    # GIVEN a valid 41 MP PNG that compresses to ~40 kB
    bomb = CASES["png-bomb-6400x6400"].data
    allocations = pillow_core.get_stats()["new_count"]

    # WHEN
    verdict = validate_image(bomb, limits=LIMITS)

    # THEN it is rejected and Pillow allocated no image memory for it
    assert verdict.reason == Reason.TOO_MANY_PIXELS
    assert (verdict.width, verdict.height) == (6400, 6400)
    assert pillow_core.get_stats()["new_count"] == allocations


def test_pillows_own_bomb_limits_never_escape_as_errors_or_warnings() -> None:
    # GIVEN our cap above Pillow's (89 MP warns, 179 MP raises), so Pillow's checks are the first to see them
    loose = Limits(max_pixels=10**9)
    webp = CASES["webp-bomb-header-16383x16383"].data

    # WHEN / THEN (warnings are errors in this suite)
    verdict = validate_image(webp, limits=loose)
    assert verdict.reason == Reason.TOO_MANY_PIXELS
    assert "exceeds limit" in verdict.detail
    for width, height in ((12_000, 10_000), (20_000, 10_000)):
        png = _png_with_rows(width, height, rows=1)
        verdict = validate_image(png, limits=loose)
        assert (verdict.width, verdict.height) == (width, height)
        _assert_well_formed(verdict, png, loose)


# For each limit, a setting stricter than its default that refuses a 100×100 JPEG, and the reason it gives.
STRICTER_SETTINGS = [
    pytest.param("max_bytes", 1000, Reason.TOO_LARGE_BYTES, id="max-bytes"),
    pytest.param("allowed_formats", frozenset({"PNG"}), Reason.UNSUPPORTED_FORMAT, id="allowed-formats"),
    pytest.param("max_pixels", 5000, Reason.TOO_MANY_PIXELS, id="max-pixels"),
    pytest.param("min_side", 200, Reason.TOO_SMALL, id="min-side"),
    pytest.param("max_decode_mb", 0, Reason.TOO_MANY_PIXELS, id="max-decode-mb"),
]


@pytest.mark.parametrize(("name", "value", "reason"), STRICTER_SETTINGS)
def test_each_limit_comes_from_settings(name: str, value: object, reason: Reason) -> None:
    # GIVEN a photo the default settings accept
    photo = fruit_image("Lime", 1)
    assert validate_image(photo, limits=Limits.from_settings(Settings())).accepted

    # WHEN one setting is stricter than its default
    limits = Limits.from_settings(Settings(**{name: value}))

    # THEN the photo is refused for that limit: the setting reached the check, not the limit's own default
    assert validate_image(photo, limits=limits).reason == reason


def test_every_limit_is_checked_as_a_setting() -> None:
    assert {p.values[0] for p in STRICTER_SETTINGS} == {f.name for f in dataclasses.fields(Limits)}


# -- accepted details ------------------------------------------------------------------------------------------


def test_an_accepted_verdict_records_what_was_found() -> None:
    verdict = _judge(CASES["jpeg-exif-orientation-6"])
    assert verdict.to_dict() == {
        "accepted": True,
        "reason": None,
        "detail": "accepted JPEG 120×80 RGB",
        "format": "JPEG",
        "width": 120,
        "height": 80,
        "mode": "RGB",
        "orientation": 6,
        "sha256": hashlib.sha256(CASES["jpeg-exif-orientation-6"].data).hexdigest(),
        "size": len(CASES["jpeg-exif-orientation-6"].data),
    }


def test_a_multi_picture_jpeg_is_reported_as_jpeg() -> None:
    assert _judge(CASES["jpeg-mpo-two-pictures"]).format == "JPEG"


def test_a_rejected_verdict_serialises_its_reason_as_a_string() -> None:
    as_json = json.dumps(_judge(CASES["png-1x1"]).to_dict())
    assert json.loads(as_json)["reason"] == "too_small"


# -- real photos -----------------------------------------------------------------------------------------------


def test_every_real_sample_is_accepted_with_its_manifest_hash(sample_dir: Path) -> None:
    # GIVEN the 540 100×100 photos and their manifest
    paths = _real_images(sample_dir)
    with (sample_dir / "MANIFEST.tsv").open(newline="") as manifest:
        expected = {
            (row["class"], row["file"]): row["sha256"] for row in csv.DictReader(manifest, delimiter="\t")
        }

    # WHEN
    verdicts = {path: validate_image(path.read_bytes(), limits=LIMITS, filename=path.name) for path in paths}

    # THEN
    assert len(paths) == 540
    assert {str(p): v.detail for p, v in verdicts.items() if not v.accepted} == {}
    assert {(p.parent.name, p.name): v.sha256 for p, v in verdicts.items()} == expected
    assert {(v.format, v.width, v.height) for v in verdicts.values()} == {("JPEG", 100, 100)}


def test_every_real_original_is_accepted(originals_dir: Path) -> None:
    paths = _real_images(originals_dir)
    verdicts = {path: validate_image(path.read_bytes(), limits=LIMITS, filename=path.name) for path in paths}
    assert len(paths) == 120
    assert {str(p): v.detail for p, v in verdicts.items() if not v.accepted} == {}


# -- anything at all gets a verdict ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2048))
def test_any_bytes_get_a_verdict(data: bytes) -> None:
    _assert_well_formed(validate_image(data, limits=LIMITS), data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512), prefix=st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF"]))
def test_bytes_behind_real_magic_get_a_verdict(data: bytes, prefix: bytes) -> None:
    _assert_well_formed(validate_image(prefix + data, limits=LIMITS), prefix + data)


@pytest.fixture(scope="module")
def seeds(a_real_photo: bytes | None) -> dict[str, bytes]:
    """A real photo from shared/ (a synthetic one where shared/ is absent) as JPEG, PNG and WebP."""
    photo = a_real_photo or fruit_image("Apple Red", 0)
    return {fmt: photo if fmt == "JPEG" else reencode(photo, fmt) for fmt in FUZZ_FORMATS}


_EXTENSIONS = {"JPEG": "photo.jpg", "PNG": "photo.png", "WEBP": "photo.webp"}


@pytest.mark.parametrize("fmt", FUZZ_FORMATS)
# The deadline bounds each input's time: a hang, not a speed target (one input takes milliseconds).
@settings(max_examples=150, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
@given(
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), max_size=8),
    cut=st.floats(0.0, 1.0),
    tail=st.binary(max_size=64),
)
def test_mutations_of_a_real_image_get_a_verdict(
    seeds: dict[str, bytes], fmt: str, flips: list[tuple[int, int]], cut: float, tail: bytes
) -> None:
    # GIVEN a real photo in `fmt` with bytes flipped, cut short and something appended
    seed = seeds[fmt]
    data = mutate(seed, flips=flips, cut=max(1, round(cut * len(seed))), tail=tail)

    # WHEN / THEN
    _assert_well_formed(validate_image(data, limits=LIMITS, filename=_EXTENSIONS[fmt]), data)


@pytest.mark.slow
@pytest.mark.parametrize("inputs", ["hostile", "fuzz"])
def test_judging_hostile_or_fuzzed_inputs_stays_under_256_mb(inputs: str) -> None:
    # GIVEN a fresh process (this one's imports and caches must not count), WHEN it judges the whole set
    measured = measure_peak_rss(inputs)

    # THEN its peak resident memory stays within the Lambda's budget
    assert measured["cases"] >= 60
    assert measured["peak_mb"] < 256, measured


# -- helpers ---------------------------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **params: bool) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png_with_rows(width: int, height: int, *, rows: int) -> bytes:
    """A greyscale PNG whose zlib stream is complete but holds only `rows` rows: every chunk and CRC valid."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        body = tag + payload
        return len(payload).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(bytes((1 + width) * rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
