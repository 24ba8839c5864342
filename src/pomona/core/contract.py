"""The contract between ingestion and featurization: upload keys, rejection reasons, quarantine, the queue message.

Both the Lambda (`pomona.ingest`) and the Spark job (`pomona.featurize`) import this module, so a change
to the contract is a change in one place. The README's "S3 layout" and "Queue message" sections describe it; the
job's outputs (features, projections, models, manifests) are laid out in `pomona.core.outputs`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Self
from urllib.parse import quote

from pomona.core.errors import BadKeyError, ContractError
from pomona.core.settings import Settings

SCHEMA_VERSION = 1
MAX_LABEL_CHARS = 64
MAX_KEY_BYTES = 1024  # S3's own limit
SIDECAR_SUFFIX = ".reason.json"
# S3's version id of an object written while its bucket was unversioned (a quarantine key's version segment then).
NULL_VERSION = "null"
# S3's version ids are 32 characters; a longer one (only a hostile message carries one) is cut and ends in a digest.
_MAX_VERSION_CHARS = 64
_DIGEST_CHARS = 16
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Bidi controls reorder the text a label is shown in; these invisible characters make a label look like another.
# Joiners (U+200C/D, in Persian, Indic scripts and emoji sequences) and emoji tags are part of real names: kept.
_HIDDEN = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"  # bidi controls
    "\u00ad\u200b\u2060\ufeff"  # soft hyphen, zero-width space, word joiner, zero-width no-break space
)
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Reason(StrEnum):
    """Why an upload was quarantined or a queued image was not featurized (the `quarantine/<reason>/` folder)."""

    EMPTY = "empty"
    TOO_LARGE_BYTES = "too_large_bytes"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    FORMAT_MISMATCH = "format_mismatch"
    TRUNCATED = "truncated"
    CORRUPT = "corrupt"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_SMALL = "too_small"
    ANIMATED = "animated"
    BAD_KEY = "bad_key"
    # Found by the featurization job, after the image was queued.
    OBJECT_GONE = "object_gone"
    OBJECT_CHANGED = "object_changed"
    DECODE_FAILED = "decode_failed"
    # A queued message naming what ingestion would not have queued (another bucket, a key outside the uploads
    # prefix, an unsanitised label, a format or size it refuses): quarantined by a sidecar alone, never fetched.
    BAD_MESSAGE = "bad_message"


def utc_now() -> str:
    """An ISO 8601 UTC timestamp with milliseconds, as every timestamp in the contract is written."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- keys ------------------------------------------------------------------------------------------------------


def sanitize_label(raw: str) -> str:
    """A label safe to use as a folder and a class name: NFKC-normalised, trimmed, bounded, no path tricks."""
    label = unicodedata.normalize("NFKC", raw).strip()
    if not label:
        raise BadKeyError(f"expected a non-empty label, got {raw!r}")
    if _CONTROL.search(label):
        raise BadKeyError(f"expected a label without control characters, got {raw!r}")
    invisible = next((c for c in label if c in _HIDDEN), None)
    if invisible is not None:
        raise BadKeyError(
            f"expected a label of visible characters, got {raw!r} (U+{ord(invisible):04X} is invisible or "
            "reorders text)"
        )
    if "/" in label or "\\" in label or label in {".", ".."} or ".." in label:
        raise BadKeyError(f"expected a label without '/', '\\' or '..', got {raw!r}")
    if len(label) > MAX_LABEL_CHARS:
        raise BadKeyError(f"expected a label of at most {MAX_LABEL_CHARS} characters, got {len(label)}")
    return label


def label_from_key(key: str, *, uploads_prefix: str, override: str | None = None) -> str:
    """The label of `uploads/<label>/<file>`, or the `x-amz-meta-label` override; `BadKeyError` if unsafe."""
    check_upload_key(key, uploads_prefix=uploads_prefix)
    if override is not None and override.strip():
        return sanitize_label(override)
    return sanitize_label(key[len(uploads_prefix) :].split("/", 1)[0])


