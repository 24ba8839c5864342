"""Bytes in, the model's 224×224 RGB picture out, at bounded memory: the decode every door shares.

Ingestion's validation, the job's preprocessing and the classify Lambda all call `decode_image`, with the same
plugins, the same EXIF handling and the same limits, so "accepted" means "decodes". Any exception a decoder raises,
whatever its type, comes out as `DecodeError` naming that type: one surprising file is that file's outcome, never
its caller's crash.

Memory: a JPEG is decoded by libjpeg's DCT scaling (`draft`) at the smallest scale that keeps both sides at or
above the model's size; other formats are decoded at full size (Pillow cannot do less), then shrunk strip by strip,
so no full-size copy is ever made: colour conversion and compositing onto white run on strips of the decoded
image, which is all that is held at full size. `MEMORY_BYTES_PER_PIXEL` bounds the peak (README, "Hostile input").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from io import BytesIO
from typing import Self

from PIL import ExifTags, Image

from pomona.core.errors import PomonaError
from pomona.core.settings import MIB, Settings

IMAGE_SIZE = 224
# Integer shrink factors leave at least this many times the target size for the final bilinear resize, as
# Pillow's own `reducing_gap=3` does: indistinguishable from a bilinear resize of the whole image.
_REDUCING_GAP = 3
# Rows converted at a time while shrinking: each strip's copies are this tall, whatever the image's height.
_STRIP_ROWS = 256
_WHITE = (255, 255, 255, 255)
# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose would).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Bytes a pixel of the header's size costs at the decode's peak, above a fixed ~32 MB (`decode_cost`), measured on
# 40 MP images by tests/unit/imaging/test_decode.py: Pillow holds every mode in at most 4 bytes a pixel (PNG 4.8 with
# the strips); Pillow's WebP decoder holds libwebp's canvas, its frame, the frame's bytes and the image (16); a
# progressive JPEG holds libjpeg's coefficients, 2 bytes a pixel per component, at full size; any other format is
# priced as the dearest.
_PNG_BYTES_PER_PIXEL = 5
_WEBP_BYTES_PER_PIXEL = 16
_OTHER_BYTES_PER_PIXEL = 16


class DecodeError(PomonaError, ValueError):
    """The bytes are not an image this decoder turns into the model's picture; `error_type` names what raised."""

    def __init__(self, message: str, *, error_type: str, read_all: bool = False) -> None:
        super().__init__(message)
        self.error_type = error_type
        # Whether the decoder had read every byte when it failed: a stream that ends early, not garbage midway.
        self.read_all = read_all


@dataclass(frozen=True, kw_only=True)
class DecodeLimits:
    """What a decoder may be asked to open: these formats' plugins alone, at most this many pixels (from the
    header, before any pixel is decoded). None: anything Pillow opens, within Pillow's own bomb limit."""

    formats: tuple[str, ...] | None = None
    max_pixels: int | None = None
    # The peak memory one decode may take (`decode_cost`), checked from the header before any pixel is decoded.
    max_decode_bytes: int | None = None

    @classmethod
    def for_uploads(cls, settings: Settings) -> Self:
        """The limits every door decodes uploads with: the allowed formats' plugins alone, within the caps."""
        return cls(
            formats=tuple(sorted(settings.allowed_formats)),
            max_pixels=settings.max_pixels,
            max_decode_bytes=settings.max_decode_mb * MIB,
        )


@dataclass(frozen=True, kw_only=True)
class Decoded:
    """The model's picture (RGB, 224×224, upright, transparency flattened onto white) and what the file said."""

    picture: Image.Image
    format: str
    width: int
    height: int
    mode: str
    orientation: int


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """Decode `data` into the model's picture; `DecodeError` for anything that is not such an image, whatever
    raised.

    Resizing stretches to 224×224 without cropping, with bilinear (Pillow's widens its kernel when shrinking:
    area-aware, no aliasing), so the picture does not depend on pixel phase or on the JPEG decode scale.
    """
    stream = BytesIO(data)
    try:
        # Pillow warns about oddities it reads past (odd EXIF, huge images below our cap): the outcome says what
        # matters. catch_warnings is process-wide: fine where one image is decoded at a time per process.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _decode(stream, limits)
    except DecodeError:
        raise
    except Exception as err:  # any decoder's surprise is this file's outcome, not the caller's
        raise DecodeError(
            f"expected an image Pillow can decode, got {len(data)} bytes: {type(err).__name__}: {err}",
            error_type=type(err).__name__,
            read_all=stream.tell() >= len(data),
        ) from err


