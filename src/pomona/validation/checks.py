"""The ingestion Lambda's pure core: upload bytes in, `ImageVerdict` out. No boto3, no I/O.

The checks run cheapest first and stop at the first failure; the pixel cap is applied to the size read from the
header, before anything is decoded, so a decompression bomb costs a header parse and not gigabytes of RAM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Self

from PIL import Image, ImageFile

from pomona.core.contract import Reason
from pomona.core.settings import MIB, Settings
from pomona.imaging.decode import Decoded, DecodeError, DecodeLimits, decode_cost, decode_image, too_costly

# Register every plugin once at import (~20 ms of cold start) so the format, MIME and extension registries
# below are complete; Image.open would otherwise load them lazily on the first unusual file.
Image.init()

# Formats we recognise well enough to name in an `unsupported_format` verdict. Only these plugins parse the
# header of an upload, which keeps exotic parsers away from untrusted bytes.
_RECOGNISED = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "ICO", "AVIF", "JPEG2000", "PSD", "PPM", "QOI")
# Multi-picture JPEGs (phone cameras, depth maps) are JPEGs whose first picture is the photo.
_ALIASES = {"MPO": "JPEG"}
# Declarations that say nothing about the format.
_UNINFORMATIVE_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
# Pillow's own MIME registry, inverted (first registration wins: BMP before DIB), plus common aliases.
_MIME_FORMATS = {"image/jpg": "JPEG", "image/pjpeg": "JPEG", "image/x-png": "PNG", "image/apng": "PNG"} | {
    mime: _ALIASES.get(fmt, fmt) for fmt, mime in reversed(list(Image.MIME.items()))
}
_JPEG_SOS, _JPEG_EOI = b"\xff\xda", b"\xff\xd9"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the whole, constant IEND chunk

_DEFAULTS = Settings()


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What an upload may be; the defaults are `Settings`'."""

    max_bytes: int = _DEFAULTS.max_bytes
    max_pixels: int = _DEFAULTS.max_pixels
    min_side: int = _DEFAULTS.min_side
    allowed_formats: frozenset[str] = _DEFAULTS.allowed_formats
    max_decode_mb: int = _DEFAULTS.max_decode_mb

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            max_bytes=settings.max_bytes,
            max_pixels=settings.max_pixels,
            min_side=settings.min_side,
            allowed_formats=frozenset(settings.allowed_formats),
            max_decode_mb=settings.max_decode_mb,
        )

    @property
    def decode(self) -> DecodeLimits:
        """The limits of the one decode (`pomona.imaging`), which featurization and serving share."""
        return DecodeLimits(
            formats=tuple(sorted(self.allowed_formats)),
            max_pixels=self.max_pixels,
            max_decode_bytes=self.max_decode_mb * MIB,
        )


@dataclass(frozen=True, kw_only=True)
class ImageVerdict:
    """Whether an upload is accepted, why not, and what was learnt about it on the way."""

    accepted: bool
    reason: Reason | None = None
    detail: str
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    # EXIF orientation (1..8); 1 when absent. Recorded, not applied: featurization rotates.
    orientation: int = 1
    # The bytes' sha256 (hex): the upload's identity; None where the door asked for none (`digest=False`).
    sha256: str | None
    size: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the quarantine sidecar's body)."""
        return dataclasses.asdict(self) | {"reason": None if self.reason is None else self.reason.value}


def validate_image(
    data: bytes,
    *,
    limits: Limits,
    declared_type: str | None = None,
    filename: str | None = None,
) -> ImageVerdict:
    """Judge one upload. Never raises: any input, however hostile, gets a verdict.

    `declared_type` is the Content-Type the uploader claimed and `filename` the object's name; either one
    naming a different format than the bytes hold gives `format_mismatch`.
    """
    return validate_and_decode(data, limits=limits, declared_type=declared_type, filename=filename)[0]


def validate_and_decode(
    data: bytes,
    *,
    limits: Limits,
    declared_type: str | None = None,
    filename: str | None = None,
    digest: bool = True,
) -> tuple[ImageVerdict, Decoded | None]:
    """`validate_image`'s verdict, and for an accepted upload the decode it was accepted on (the model's picture),
    so a door that answers from the pixels (classify) decodes each photo once. With `digest=False` the verdict's
    `sha256` is None: a door that keys nothing by the bytes' identity saves hashing them (2-3 ms for 4 MB)."""
    sha256 = hashlib.sha256(data).hexdigest() if digest else None
    base = ImageVerdict(accepted=False, detail="", sha256=sha256, size=len(data))
    try:
        # Pillow warns about oddities it reads past (malformed MPO, odd EXIF); the verdict says what matters.
        # catch_warnings is process-wide: fine for a Lambda, which handles one event at a time.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _validate(data, limits, declared_type, filename, base)
    except Exception as err:  # noqa: BLE001 - last line of defence: a parser's surprise is a bad file, not a crash
        return dataclasses.replace(base, reason=Reason.CORRUPT, detail=_found("a readable image", err)), None


