"""Deterministic sample images: synthetic fruit, a 12 MP photo-like JPEG, the hostile-upload matrix, mutations.

Used by the tests, the validation benchmark and the demo, so each bad upload is defined once. Pillow and the
standard library only: the Lambda extra has no numpy.
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageDraw, ImageFilter

from pomona.core.contract import Reason

SYNTHETIC_LABELS = ("Apple Red", "Banana", "Lime", "Orange", "Plum", "Pear")
_WHITE = (255, 255, 255)
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "TIFF": "tif", "BMP": "bmp"}


@dataclass(frozen=True)
class _FruitShape:
    colour: tuple[int, int, int]
    aspect: float  # height / width of the body
    kind: str  # "round", "pear" or "banana"


_SHAPES = {
    "Apple Red": _FruitShape((185, 28, 38), 0.92, "round"),
    "Banana": _FruitShape((236, 206, 62), 1.0, "banana"),
    "Lime": _FruitShape((118, 188, 52), 0.82, "round"),
    "Orange": _FruitShape((246, 146, 30), 1.0, "round"),
    "Plum": _FruitShape((92, 34, 88), 0.9, "round"),
    "Pear": _FruitShape((188, 198, 72), 1.0, "pear"),
}


def fruit_image(label: str, index: int, *, size: int = 100, fmt: str = "JPEG") -> bytes:
    """A synthetic fruit on white: colour and shape from `label`, position, size and angle from `index`."""
    return _encode(_draw_fruit(label, index, size), fmt)


def _draw_fruit(label: str, index: int, size: int) -> Image.Image:
    rng = random.Random(f"{label}/{index}")  # str seeds hash with SHA-512: stable across runs
    shape = _SHAPES.get(label) or _shape_for_unknown(label)
    width = size * rng.uniform(0.5, 0.66)
    cx, cy = size * rng.uniform(0.45, 0.55), size * rng.uniform(0.45, 0.55)
    if shape.kind == "pear":  # leave room above for the top lobe
        width, cy = width * 0.8, cy + size * 0.1
    body = [cx - width / 2, cy - width * shape.aspect / 2, cx + width / 2, cy + width * shape.aspect / 2]
    colour = tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in shape.colour)
    dark = tuple(int(c * 0.55) for c in colour)

    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if shape.kind == "banana":
        arc = [cx - width * 0.8, cy - width * 0.9, cx + width * 0.8, cy + width * 0.5]
        draw.arc(arc, 20, 160, fill=dark, width=max(3, size // 7))
        draw.arc(arc, 24, 156, fill=colour, width=max(2, size // 9))
    else:
        parts = [body]
        if shape.kind == "pear":  # a smaller top lobe
            parts.append([cx - width * 0.3, body[1] - width * 0.4, cx + width * 0.3, body[1] + width * 0.3])
        for part in parts:
            draw.ellipse(part, fill=dark)
        for part in parts:
            draw.ellipse(_shrink(part, size * 0.025), fill=colour)
        top = parts[-1][1]
        draw.line([cx, top + width * 0.1, cx + width * 0.08, top - width * 0.15], fill=(90, 60, 30), width=2)
        # A soft highlight, upper left, for a little shading.
        glow = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        spot = [cx - width * 0.3, cy - width * 0.3, cx - width * 0.05, cy - width * 0.1]
        ImageDraw.Draw(glow).ellipse(spot, fill=(255, 255, 255, 110))
        layer = Image.alpha_composite(layer, glow.filter(ImageFilter.GaussianBlur(size / 40)))
    layer = layer.rotate(rng.uniform(-30, 30), resample=Image.Resampling.BICUBIC, center=(cx, cy))

    photo = Image.new("RGB", (size, size), _WHITE)
    photo.paste(layer, mask=layer)
    return _add_noise(photo, rng, amount=0.06)


def _shape_for_unknown(label: str) -> _FruitShape:
    digest = hashlib.sha256(label.encode()).digest()
    return _FruitShape((digest[0], digest[1], digest[2]), 0.7 + digest[3] / 512, "round")


def _shrink(box: list[float], by: float) -> list[float]:
    return [box[0] + by, box[1] + by, box[2] - by, box[3] - by]


def _add_noise(image: Image.Image, rng: random.Random, *, amount: float) -> Image.Image:
    grain = Image.frombytes("L", image.size, rng.randbytes(image.width * image.height))
    return Image.blend(image, Image.merge("RGB", (grain, grain, grain)), amount)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    defaults: dict[str, object] = {"quality": 90} if fmt in {"JPEG", "WEBP"} else {}
    image.save(buffer, fmt, **(defaults | params))
    return buffer.getvalue()


@functools.cache
def large_jpeg(width: int = 4000, height: int = 3000) -> bytes:
    """A photo-like JPEG (gradients, a few fruit, sensor-like noise) at quality 90; cached per size."""
    rng = random.Random(f"large/{width}x{height}")
    horizontal = Image.linear_gradient("L").rotate(90).resize((width, height))
    vertical = Image.linear_gradient("L").resize((width, height))
    radial = Image.radial_gradient("L").resize((width, height))
    photo = Image.merge("RGB", (horizontal, vertical, radial))
    side = min(width, height) // 3
    for i, label in enumerate(SYNTHETIC_LABELS[:4]):
        fruit = _draw_fruit(label, i, side)
        photo.paste(fruit, (i * (width - side) // 3, rng.randrange(max(1, height - side))))
    return _encode(_add_noise(photo, rng, amount=0.12), "JPEG")


# -- mutations: what a fuzzer makes of a real file -----------------------------------------------------------

FUZZ_FORMATS = ("JPEG", "PNG", "WEBP")


def mutate(
    seed: bytes, *, flips: Sequence[tuple[int, int]] = (), cut: int | None = None, tail: bytes = b""
) -> bytes:
    """`seed` corrupted: each (position, mask) XORed in (position modulo the length), cut to `cut` bytes, `tail`
    appended."""
    data = bytearray(seed)
    for position, mask in flips:
        data[position % len(data)] ^= mask
    return bytes(data[:cut]) + tail


def random_mutations(seed: bytes, count: int, *, rng: random.Random) -> Iterator[bytes]:
    """`count` mutations of `seed`: up to 8 flipped bytes, a random cut, up to 64 random bytes appended."""
    for _ in range(count):
        flips = [(rng.randrange(len(seed)), rng.randrange(1, 256)) for _ in range(rng.randint(0, 8))]
        yield mutate(seed, flips=flips, cut=rng.randint(1, len(seed)), tail=rng.randbytes(rng.randint(0, 64)))


def reencode(data: bytes, fmt: str) -> bytes:
    """The image in `data` saved as `fmt`: one real photo gives a seed of each format."""
    with Image.open(io.BytesIO(data)) as image:
        return _encode(image.convert("RGB"), fmt)


# -- the hostile matrix ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Case:
    """One upload and the verdict it must get: `expected` is the rejection reason, None for accepted."""

    id: str
    data: bytes
    expected: Reason | None
    filename: str
    declared_type: str | None = None
    orientation: int = 1  # the EXIF orientation an accepted case must report


def hostile_cases() -> list[Case]:
    """Every kind of upload the validator must judge: broken, hostile, mislabelled and awkward-but-fine."""
    return list(_hostile_cases())


def bad_uploads() -> list[tuple[str, bytes, Reason]]:
    """A handful of rejected uploads for the demo: (file name, bytes, expected reason)."""
    wanted = (
        "jpeg-truncated-half",
        "text-named-jpg",
        "png-bomb-header-50000x50000",
        "empty",
        "png-1x1",
        "webp-animated",
        "png-named-jpg",
    )
    by_id = {case.id: case for case in _hostile_cases()}
    picked = [by_id[name] for name in wanted]
    return [(case.filename, case.data, case.expected) for case in picked if case.expected is not None]


@functools.cache
def _hostile_cases() -> tuple[Case, ...]:
    return (
        *_accepted_cases(),
        *_truncated_cases(),
        *_bomb_cases(),
        *_not_image_cases(),
        *_unsupported_cases(),
        *_mismatch_cases(),
        *_other_rejected_cases(),
    )


def _case(
    case_id: str,
    data: bytes,
    expected: Reason | None,
    fmt: str = "JPEG",
    *,
    filename: str | None = None,
    declared_type: str | None = None,
    orientation: int = 1,
) -> Case:
    """A case named after its id, with the extension of its real format unless `filename` says otherwise."""
    return Case(
        id=case_id,
        data=data,
        expected=expected,
        filename=filename or f"{case_id}.{_EXTENSIONS[fmt]}",
        declared_type=declared_type,
        orientation=orientation,
    )


def _fruit(fmt: str = "JPEG", **params: object) -> bytes:
    return _encode(_draw_fruit("Apple Red", 0, 100), fmt, **params)


def _accepted_cases() -> list[Case]:
    photo = _draw_fruit("Orange", 1, 120).resize((120, 80))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    mpo = io.BytesIO()
    photo.save(mpo, "MPO", save_all=True, append_images=[photo.rotate(180)])
    return [
        _case("jpeg-baseline", _fruit(), None),
        _case("jpeg-progressive", _fruit(progressive=True), None),
        _case("jpeg-cmyk", _encode(photo.convert("CMYK"), "JPEG"), None),
        _case("jpeg-greyscale", _encode(photo.convert("L"), "JPEG"), None),
        _case("jpeg-exif-orientation-6", _encode(photo, "JPEG", exif=exif), None, orientation=6),
        _case("jpeg-trailing-bytes", _fruit() + random.Random(3).randbytes(2000), None),
        _case("jpeg-mpo-two-pictures", mpo.getvalue(), None),
        _case("png-rgb", _fruit("PNG"), None, "PNG"),
        _case("png-rgba", _encode(rgba, "PNG"), None, "PNG"),
        _case("png-palette", _encode(photo.convert("P"), "PNG"), None, "PNG"),
        _case("png-greyscale", _encode(photo.convert("L"), "PNG"), None, "PNG"),
        _case("png-16bit-grey", _encode(photo.convert("L").convert("I;16"), "PNG"), None, "PNG"),
        _case("png-16bit-rgb", _png_16bit_rgb(64, 48), None, "PNG"),
        _case("webp-lossy", _fruit("WEBP"), None, "WEBP"),
        _case("webp-lossless", _fruit("WEBP", lossless=True), None, "WEBP"),
        _case("webp-alpha", _encode(rgba, "WEBP"), None, "WEBP"),
        _case("jpeg-at-min-side-32x32", _encode(photo.resize((32, 32)), "JPEG"), None),
    ]


def _truncated_cases() -> list[Case]:
    cases = []
    streams = {
        "jpeg": ("JPEG", _fruit()),
        "jpeg-progressive": ("JPEG", _fruit(progressive=True)),
        "png": ("PNG", _fruit("PNG")),
        "webp": ("WEBP", _fruit("WEBP")),
    }
    for name, (fmt, data) in streams.items():
        cuts = {"header": 20, "half": len(data) // 2, "last-byte": len(data) - 1}
        if fmt == "PNG":
            cuts["no-iend"] = len(data) - 12
        for where, cut in cuts.items():
            cases.append(_case(f"{name}-truncated-{where}", data[:cut], Reason.TRUNCATED, fmt))
    return cases


def _bomb_cases() -> list[Case]:
    return [
        _case("png-bomb-header-50000x50000", _png_bomb(50_000, 50_000), Reason.TOO_MANY_PIXELS, "PNG"),
        # A genuine, valid PNG of 41 MP of zeros: 41 MB decoded from ~40 kB.
        _case("png-bomb-6400x6400", _png_bomb(6400, 6400, whole=True), Reason.TOO_MANY_PIXELS, "PNG"),
        _case(
            "jpeg-bomb-header-65000x65000", _jpeg_with_size(_fruit(), 65_000, 65_000), Reason.TOO_MANY_PIXELS
        ),
        _case(
            "webp-bomb-header-16383x16383",
            _webp_with_size(_fruit("WEBP", lossless=True), 16383, 16383),
            Reason.TOO_MANY_PIXELS,
            "WEBP",
        ),
        _case(
            "webp-bomb-header-10000x5000",
            _webp_with_size(_fruit("WEBP", lossless=True), 10_000, 5000),
            Reason.TOO_MANY_PIXELS,
            "WEBP",
        ),
    ]


def _not_image_cases() -> list[Case]:
    pdf = io.BytesIO()
    _draw_fruit("Plum", 0, 100).save(pdf, "PDF")
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
    svg += b'<circle cx="50" cy="50" r="40" fill="red"/></svg>\n'
    html = b"<!DOCTYPE html>\n<html><head><title>apple</title></head><body><img src=x></body></html>\n"
    rejected = Reason.NOT_AN_IMAGE
    return [
        _case("text-named-jpg", b"this is a photo of an apple, honest\n", rejected, filename="apple.jpg"),
        _case("html-named-jpg", html, rejected, filename="index.jpg"),
        _case("svg-named-jpg", svg, rejected, filename="drawing.jpg"),
        _case("pdf-named-jpg", pdf.getvalue(), rejected, filename="scan.jpg"),
        _case("random-garbage", random.Random(7).randbytes(4096), rejected, filename="garbage.jpg"),
        _case("zeros", bytes(1024), rejected, filename="zeros.jpg"),
    ]


def _unsupported_cases() -> list[Case]:
    frames = [_draw_fruit("Lime", i, 64) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    rejected = Reason.UNSUPPORTED_FORMAT
    return [
        _case("gif-animated", gif.getvalue(), rejected, "GIF"),
        _case("gif-still", _encode(frames[0], "GIF"), rejected, "GIF"),
        _case("tiff", _encode(frames[0], "TIFF"), rejected, "TIFF"),
        _case("bmp", _encode(frames[0], "BMP"), rejected, "BMP"),
    ]


def _mismatch_cases() -> list[Case]:
    jpeg, png, webp = _fruit(), _fruit("PNG"), _fruit("WEBP")
    mismatch = Reason.FORMAT_MISMATCH
    return [
        _case("png-named-jpg", png, mismatch, filename="apple.jpg"),
        _case("webp-named-png", webp, mismatch, filename="apple.png"),
        _case("jpeg-declared-png", jpeg, mismatch, declared_type="image/png"),
        _case("webp-declared-jpeg", webp, mismatch, "WEBP", declared_type="image/jpeg"),
        _case("jpeg-declared-octet-stream", jpeg, None, declared_type="application/octet-stream"),
        _case("jpeg-declared-binary-octet-stream", jpeg, None, declared_type="binary/octet-stream"),
        _case("jpeg-declared-image-jpg", jpeg, None, declared_type="image/jpg", filename="APPLE.JPEG"),
        _case("jpeg-declared-with-params", jpeg, None, declared_type="image/jpeg; charset=binary"),
        _case("jpeg-no-extension", jpeg, None, filename="apple"),
    ]


def _other_rejected_cases() -> list[Case]:
    frames = [_draw_fruit("Plum", i, 64) for i in range(3)]
    webp, apng = io.BytesIO(), io.BytesIO()
    frames[0].save(webp, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(apng, "PNG", save_all=True, append_images=frames[1:], duration=100)
    png = bytearray(_fruit("PNG"))
    png[png.find(b"IDAT") + 40] ^= 0xFF  # one flipped bit of pixel data: the chunk's CRC no longer matches
    # SOI and the JFIF APP0 segment, then 0xFF42 (no such marker) and noise.
    garbage = _fruit()[:20] + b"\xff\x42" + random.Random(11).randbytes(2000)
    return [
        _case("empty", b"", Reason.EMPTY),
        _case("png-1x1", _encode(Image.new("RGB", (1, 1), _WHITE), "PNG"), Reason.TOO_SMALL, "PNG"),
        _case("jpeg-31x200", _encode(frames[0].resize((31, 200)), "JPEG"), Reason.TOO_SMALL),
        _case("webp-animated", webp.getvalue(), Reason.ANIMATED, "WEBP"),
        _case("png-animated", apng.getvalue(), Reason.ANIMATED, "PNG"),
        _case("png-bad-crc", bytes(png), Reason.CORRUPT, "PNG"),
        _case("jpeg-header-then-garbage", garbage, Reason.CORRUPT),
    ]


# -- hand-made files: what Pillow will not write -----------------------------------------------------------------


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def _png(width: int, height: int, *, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _png_bomb(width: int, height: int, *, whole: bool = False) -> bytes:
    """A greyscale PNG of zeros: all its rows if `whole`, else just one (the header still claims them all)."""
    packer = zlib.compressobj(9)
    row = bytes(1 + width)  # filter byte + one byte per pixel
    idat = b"".join(packer.compress(row) for _ in range(height if whole else 1)) + packer.flush()
    return _png(width, height, bit_depth=8, colour_type=0, idat=idat)


def _png_16bit_rgb(width: int, height: int) -> bytes:
    rows = (
        b"\x00" + b"".join(struct.pack(">HHH", x * 1000, y * 1300, (x + y) * 500) for x in range(width))
        for y in range(height)
    )
    return _png(width, height, bit_depth=16, colour_type=2, idat=zlib.compress(b"".join(rows)))


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """`data` with its start-of-frame header claiming `width`×`height`."""
    out = bytearray(data)
    pos = 2
    while out[pos] == 0xFF:
        marker, length = out[pos + 1], struct.unpack_from(">H", out, pos + 2)[0]
        if marker in {0xC0, 0xC1, 0xC2}:  # SOF: length, precision, height, width
            struct.pack_into(">HH", out, pos + 5, height, width)
            return bytes(out)
        pos += 2 + length
    raise ValueError(f"expected a JPEG with a start-of-frame marker, got none in {len(data)} bytes")


def _webp_with_size(data: bytes, width: int, height: int) -> bytes:
    """A lossless WebP with its VP8L header claiming `width`×`height` (14 bits each, minus one)."""
    if data[12:16] != b"VP8L":
        raise ValueError(f"expected a lossless (VP8L) WebP, got chunk {data[12:16]!r}")
    bits = struct.unpack_from("<I", data, 21)[0]
    bits = (bits & ~0x0FFF_FFFF) | (width - 1) | ((height - 1) << 14)
    return data[:21] + struct.pack("<I", bits) + data[25:]
