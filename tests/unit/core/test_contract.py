"""The contract between ingestion and featurization: keys, labels, the queue message, settings."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pomona.core.contract import (
    MAX_KEY_BYTES,
    MAX_LABEL_CHARS,
    SCHEMA_VERSION,
    SIDECAR_SUFFIX,
    ImageMessage,
    QuarantineSidecar,
    Reason,
    check_queued,
    label_from_key,
    quarantine_key,
    sanitize_label,
    sidecar_key,
)
from pomona.core.errors import BadKeyError, ContractError
from pomona.core.settings import Settings, SettingsError

UPLOADS = "uploads/"


def _message(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "schema_version": SCHEMA_VERSION,
        "bucket": "pomona-images",
        "key": "uploads/Apple Braeburn/r_1_100.jpg",
        "version_id": "v1",
        "etag": '"abc"',
        "sha256": "a" * 64,
        "size": 4751,
        "format": "JPEG",
        "width": 100,
        "height": 100,
        "mode": "RGB",
        "label": "Apple Braeburn",
        "uploaded_at": "2026-11-25T05:40:00.000Z",
        "validated_at": "2026-11-25T05:40:00.120Z",
    }
    return {**fields, **changes}


def test_message_round_trips() -> None:
    message = ImageMessage.from_json(json.dumps(_message()))
    assert ImageMessage.from_json(message.to_json()) == message
    assert message.orientation == 1


def test_message_ignores_unknown_fields_of_the_same_version() -> None:
    assert ImageMessage.from_json(json.dumps(_message(camera="Pixel"))).label == "Apple Braeburn"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        pytest.param("{not json", "expected a JSON object, got '{not json'", id="not-json"),
        pytest.param("[1, 2]", "expected a JSON object, got list", id="not-object"),
        pytest.param(
            json.dumps(_message(schema_version=2)), "expected schema_version 1, got 2", id="version"
        ),
        pytest.param(json.dumps({"schema_version": 1}), r"expected fields \['bucket'", id="missing"),
        pytest.param(json.dumps(_message(size="12")), "size: expected int, got '12'", id="size-type"),
        pytest.param(json.dumps(_message(width=True)), "width: expected int, got True", id="bool-is-not-int"),
        pytest.param(json.dumps(_message(sha256="XYZ")), "sha256: expected 64 lowercase hex", id="sha"),
        pytest.param(json.dumps(_message(height=0)), "expected positive size, width and height", id="zero"),
        pytest.param(json.dumps(_message(format="SVG")), "format: expected one of", id="format"),
    ],
)
def test_bad_messages_say_what_was_expected(body: str, match: str) -> None:
    with pytest.raises(ContractError, match=match):
        ImageMessage.from_json(body)


_TEXT_FIELDS = [f.name for f in dataclasses.fields(ImageMessage) if f.type == "str"]


@pytest.mark.parametrize("field", _TEXT_FIELDS)
def test_a_lone_surrogate_in_any_text_field_breaks_the_contract(field: str) -> None:
    # JSON's escapes carry what is no Unicode text; it would raise UnicodeEncodeError wherever it is written
    body = json.dumps(_message(**{field: "uploads/Apple/\ud800.jpg"}))
    assert "\\ud800" in body

    with pytest.raises(
        ContractError,
        match=rf"{field}: expected text that encodes as UTF-8, got .*\(lone surrogate U\+D800 at 14\)",
    ):
        ImageMessage.from_json(body)


def test_a_surrogate_pair_is_text_and_stays() -> None:
    body = json.dumps(_message(label="Apple \U0001f34e"))  # escaped as "\ud83c\udf4e", a valid pair
    assert ImageMessage.from_json(body).label == "Apple \U0001f34e"


def test_json_nested_beyond_the_parsers_depth_breaks_the_contract() -> None:
    with pytest.raises(ContractError, match="expected a JSON object, got '\\[\\[\\["):
        ImageMessage.from_json("[" * 200_000 + "]" * 200_000)


# Text of any code point, lone surrogates included: JSON escapes them (`\ud800`), and `ensure_ascii=False` leaves
# them raw in the body's text.
_JSON_TEXT = st.text(
    st.characters(exclude_categories=()) | st.sampled_from(["\ud800", "\udfff", "\U0001f34e"])
)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_JSON_TEXT, inner, max_size=4),
    max_leaves=12,
)
# A message with some fields replaced by any JSON value (an unknown field added, too), or one field dropped.
_MESSAGE_LIKE = st.builds(
    lambda changes, dropped: {k: v for k, v in _message(**changes).items() if k != dropped},
    st.dictionaries(st.sampled_from([*_message(), "orientation", "camera"]), _JSON_VALUES, max_size=3),
    st.none() | st.sampled_from(list(_message())),
)
# The fields whose only rule is to be text (non-empty for these three), and text to put in them.
_FREE_TEXT_FIELDS = ["bucket", "key", "version_id", "etag", "mode", "label", "uploaded_at", "validated_at"]
_NON_EMPTY = {"bucket", "key", "version_id"}


@settings(max_examples=300, deadline=None)
@given(document=_MESSAGE_LIKE | _JSON_VALUES, ensure_ascii=st.booleans())
def test_any_json_is_a_contract_error_or_a_message_that_encodes(document: object, ensure_ascii: bool) -> None:
    body = json.dumps(document, ensure_ascii=ensure_ascii)
    try:
        message = ImageMessage.from_json(body)
    except ContractError:
        return
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if isinstance(value, str):
            value.encode("utf-8")
    message.to_json().encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(
    changes=st.dictionaries(st.sampled_from(_FREE_TEXT_FIELDS), _JSON_TEXT, min_size=1, max_size=3),
    ensure_ascii=st.booleans(),
)
def test_text_fields_are_taken_exactly_when_they_encode(changes: dict[str, str], ensure_ascii: bool) -> None:
    body = json.dumps(_message(**changes), ensure_ascii=ensure_ascii)
    valid = all(
        (value or name not in _NON_EMPTY) and not any("\ud800" <= c <= "\udfff" for c in value)
        for name, value in changes.items()
    )

    if valid:
        message = ImageMessage.from_json(body)
        assert {name: getattr(message, name) for name in changes} == changes
        assert ImageMessage.from_json(message.to_json().encode("utf-8")) == message
    else:
        with pytest.raises(ContractError, match=r"expected text that encodes as UTF-8|expected non-empty"):
            ImageMessage.from_json(body)


def test_a_message_over_the_byte_limit_is_not_what_ingestion_queues() -> None:
    limits = Settings.from_env({"POMONA_BUCKET": "pomona-images", "POMONA_MAX_BYTES": "4751"})
    at_the_limit = ImageMessage.from_json(json.dumps(_message(size=4751)))
    over = ImageMessage.from_json(json.dumps(_message(size=4752)))

    check_queued(at_the_limit, limits)
    with pytest.raises(ContractError, match="size: expected at most 4751 bytes, got 4752"):
        check_queued(over, limits)


@pytest.mark.parametrize(
    ("key", "override", "label"),
    [
        pytest.param("uploads/Apple Braeburn/r_1_100.jpg", None, "Apple Braeburn", id="folder"),
        pytest.param("uploads/inbox/a.jpg", "Lime", "Lime", id="override"),
        pytest.param("uploads/Ａpple/a.jpg", None, "Apple", id="nfkc-fullwidth"),
        pytest.param("uploads/  Kiwi /a.jpg", None, "Kiwi", id="trimmed"),
        pytest.param("uploads/Pomme/sub/dir/a.jpg", None, "Pomme", id="nested"),
    ],
)
def test_labels(key: str, override: str | None, label: str) -> None:
    assert label_from_key(key, uploads_prefix=UPLOADS, override=override) == label


@pytest.mark.parametrize(
    ("key", "match"),
    [
        pytest.param("uploads/a.jpg", "expected uploads/<label>/<file>", id="no-label"),
        pytest.param("other/Apple/a.jpg", "expected a key under 'uploads/'", id="outside"),
        pytest.param("uploads/../etc/passwd", "no '.' or '..' path segment", id="traversal"),
        pytest.param("uploads/Apple/../../x.jpg", "no '.' or '..' path segment", id="deep-traversal"),
        pytest.param("uploads/Ap\x00ple/a.jpg", "without control characters", id="nul"),
        pytest.param("uploads/Apple//a.jpg", "expected uploads/<label>/<file>", id="empty-segment"),
        pytest.param(
            "uploads/" + "L" * 65 + "/a.jpg", f"at most {MAX_LABEL_CHARS} characters", id="long-label"
        ),
        pytest.param("uploads/Apple/" + "x" * 1100, "at most 1024 bytes", id="long-key"),
        pytest.param("uploads/a\u2024\u2024b/x.jpg", "without '/', '\\\\' or '..'", id="one-dot-leaders"),
        pytest.param("uploads/\uff0e\uff0e/x.jpg", "without '/', '\\\\' or '..'", id="fullwidth-dots"),
        pytest.param("uploads/a\uff0fb/x.jpg", "without '/', '\\\\' or '..'", id="fullwidth-solidus"),
        pytest.param("uploads/a\uff3cb/x.jpg", "without '/', '\\\\' or '..'", id="fullwidth-backslash"),
        pytest.param("uploads/Apple\u200bRed/x.jpg", "U\\+200B is invisible", id="zero-width-space"),
        pytest.param(
            "uploads/Lime\u202egnarO/x.jpg", "U\\+202E is invisible or reorders", id="bidi-override"
        ),
        pytest.param("uploads/Kiwi\u00ad/x.jpg", "U\\+00AD is invisible", id="soft-hyphen"),
    ],
)
def test_unsafe_keys_are_bad_keys(key: str, match: str) -> None:
    with pytest.raises(BadKeyError, match=match):
        label_from_key(key, uploads_prefix=UPLOADS)


@pytest.mark.parametrize(
    "label",
    [
        pytest.param("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", id="persian-zwnj"),
        pytest.param("\u0936\u094d\u200d\u0930\u0940", id="indic-zwj"),
        pytest.param("\U0001f468\u200d\U0001f469\u200d\U0001f467", id="emoji-zwj-sequence"),
        pytest.param(
            "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f", id="emoji-tags"
        ),
        pytest.param("\U0001fae8 Kiwi", id="emoji-newer-than-python"),
        pytest.param("\u308a\u3093\u3054", id="japanese"),
    ],
)
def test_real_names_in_any_script_are_labels(label: str) -> None:
    assert sanitize_label(label) == label


def test_labels_that_collide_after_normalisation_are_one_label() -> None:
    # Width, compatibility and composition variants of one name are the same class, whatever the app sent.
    variants = ["Apple Red", "\uff21\uff50\uff50\uff4c\uff45 Red", "Apple\u00a0Red", "  Apple Red  "]
    assert {label_from_key(f"uploads/{v}/a.jpg", uploads_prefix=UPLOADS) for v in variants} == {"Apple Red"}
    assert sanitize_label("Pe\u0302che") == sanitize_label("P\u00eache") == "P\u00eache"


def test_confusables_from_another_script_stay_a_label_of_their_own() -> None:
    # A Cyrillic "А" makes another string, not a path trick: it is kept apart, never merged into "Apple".
    assert sanitize_label("\u0410pple") == "\u0410pple"
    assert sanitize_label("\u0410pple") != sanitize_label("Apple")


def test_bad_key_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="label"):
        sanitize_label("")


VERSION = "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"  # the shape of S3's version ids


def _assert_inside(target: str, folder: str) -> None:
    """`target` stays under `folder`, has no path trick in any segment and fits S3 with its sidecar suffix."""
    segments = target[len(folder) :].split("/")
    assert target.startswith(folder)
    assert not {".", ".."} & set(segments)
    assert "" not in segments
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in target)
    assert len(sidecar_key(target).encode()) <= MAX_KEY_BYTES
    assert not target.endswith(SIDECAR_SUFFIX)  # a quarantined object is never taken for a sidecar


@pytest.mark.parametrize(
    "key",
    [
        "uploads/../../etc/passwd",
        "uploads/./x",
        "../x",
        "uploads//x",
        "uploads/a\x00b/\x1b[31m.jpg",
        "uploads/" + "é" * 900,
        "uploads/Apple/x.jpg.reason.json",
        "uploads/Apple/\ud800.jpg",
    ],
)
@pytest.mark.parametrize(
    "version_id",
    [
        pytest.param(VERSION, id="s3-version"),
        pytest.param(None, id="unversioned"),
        pytest.param("null", id="null"),
        pytest.param("..", id="dot-dot"),
        pytest.param("a/../b", id="traversal"),
        pytest.param("v.reason.json", id="sidecar-suffix"),
        pytest.param("x" * 2000, id="long"),
    ],
)
def test_quarantine_keys_never_escape_their_prefix(key: str, version_id: str | None) -> None:
    target = quarantine_key(Reason.BAD_KEY, key, version_id=version_id, quarantine_prefix="quarantine/")
    _assert_inside(target, "quarantine/bad_key/")


# Any text, lone surrogates included (S3 keys never hold one, a hostile message may), and S3's own version ids.
_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=1200)
_VERSIONS = st.none() | st.just("null") | st.from_regex(r"[A-Za-z0-9._+-]{32}", fullmatch=True) | _ANY_TEXT


@settings(max_examples=300, deadline=None)
@given(
    key=_ANY_TEXT,
    versions=st.lists(_VERSIONS, min_size=2, max_size=2),
    reason=st.sampled_from(Reason),
    prefix=st.sampled_from(["quarantine/", "q/", "tenants/acme/quarantine/"]),
)
def test_quarantine_keys_stay_inside_and_differ_by_version(
    key: str, versions: list[str | None], reason: Reason, prefix: str
) -> None:
    first, second = (quarantine_key(reason, key, version_id=v, quarantine_prefix=prefix) for v in versions)

    _assert_inside(first, f"{prefix}{reason.value}/")
    _assert_inside(second, f"{prefix}{reason.value}/")
    # one place per object version: an unversioned object's version is S3's "null"
    one, other = (v or "null" for v in versions)
    assert (first == second) is (one == other)


def test_safe_keys_keep_their_name_in_quarantine_with_their_version() -> None:
    key = "uploads/Apple Braeburn/r_1.jpg"
    target = quarantine_key(Reason.TRUNCATED, key, version_id=VERSION, quarantine_prefix="quarantine/")
    unversioned = quarantine_key(Reason.TRUNCATED, key, version_id=None, quarantine_prefix="quarantine/")

    assert target == f"quarantine/truncated/uploads/Apple Braeburn/r_1.jpg/{VERSION}"
    assert sidecar_key(target) == f"quarantine/truncated/uploads/Apple Braeburn/r_1.jpg/{VERSION}.reason.json"
    assert unversioned == "quarantine/truncated/uploads/Apple Braeburn/r_1.jpg/null"


def test_version_ids_are_one_segment_that_never_looks_like_a_sidecar() -> None:
    def target(version_id: str) -> str:
        return quarantine_key(
            Reason.CORRUPT, "uploads/A/x.jpg", version_id=version_id, quarantine_prefix="q/"
        )

    assert target("a/b") == "q/corrupt/uploads/A/x.jpg/a%2Fb"
    assert target("v1.reason.json") == "q/corrupt/uploads/A/x.jpg/v1%2Ereason%2Ejson"
    assert target("..") == "q/corrupt/uploads/A/x.jpg/%2E%2E"
    long = target("x" * 2000)
    assert long.startswith("q/corrupt/uploads/A/x.jpg/" + "x" * 45 + "…")
    assert long != target("x" * 2001)


def test_a_sidecar_names_the_decoders_error_type_when_there_was_one() -> None:
    fields: dict[str, Any] = {
        "reason": Reason.DECODE_FAILED,
        "detail": "broken EXIF",
        "original_key": "uploads/A/x.jpg",
        "version_id": VERSION,
        "etag": '"e"',
        "size": 839,
        "sha256": "a" * 64,
        "stage": "featurize",
    }

    written = json.loads(QuarantineSidecar(**fields, error_type="TypeError").to_json())
    without = json.loads(QuarantineSidecar(**fields).to_json())

    assert (written["error_type"], written["reason"]) == ("TypeError", "decode_failed")
    assert without["error_type"] is None


def test_settings_from_env_parse_types_and_formats() -> None:
    settings = Settings.from_env(
        {
            "POMONA_MAX_BYTES": "1024",
            "POMONA_ALLOWED_FORMATS": "jpeg, png",
            "POMONA_GAIN": "2.5",
            "POMONA_N_COMPONENTS": "8",
        }
    )
    assert settings.max_bytes == 1024
    assert settings.allowed_formats == frozenset({"JPEG", "PNG"})
    assert settings.gain == 2.5
    assert settings.n_components == 8
    assert Settings.from_env(settings.to_env()) == settings


def test_settings_errors_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="POMONA_MAX_BYTES: expected an integer, got 'lots'"):
        Settings.from_env({"POMONA_MAX_BYTES": "lots"})


def test_settings_keep_the_latest_merge_state_at_least() -> None:
    with pytest.raises(
        SettingsError, match=r"POMONA_KEEP_FULL_VERSIONS: expected at least 1 \(the latest .*, got 0"
    ):
        Settings.from_env({"POMONA_KEEP_FULL_VERSIONS": "0"})


def test_settings_precision_is_auto_unless_one_is_asked_for() -> None:
    # auto: the committed lineage's, or a new lineage's choice (`pomona.ml.backends.choose_model`)
    assert (Settings.from_env({}).backend, Settings.from_env({}).precision) == ("auto", "auto")
    assert Settings.from_env({"POMONA_PRECISION": "bf16"}).precision == "bf16"
    with pytest.raises(
        SettingsError, match=r"POMONA_PRECISION: expected one of \['f32', 'bf16', 'auto'\], got 'fp16'"
    ):
        Settings.from_env({"POMONA_PRECISION": "fp16"})


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("1m", 60), ("2h", 7200)])
def test_local_up_schedule_intervals(text: str, seconds: int) -> None:
    from pomona.local.up import parse_interval

    assert parse_interval(text).total_seconds() == seconds


def test_local_up_schedule_rejects_other_forms() -> None:
    from pomona.local.up import parse_interval

    with pytest.raises(SettingsError, match="expected a number and s, m or h such as 1m, got '1 day'"):
        parse_interval("1 day")