@dataclass(frozen=True)
class _Header:
    """What the header parse found: a format and an unloaded image, or the error of the plugin that claimed it."""

    format: str | None
    plugin: str = ""
    # The stream the plugin reads: where it stopped tells a stream that ends early from garbage midway.
    fp: io.BytesIO = field(default_factory=io.BytesIO)
    image: ImageFile.ImageFile | None = None
    error: Exception | None = None


def _validate(
    data: bytes, limits: Limits, declared_type: str | None, filename: str | None, base: ImageVerdict
) -> tuple[ImageVerdict, Decoded | None]:
    def reject(reason: Reason, detail: str, **found: Any) -> tuple[ImageVerdict, None]:
        return dataclasses.replace(base, reason=reason, detail=detail, **found), None

    allowed = sorted(limits.allowed_formats)
    if not data:
        return reject(Reason.EMPTY, "expected at least 1 byte, got 0")
    if len(data) > limits.max_bytes:
        return reject(Reason.TOO_LARGE_BYTES, f"expected at most {limits.max_bytes} bytes, got {len(data)}")

    header = _open_header(data, allowed=allowed)
    fmt = header.format
    if fmt is None:
        return reject(Reason.NOT_AN_IMAGE, f"expected one of {allowed}, got no image header: {data[:16]!r}")
    if fmt not in limits.allowed_formats:
        return reject(Reason.UNSUPPORTED_FORMAT, f"expected one of {allowed}, got {fmt!r}", format=fmt)
    if mismatch := _format_mismatch(fmt, declared_type, filename):
        return reject(Reason.FORMAT_MISMATCH, mismatch, format=fmt)
    if header.image is None:
        assert header.error is not None
        failure = _classify_failure(fmt, data, header.error, limits, read_all=_read_all(header, data))
        return reject(*failure, format=fmt)

    with header.image as image:
        width, height = image.size
        found: dict[str, Any] = {"format": fmt, "width": width, "height": height, "mode": image.mode}
        if problem := _size_problem(image, limits):
            return reject(*problem, **found)
        if header.plugin == "PNG":
            try:
                _verify_png(data, header)
            except Exception as err:  # noqa: BLE001 - any chunk error is a verdict on the file
                return reject(
                    *_classify_failure(fmt, data, err, limits, read_all=_read_all(header, data)), **found
                )
    # The job's own decode, same plugins, limits and EXIF handling: what is accepted here decodes there.
    try:
        decoded = decode_image(data, limits.decode)
    except DecodeError as err:
        cause = err.__cause__ if isinstance(err.__cause__, Exception) else err
        return reject(*_classify_failure(fmt, data, cause, limits, read_all=err.read_all), **found)
    mode, orientation = decoded.mode, decoded.orientation

    detail = f"accepted {fmt} {width}×{height} {mode}"
    found |= {"mode": mode, "orientation": orientation}
    return dataclasses.replace(base, accepted=True, detail=detail, **found), decoded


def _size_problem(image: ImageFile.ImageFile, limits: Limits) -> tuple[Reason, str] | None:
    """Why the header's size, decode cost or frame count is refused, or None: judged before any pixel is decoded."""
    width, height = image.size
    if width * height > limits.max_pixels:
        return (
            Reason.TOO_MANY_PIXELS,
            f"expected at most {limits.max_pixels} pixels, got {width}×{height} = {width * height}",
        )
    if (cost := decode_cost(image)) > limits.max_decode_mb * MIB:
        return Reason.TOO_MANY_PIXELS, too_costly(image, cost, limits.max_decode_mb * MIB)
    if min(width, height) < limits.min_side:
        return Reason.TOO_SMALL, f"expected both sides at least {limits.min_side} px, got {width}×{height}"
    # An MPO's extra pictures are previews or depth maps, not animation frames.
    frames = 1 if image.format == "MPO" else int(getattr(image, "n_frames", 1))
    if frames > 1:
        return Reason.ANIMATED, f"expected a single frame, got {frames} frames"
    return None


