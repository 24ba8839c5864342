"""The one decode (`pomona.imaging.decode`), on the path that really runs after acceptance: whatever validation
accepts decodes into the model's input, any decoder error is a `DecodeError` naming its type, and memory stays
within the price read from the header."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pomona.core.contract import Reason
from pomona.imaging.decode import MIB, DecodeError, decode_image
from pomona.ml.preprocess import INPUT_SHAPE, model_input, preprocess_image
from pomona.validation.checks import Limits, validate_and_decode, validate_image

LIMITS = Limits()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _accepted_means_decodes(data: bytes) -> bool:
    """Validate `data` as ingestion does; if accepted, decode it as the job does and check the model's input, and
    that classify's single decode (validation's own picture) gives the model the very same input. Whether it was
    accepted."""
    verdict, decoded = validate_and_decode(data, limits=LIMITS, digest=False)  # as classify calls it
    # The same verdict as ingestion's, but for the digest classify does not need.
    assert verdict == dataclasses.replace(validate_image(data, limits=LIMITS), sha256=None)
    assert (decoded is not None) == verdict.accepted
    try:
        x = preprocess_image(data, LIMITS.decode)
    except DecodeError:
        assert not verdict.accepted, f"accepted ({verdict.detail}) but the job's decode failed"
        return False
    if decoded is not None:
        np.testing.assert_array_equal(model_input(decoded.picture), x)
        assert x.shape == INPUT_SHAPE
        assert x.dtype == np.float32
        assert np.isfinite(x).all()
        assert -1.0 <= x.min() <= x.max() <= 1.0
    return verdict.accepted


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _exif() -> bytes:
    """An EXIF block of the kind phones write: orientation, strings, a sub-IFD with a date, a GPS IFD."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90°
    exif[0x010F] = "Fruits"  # Make
    exif[0x0110] = "Phone 12"  # Model
    exif[0x0131] = "camera 1.0"  # Software
    exif.get_ifd(0x8769)[0x9003] = "2026:12:06 10:00:00"  # DateTimeOriginal
    exif.get_ifd(0x8825)[0x0001] = "N"  # GPSLatitudeRef
    return exif.tobytes()