def check_upload_key(key: str, *, uploads_prefix: str) -> None:
    """Raise `BadKeyError` unless `key` is `<uploads_prefix><label>/<file>` with no unsafe segment."""
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise BadKeyError(f"expected a key of at most {MAX_KEY_BYTES} bytes, got {len(key.encode())}")
    if not key.startswith(uploads_prefix):
        raise BadKeyError(f"expected a key under {uploads_prefix!r}, got {key!r}")
    if _CONTROL.search(key):
        raise BadKeyError(f"expected a key without control characters, got {key!r}")
    segments = key[len(uploads_prefix) :].split("/")
    if len(segments) < 2 or not all(segments):
        raise BadKeyError(f"expected {uploads_prefix}<label>/<file>, got {key!r}")
    if any(s in {".", ".."} for s in segments):
        raise BadKeyError(f"expected no '.' or '..' path segment, got {key!r}")


def quarantine_key(reason: Reason, key: str, *, version_id: str | None, quarantine_prefix: str) -> str:
    """`<quarantine prefix><reason>/<original key>/<version id>`: one place per object version, so two bad versions
    of one key keep their own copy and sidecar; an unversioned object's version is S3's `null`.

    Every segment of the key is percent-encoded where unsafe, so the result never leaves its prefix; the version id
    is one more segment, its `/` and `.` encoded too, so it never splits and no quarantined object's key ends in
    `SIDECAR_SUFFIX`. Different (key, version) pairs give different keys: a key (or a version id over 64 characters)
    too long for S3's 1024 bytes, sidecar suffix included, is cut and ended with `…` and a digest of the original.
    """
    folder = f"{quarantine_prefix}{reason.value}/"
    version = _safe_segment(version_id or NULL_VERSION).replace(".", "%2E")
    if len(version) > _MAX_VERSION_CHARS:
        version = _shortened(version, version_id or NULL_VERSION, _MAX_VERSION_CHARS)
    original = "/".join(_safe_segment(s) for s in key.split("/"))
    room = MAX_KEY_BYTES - len(f"{folder}/{version}{SIDECAR_SUFFIX}".encode())
    if len(original) > room:
        original = _shortened(original, key, room)
    return f"{folder}{original}/{version}"


def sidecar_key(quarantined_key: str) -> str:
    """The JSON sidecar beside a quarantined object."""
    return f"{quarantined_key}{SIDECAR_SUFFIX}"


@dataclass(frozen=True, kw_only=True)
class QuarantineSidecar:
    """The JSON document beside a quarantined object: why it is there, and exactly which object it was."""

    reason: Reason
    detail: str
    original_key: str
    version_id: str | None
    etag: str | None
    size: int | None
    sha256: str | None
    stage: Literal["ingest", "featurize"]  # which unit quarantined it
    error_type: str | None = None  # the exception's type name, when a decoder raised (`decode_failed`)
    time: str = dataclasses.field(default_factory=utc_now)

    def to_json(self) -> bytes:
        document = dataclasses.asdict(self) | {"reason": self.reason.value}
        return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode()


def _safe_segment(segment: str) -> str:
    """ASCII, one path segment (`/` encoded), never empty, `.` or `..`; text that is no valid Unicode (a lone
    surrogate) is encoded as its surrogatepass bytes rather than raising."""
    if segment in {"", ".", ".."}:
        return quote(segment, safe="").replace(".", "%2E") or "%00"
    return quote(segment.encode("utf-8", "surrogatepass"), safe=" !$&'()*+,;=:@-._~")


def _shortened(safe: str, raw: str, limit: int) -> str:
    """`safe` (ASCII) cut to fit `limit` bytes with `…` and a digest of `raw`, which keeps it one name per `raw`."""
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]
    return f"{safe[: max(0, limit - len('…'.encode()) - _DIGEST_CHARS)]}…{digest}"