def _open_header(data: bytes, *, allowed: list[str]) -> _Header:
    """Identify the format and parse the header, without decoding pixels.

    This walks Pillow's plugin registry as `Image.open` does, minus its decompression-bomb check: that check
    raises at 2 × 89 MP before the size can be read, and our own, stricter pixel cap wants the size to say
    "got 50000×50000". An allowed format whose magic bytes match but whose header fails to parse is
    remembered, so a broken JPEG is reported as a broken JPEG and not as "not an image". For other formats
    the magic alone (two bytes for PPM) is too weak a sign, so they must parse to be named.
    """
    prefix = data[:16]
    claimed: _Header | None = None
    for plugin in dict.fromkeys([*allowed, *_RECOGNISED]):  # ordered and de-duplicated
        if plugin not in Image.OPEN:
            continue
        factory, accept = Image.OPEN[plugin]
        recognised = accept(prefix) if accept is not None else False
        if isinstance(recognised, str) or not recognised:  # a string is Pillow's "known but unsupported"
            continue
        fp = io.BytesIO(data)
        try:
            image = factory(fp, "")
        except Exception as err:  # noqa: BLE001 - the magic matched, the header did not parse
            if plugin in allowed:
                claimed = claimed or _Header(_canonical(plugin), plugin, fp, error=err)
            continue
        return _Header(_canonical(image.format or plugin), plugin, fp, image)
    return claimed or _Header(None)


def _verify_png(data: bytes, header: _Header) -> None:
    """Check every chunk's CRC up to a complete IEND: decoding stops after the last IDAT, so a PNG missing its
    tail would decode fine."""
    assert header.image is not None
    header.image.verify()
    if _PNG_IEND not in data:  # verify() stops at IEND's name, before its CRC
        raise OSError("truncated PNG file: no complete IEND chunk")


def _read_all(header: _Header, data: bytes) -> bool:
    return header.fp.tell() >= len(data)


def _classify_failure(
    fmt: str, data: bytes, err: Exception, limits: Limits, *, read_all: bool
) -> tuple[Reason, str]:
    """`truncated` when the stream ends early, `corrupt` for any other decoder error."""
    if isinstance(err, Image.DecompressionBombError):  # WebP checks its canvas size before we see it
        return Reason.TOO_MANY_PIXELS, f"expected at most {limits.max_pixels} pixels, got {err}"
    # Pillow says "truncated" when a read comes back short, but not always (WebP's "could not create decoder
    # object", JPEG's "cannot load this image", a short struct read as SyntaxError). So when the parser had
    # read every byte, the container's own framing decides. A parser that failed midway is corruption.
    if "truncat" in str(err).lower() or (read_all and _ends_early(fmt, data)):
        return Reason.TRUNCATED, _found(f"a complete {fmt} stream", err, f"{len(data)} bytes ending early: ")
    return Reason.CORRUPT, _found(f"a decodable {fmt} image", err)


def _ends_early(fmt: str, data: bytes) -> bool:
    """Whether the container's own framing says bytes are missing."""
    if fmt == "JPEG":  # entropy-coded data escapes 0xFF, so these markers cannot occur inside a scan
        return data.rfind(_JPEG_EOI) <= data.rfind(_JPEG_SOS)
    if fmt == "PNG":
        return _PNG_IEND not in data
    if fmt == "WEBP":  # RIFF's length field counts the bytes after it
        return len(data) < 12 or struct.unpack_from("<I", data, 4)[0] + 8 > len(data)
    return False


def _format_mismatch(fmt: str, declared_type: str | None, filename: str | None) -> str | None:
    """Why the declared Content-Type or the file extension disagrees with `fmt`, or None."""
    mime = (declared_type or "").split(";", 1)[0].strip().lower()
    by_type = None if mime in _UNINFORMATIVE_TYPES else _MIME_FORMATS.get(mime)
    if by_type is not None and by_type != fmt:
        return f"expected {by_type!r} as declared by Content-Type {declared_type!r}, got {fmt!r}"
    suffix = PurePosixPath(filename or "").suffix.lower()
    by_suffix = _canonical(Image.EXTENSION[suffix]) if suffix in Image.EXTENSION else None
    if by_suffix is not None and by_suffix != fmt:
        return f"expected {by_suffix!r} as named by the extension {suffix!r}, got {fmt!r}"
    return None


def _canonical(fmt: str) -> str:
    return _ALIASES.get(fmt, fmt)


def _found(expected: str, err: BaseException, prefix: str = "") -> str:
    return f"expected {expected}, got {prefix}{type(err).__name__}: {err}"
