"""The contract between ingestion and featurization: keys, labels, the queue message, settings."""

from __future__ import annotations

import json

import pytest

from pomona.core.contract import (
    MAX_LABEL_CHARS,
    SCHEMA_VERSION,
    ImageMessage,
    Reason,
    label_from_key,
    quarantine_key,
    sanitize_label,
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


@pytest.mark.parametrize(
    "key",
    [
        "uploads/../../etc/passwd",
        "uploads/./x",
        "../x",
        "uploads//x",
        "uploads/a\x00b/\x1b[31m.jpg",
        "uploads/" + "é" * 900,
    ],
)
def test_quarantine_keys_never_escape_their_prefix(key: str) -> None:
    target = quarantine_key(Reason.BAD_KEY, key, quarantine_prefix="quarantine/")
    segments = target.split("/")
    assert target.startswith("quarantine/bad_key/")
    assert not {".", ".."} & set(segments)
    assert "" not in segments
    assert not any(ord(c) < 0x20 for c in target)
    assert len(target.encode()) <= 1024


def test_safe_keys_keep_their_name_in_quarantine() -> None:
    target = quarantine_key(
        Reason.TRUNCATED, "uploads/Apple Braeburn/r_1.jpg", quarantine_prefix="quarantine/"
    )
    assert target == "quarantine/truncated/uploads/Apple Braeburn/r_1.jpg"


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