# -- the queue message -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ImageMessage:
    """One accepted upload, as queued by ingestion for featurization (schema version 1)."""

    bucket: str
    key: str
    version_id: str
    etag: str
    sha256: str
    size: int
    format: str
    width: int
    height: int
    mode: str
    label: str
    uploaded_at: str
    validated_at: str
    orientation: int = 1
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_message(self)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, body: str | bytes) -> Self:
        """Parse and validate a message body; `ContractError` says what was expected and what was found.

        Text that is no valid Unicode (a lone surrogate, which JSON's `\\ud800` escape can carry) in any field is a
        `ContractError` too, so every message there is can be written out: its key to S3, its fields to JSON and
        logs. Such a message is malformed, not refused: it cannot be quarantined under its key, which S3 cannot
        store, and ingestion, whose keys come from S3, never sends one."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:  # RecursionError: nested too deep
            raise ContractError(f"expected a JSON object, got {_preview(body)}") from err
        if not isinstance(data, dict):
            raise ContractError(f"expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ContractError(f"expected schema_version {SCHEMA_VERSION}, got {version!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        missing = sorted(name for name, f in fields.items() if _required(f) and name not in data)
        if missing:
            raise ContractError(f"expected fields {missing}, got none for them")
        # Unknown fields are ignored: a newer producer may add optional fields within one schema version.
        return cls(**{name: data[name] for name in fields if name in data})


_INT_FIELDS = ("size", "width", "height", "orientation", "schema_version")


def _check_message(message: ImageMessage) -> None:
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        expected = int if f.name in _INT_FIELDS else str
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ContractError(f"{f.name}: expected {expected.__name__}, got {value!r}")
        if isinstance(value, str):
            _check_text(f.name, value)
    if not _SHA256.fullmatch(message.sha256):
        raise ContractError(f"sha256: expected 64 lowercase hex digits, got {message.sha256!r}")
    if message.size <= 0 or message.width <= 0 or message.height <= 0:
        raise ContractError(
            f"expected positive size, width and height, got {message.size}, {message.width}, {message.height}"
        )
    if message.format not in IMAGE_FORMATS:
        raise ContractError(f"format: expected one of {sorted(IMAGE_FORMATS)}, got {message.format!r}")
    if not message.bucket or not message.key or not message.version_id:
        raise ContractError("expected non-empty bucket, key and version_id")


def _check_text(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        found = value[err.start]
        raise ContractError(
            f"{name}: expected text that encodes as UTF-8, got {value!r} (lone surrogate U+{ord(found):04X} at "
            f"{err.start})"
        ) from err


def check_queued(message: ImageMessage, settings: Settings) -> None:
    """Raise `ContractError` unless `message` names what this deployment's ingestion would have queued: an object
    of its bucket under its uploads prefix, a sanitised label, an allowed format within the pixel limit, at most
    `max_bytes` bytes (so no executor reads an oversized version that ingestion quarantined from its HEAD).

    The queue is a boundary: the job checks what it is told before it fetches or decodes anything. Every string of
    an `ImageMessage` encodes as UTF-8 already (`from_json`), so a refused message can be quarantined by a sidecar
    under its key."""
    if message.bucket != settings.bucket:
        raise ContractError(f"bucket: expected {settings.bucket!r}, got {message.bucket!r}")
    check_upload_key(message.key, uploads_prefix=settings.uploads_prefix)
    if sanitize_label(message.label) != message.label:
        raise ContractError(f"label: expected a sanitised label, got {message.label!r}")
    if message.format not in settings.allowed_formats:
        raise ContractError(
            f"format: expected one of {sorted(settings.allowed_formats)}, got {message.format!r}"
        )
    if message.width * message.height > settings.max_pixels:
        raise ContractError(
            f"expected at most {settings.max_pixels} pixels, got {message.width}×{message.height}"
        )
    if message.size > settings.max_bytes:
        raise ContractError(f"size: expected at most {settings.max_bytes} bytes, got {message.size}")


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _preview(body: str | bytes) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return repr(text[:60] + ("…" if len(text) > 60 else ""))