def _decode(stream: BytesIO, limits: DecodeLimits) -> Decoded:
    with Image.open(stream, formats=limits.formats) as image:
        width, height = image.size
        if limits.max_pixels is not None and width * height > limits.max_pixels:
            raise DecodeError(
                f"expected at most {limits.max_pixels} pixels, got {width}×{height} = {width * height}",
                error_type="DecompressionBombError",
            )
        cost = decode_cost(image)
        if limits.max_decode_bytes is not None and cost > limits.max_decode_bytes:
            raise DecodeError(
                too_costly(image, cost, limits.max_decode_bytes), error_type="DecompressionBombError"
            )
        file_format, file_mode = image.format or "", image.mode
        if image.format in {"JPEG", "MPO"}:
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below 224 px on either side; entropy decoding still
            # reads every byte, so a truncated or corrupt stream is still caught.
            image.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))
        image.load()
        orientation = exif_orientation(image)  # after load: a PNG's eXIf chunk may follow its pixels
        small = _shrink(image)
        upright = small.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else small
        picture = upright.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return Decoded(
        picture=picture,
        format="JPEG" if file_format == "MPO" else file_format,
        width=width,
        height=height,
        mode=file_mode,
        orientation=orientation,
    )


def decode_cost(image: Image.Image) -> int:
    """The bytes decoding this opened (not yet loaded) image may hold at its peak, above a fixed ~32 MB."""
    width, height = image.size
    if image.format in {"JPEG", "MPO"}:
        scale = 1  # draft's: the largest of 1, 2, 4, 8 that keeps both sides at or above the model's size
        while scale < 8 and min(width, height) // (scale * 2) >= IMAGE_SIZE:
            scale *= 2
        decoded = 4 * -(-width // scale) * -(-height // scale)
        progressive = image.info.get("progressive") or image.info.get("progression")
        return decoded + (2 * getattr(image, "layers", 4) * width * height if progressive else 0)
    if image.format == "PNG":
        return _PNG_BYTES_PER_PIXEL * width * height
    if image.format == "WEBP":
        return _WEBP_BYTES_PER_PIXEL * width * height
    return _OTHER_BYTES_PER_PIXEL * width * height


def too_costly(image: Image.Image, cost: int, budget: int) -> str:
    width, height = image.size
    return (
        f"expected a decode within {budget // MIB} MB, got a {image.format} of {width}×{height} that needs "
        f"{-(-cost // MIB)} MB"
    )


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8), or 1 when absent or unreadable: EXIF is advisory, a photo with broken EXIF
    is still a photo (Pillow's own `exif_transpose` raises on some malformed blocks, so it is not used)."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - whatever the EXIF parser raises
        return 1
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 8 else 1


def _shrink(image: Image.Image) -> Image.Image:
    """`image` as RGB, shrunk by whole factors to no less than `_REDUCING_GAP` times the model's size, converted
    strip by strip so that no full-size copy is made (each strip's height a multiple of the vertical factor, so a
    block never straddles two strips: the result equals converting the whole image, then reducing it)."""
    width, height = image.size
    fx = max(1, width // (IMAGE_SIZE * _REDUCING_GAP))
    fy = max(1, height // (IMAGE_SIZE * _REDUCING_GAP))
    if fx == fy == 1:
        return _to_rgb(image)
    out = Image.new("RGB", (-(-width // fx), -(-height // fy)))
    step = max(1, _STRIP_ROWS // fy) * fy
    for top in range(0, height, step):
        strip = _to_rgb(image.crop((0, top, width, min(height, top + step))))
        out.paste(strip.reduce((fx, fy)), (0, top // fy))
    return out


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):  # 16-bit greyscale: keep the high byte, where convert() would clip
        image = image.convert("I").point(lambda v: v / 256).convert("L")
    if image.has_transparency_data:  # RGBA, LA, PA, or a palette/greyscale with a transparent colour
        background = Image.new("RGBA", image.size, _WHITE)
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")  # CMYK, L, P, YCbCr...