def _photo(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A small picture with structure (a gradient and a block), so a rotation changes it."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, size[0], dtype=np.uint8)[np.newaxis, :]
    pixels[: size[1] // 3, : size[0] // 3] = (20, 200, 40)
    return Image.fromarray(pixels)


def _exif_span(data: bytes, marker: bytes) -> tuple[int, int]:
    """Where the EXIF payload lies in `data`: the JPEG APP1 segment, WebP chunk or PNG chunk after `marker`."""
    at = data.index(marker)
    if marker == b"EXIF":  # RIFF: tag, little-endian length, payload
        return at + 8, at + 8 + int.from_bytes(data[at + 4 : at + 8], "little")
    if marker == b"eXIf":  # PNG: big-endian length, tag, payload
        return at + 4, at + 4 + int.from_bytes(data[at - 4 : at], "big")
    # JPEG: APP1's big-endian length (counting itself) precedes "Exif\0\0"
    return at + len(marker), at - 2 + int.from_bytes(data[at - 2 : at], "big")


SEEDS: dict[str, Callable[[], bytes]] = {
    "jpeg-exif": lambda: _encode(_photo(), "JPEG", exif=_exif(), quality=90),
    "webp-exif": lambda: _encode(_photo(), "WEBP", exif=_exif(), quality=80),
    "png-exif": lambda: _encode(_photo(), "PNG", exif=_exif()),
}
MARKERS = {"jpeg-exif": b"Exif\x00\x00", "webp-exif": b"EXIF", "png-exif": b"eXIf"}


# -- the cases -------------------------------------------------------------------------------------------


def test_a_jpeg_whose_exif_breaks_pillows_exif_transpose_is_accepted_and_decodes_upright() -> None:
    # GIVEN a 725-byte JPEG whose EXIF says "rotate 90°" and stores XResolution (a rational) as text: Pillow's
    # ImageOps.exif_transpose raised TypeError re-writing that block, inside the job's preprocessing
    tiff = (
        b"II*\x00"
        + struct.pack("<IH", 8, 2)
        + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)  # Orientation, SHORT: 6
        + struct.pack("<HHI", 0x011A, 2, 4)
        + b"72x\x00"  # XResolution, ASCII where a RATIONAL belongs
        + struct.pack("<I", 0)
    )
    photo = _photo()
    data = _encode(photo, "JPEG", exif=b"Exif\x00\x00" + tiff, quality=95)

    # WHEN it is judged and decoded as every door does, THEN it is accepted and decodes
    assert _accepted_means_decodes(data)

    # AND upright, rotated as its orientation says
    decoded = decode_image(data)
    assert decoded.orientation == 6
    expected = photo.transpose(Image.Transpose.ROTATE_270).resize((224, 224), Image.Resampling.BILINEAR)
    assert _close(decoded.picture, expected)


def test_any_exception_a_decoder_raises_is_a_decode_error_naming_its_type() -> None:
    # GIVEN bytes that make Pillow raise inside its plugin (a PNG header whose IHDR announces no size)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", b"\x00" * 13) + _chunk(b"IEND", b"")

    # WHEN the job's decode runs, THEN the error is a DecodeError that says which exception it was
    with pytest.raises(
        DecodeError, match=r"expected an image Pillow can decode, got \d+ bytes: \w+"
    ) as caught:
        decode_image(data)
    assert caught.value.error_type not in {"", "DecodeError"}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_pillow_would(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(_photo((320, 240)), "PNG", exif=exif.tobytes())

    with Image.open(io.BytesIO(data)) as reference:
        from PIL import ImageOps

        expected = (
            ImageOps.exif_transpose(reference).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
        )
    decoded = decode_image(data)
    assert decoded.orientation == orientation
    assert _close(decoded.picture, expected)


def test_a_large_rgba_image_is_flattened_onto_white_as_a_whole_image_would_be() -> None:
    # GIVEN a 1600×1400 RGBA picture, half of it transparent (shrunk strip by strip before compositing)
    rgba = Image.new("RGBA", (1600, 1400), (200, 20, 20, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 800, 1400))
    data = _encode(rgba, "PNG")

    # WHEN decoded, THEN it equals compositing the whole image onto white, then resizing
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    expected = Image.alpha_composite(white, rgba).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    assert _close(decode_image(data).picture, expected)


def test_a_webp_too_dear_to_decode_is_refused_from_its_header() -> None:
    # GIVEN a 6000×6000 WebP (36 MP, under the pixel cap): Pillow's WebP decoder would hold ~16 bytes a pixel
    data = _encode(Image.new("RGB", (6000, 6000), (1, 2, 3)), "WEBP", lossless=True)

    # WHEN judged, THEN it is refused before any pixel is decoded, saying what it would cost
    verdict = validate_image(data, limits=LIMITS)
    assert verdict.reason is Reason.TOO_MANY_PIXELS
    assert "expected a decode within 320 MB, got a WEBP of 6000×6000 that needs 550 MB" in verdict.detail
    with pytest.raises(DecodeError, match="expected a decode within 320 MB"):
        decode_image(data, LIMITS.decode)


# -- property tests on the whole decode path ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", sorted(SEEDS))
@FUZZ
@given(
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6)
)
def test_exif_mutations_that_are_accepted_decode(seed: str, flips: list[tuple[float, int]]) -> None:
    data = bytearray(SEEDS[seed]())
    start, end = _exif_span(bytes(data), MARKERS[seed])
    for where, value in flips:
        data[start + int(where * (end - start))] = value
    _accepted_means_decodes(bytes(data))


PNG_CHUNK_TYPES = [
    b"tEXt",
    b"zTXt",
    b"iTXt",
    b"iCCP",
    b"eXIf",
    b"sRGB",
    b"gAMA",
    b"cHRM",
    b"pHYs",
    b"tRNS",
    b"PLTE",
    b"bKGD",
    b"sBIT",
    b"acTL",
    b"fcTL",
    b"hIST",
    b"oFFs",
    b"IDAT",
    b"IEND",
    b"zzZz",
]


@FUZZ
@given(
    mode=st.sampled_from(["RGB", "RGBA", "L", "LA", "P"]),
    kind=st.sampled_from(PNG_CHUNK_TYPES),
    payload=st.binary(max_size=300),
    where=st.integers(1, 6),
    good_crc=st.booleans(),
)
def test_pngs_with_odd_chunks_that_are_accepted_decode(
    mode: str, kind: bytes, payload: bytes, where: int, good_crc: bool
) -> None:
    # GIVEN a real PNG with one odd chunk inserted after its `where`-th chunk
    png = _encode(_photo().convert(mode), "PNG")
    chunks = _split_chunks(png)
    odd = _chunk(kind, payload)
    if not good_crc:
        odd = odd[:-4] + bytes(4)
    mutated = png[:8] + b"".join(chunks[:where]) + odd + b"".join(chunks[where:])

    # THEN accepted means decoded
    _accepted_means_decodes(mutated)


@FUZZ
@given(
    mode=st.sampled_from(["1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "CMYK", "P+transparency"]),
    fmt=st.sampled_from(["PNG", "JPEG", "WEBP"]),
    width=st.sampled_from([32, 33, 224, 671, 672, 1343, 2017]),
    height=st.sampled_from([32, 47, 224, 673, 1344, 2500]),
)
def test_extreme_sizes_and_modes_that_are_accepted_decode(
    mode: str, fmt: str, width: int, height: int
) -> None:
    image = _photo((width, height))
    if mode == "P+transparency":
        image = image.convert("P")
        image.info["transparency"] = 0
    else:
        image = (
            image.convert(mode)
            if mode != "I;16"
            else Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)
        )
    try:
        data = _encode(image, fmt)
    except (OSError, ValueError, KeyError):  # a mode that format cannot store
        return
    assert _accepted_means_decodes(data)


@FUZZ
@given(data=st.binary(max_size=2048))
def test_any_bytes_decode_or_raise_a_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_image(data, LIMITS.decode)


# -- memory ------------------------------------------------------------------------------------------------------

# Interpreter, imports and the decoder's fixed buffers, above which `decode_cost` prices one decode.
FIXED_MB = 32
_MEASURE = """
import json, sys
from pomona.imaging.decode import decode_cost
from pomona.ml.preprocess import preprocess_image
from pomona.validation.checks import Limits, validate_image
from PIL import Image
data = open(sys.argv[1], "rb").read()
limits = Limits()
with Image.open(sys.argv[1]) as header:
    cost = decode_cost(header)
def rss(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field)) * 1024
base = rss("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
verdict = validate_image(data, limits=limits)
x = preprocess_image(data, limits.decode)
print(json.dumps({"accepted": verdict.accepted, "detail": verdict.detail, "shape": list(x.shape),
                  "cost": cost, "peak": rss("VmHWM:") - base}))
"""

MEMORY_CASES = [
    "jpeg-cmyk-40mp",
    "jpeg-progressive-40mp",
    "png-palette-transparent-40mp",
    "png-rgba-40mp",
    "webp-rgba-20mp",
]


@pytest.mark.slow
@pytest.mark.parametrize("case", MEMORY_CASES)
def test_an_accepted_large_image_decodes_within_its_price(case: str, tmp_path: Path) -> None:
    # GIVEN a large image, each format at the size the limits still accept
    path = tmp_path / case
    _save(case, path)

    # WHEN a fresh process judges it and decodes it as the job does
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, check=True
    )
    measured = json.loads(done.stdout)

    # THEN it is accepted, decodes, and its peak memory stays within the price its header gave
    assert measured["accepted"], measured["detail"]
    assert measured["shape"] == [224, 224, 3]
    assert measured["cost"] <= LIMITS.max_decode_mb * MIB
    assert measured["peak"] <= measured["cost"] + FIXED_MB * MIB, measured


# -- helpers -----------------------------------------------------------------------------------------------------


def _save(case: str, path: Path) -> None:
    size = (4000, 5000) if case.startswith("webp") else (6000, 6600)
    if case == "png-palette-transparent-40mp":
        _palette(size).save(path, "PNG", transparency=0, compress_level=1)
        return
    mode = {"png-rgba-40mp": "RGBA", "jpeg-cmyk-40mp": "CMYK", "webp-rgba-20mp": "RGBA"}.get(case, "RGB")
    params: dict[str, object] = {
        "png-rgba-40mp": {"format": "PNG", "compress_level": 1},
        "jpeg-progressive-40mp": {"format": "JPEG", "progressive": True},
        "jpeg-cmyk-40mp": {"format": "JPEG", "quality": 80},
        "webp-rgba-20mp": {"format": "WEBP", "quality": 60},
    }[case]
    _gradients(mode, size).save(path, **params)  # type: ignore[arg-type]


def _gradients(mode: str, size: tuple[int, int]) -> Image.Image:
    """Gradients in every band (alpha too), each band another: compressible, yet no decoder shortcut applies."""
    bands = [Image.linear_gradient("L"), Image.radial_gradient("L"), Image.linear_gradient("L").rotate(90)]
    return Image.merge(mode, [bands[i % 3].resize(size) for i in range(len(mode))])


def _palette(size: tuple[int, int]) -> Image.Image:
    return _gradients("RGB", size).convert("P")


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return len(payload).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")


def _split_chunks(png: bytes) -> list[bytes]:
    chunks, at = [], 8
    while at < len(png):
        length = int.from_bytes(png[at : at + 4], "big")
        chunks.append(png[at : at + 12 + length])
        at += 12 + length
    return chunks


def _close(a: Image.Image, b: Image.Image, *, tolerance: float = 3.0) -> bool:
    """Whether two pictures are the same within rounding (mean absolute difference in 8-bit levels)."""
    diff = np.abs(np.asarray(a, np.float32) - np.asarray(b.convert("RGB"), np.float32))
    return bool(diff.mean() <= tolerance)
