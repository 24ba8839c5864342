"""Ingestion end to end on the moto server: upload → S3 notification → events queue → handler → queue or quarantine."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from lambda_output import Emitted

from pomona.core.contract import ImageMessage, Reason, quarantine_key, sidecar_key
from pomona.core.settings import Settings
from pomona.ingest import handler
from pomona.local.poller import EventSourcePoller, LambdaContext
from pomona.testing.samples import bad_uploads, fruit_image


def _poller(settings: Settings, **kwargs: Any) -> EventSourcePoller:
    return EventSourcePoller(settings.events_queue_url, handler.lambda_handler, **kwargs)


def _images(settings: Settings) -> list[ImageMessage]:
    sqs = boto3.client("sqs")
    messages: list[ImageMessage] = []
    while batch := sqs.receive_message(QueueUrl=settings.images_queue_url, MaxNumberOfMessages=10).get(
        "Messages"
    ):
        messages += [ImageMessage.from_json(m["Body"]) for m in batch]
    return messages


def _upload(settings: Settings, key: str, body: bytes, **extra: Any) -> str:
    return str(
        boto3.client("s3").put_object(Bucket=settings.bucket, Key=key, Body=body, **extra)["VersionId"]
    )


def test_accepted_upload_is_queued_once_with_the_contract(ingest: Settings) -> None:
    # GIVEN a real JPEG uploaded under its label, as the app does
    body = fruit_image("Apple Braeburn", 1)
    version = _upload(ingest, "uploads/Apple Braeburn/r_1_100.jpg", body, ContentType="image/jpeg")

    # WHEN the notifications flow through the poller into the handler
    stats = _poller(ingest).drain()

    # THEN exactly one message, matching the contract, is on the images queue
    (message,) = _images(ingest)
    assert stats.failed == 0
    assert message.key == "uploads/Apple Braeburn/r_1_100.jpg"
    assert message.label == "Apple Braeburn"
    assert message.version_id == version
    assert message.format == "JPEG"
    assert (message.width, message.height) == (100, 100)
    assert message.size == len(body)
    import hashlib

    assert message.sha256 == hashlib.sha256(body).hexdigest()


def test_metadata_label_overrides_the_folder(ingest: Settings) -> None:
    _upload(ingest, "uploads/inbox/photo.png", fruit_image("Lime", 2, fmt="PNG"), Metadata={"label": "Lime"})
    _poller(ingest).drain()
    (message,) = _images(ingest)
    assert message.label == "Lime"
    assert message.format == "PNG"


@pytest.mark.parametrize(
    ("name", "body", "reason"), [pytest.param(*case, id=case[0]) for case in bad_uploads()]
)
def test_bad_upload_is_quarantined_with_a_sidecar_and_kept_in_versions(
    ingest: Settings, name: str, body: bytes, reason: Reason
) -> None:
    # GIVEN a bad upload
    key = f"uploads/Bad/{name}"
    version = _upload(ingest, key, body)

    # WHEN it is ingested
    _poller(ingest).drain()

    # THEN it sits in quarantine with a sidecar, left uploads/, and its bytes are still a version of the key
    s3 = boto3.client("s3")
    target = quarantine_key(reason, key, version_id=version, quarantine_prefix=ingest.quarantine_prefix)
    assert s3.get_object(Bucket=ingest.bucket, Key=target)["Body"].read() == body
    sidecar = json.loads(s3.get_object(Bucket=ingest.bucket, Key=sidecar_key(target))["Body"].read())
    assert sidecar["reason"] == reason.value
    assert sidecar["original_key"] == key
    assert sidecar["version_id"] == version
    assert sidecar["detail"]
    assert s3.list_objects_v2(Bucket=ingest.bucket, Prefix=key).get("KeyCount") == 0
    versions = s3.list_object_versions(Bucket=ingest.bucket, Prefix=key)["Versions"]
    assert [v["VersionId"] for v in versions] == [version]
    assert _images(ingest) == []


def test_two_bad_versions_of_one_key_keep_both_copies_and_sidecars(ingest: Settings) -> None:
    # GIVEN a bad upload, ingested, and then another bad upload of the same key
    key = "uploads/Bad/photo.jpg"
    bodies = [b"not an image, the first", b"not an image, the second"]
    first = _upload(ingest, key, bodies[0])
    _poller(ingest).drain()
    second = _upload(ingest, key, bodies[1])

    # WHEN the second is ingested too
    stats = _poller(ingest).drain()

    # THEN each version has its own copy and its own sidecar naming it: neither overwrote the other
    s3 = boto3.client("s3")
    assert stats.failed == 0
    for version, body in zip([first, second], bodies, strict=True):
        target = quarantine_key(
            Reason.NOT_AN_IMAGE, key, version_id=version, quarantine_prefix=ingest.quarantine_prefix
        )
        assert s3.get_object(Bucket=ingest.bucket, Key=target)["Body"].read() == body
        sidecar = json.loads(s3.get_object(Bucket=ingest.bucket, Key=sidecar_key(target))["Body"].read())
        assert (sidecar["original_key"], sidecar["version_id"]) == (key, version)
    assert len(_quarantined(ingest)) == 4
    # ... and both stay versions of the key, out of uploads/
    versions = s3.list_object_versions(Bucket=ingest.bucket, Prefix=key)["Versions"]
    assert [v["VersionId"] for v in versions] == [second, first]
    assert s3.list_objects_v2(Bucket=ingest.bucket, Prefix=key).get("KeyCount") == 0
    assert _images(ingest) == []


_JPEG = fruit_image("Apple Red", 13)


@pytest.mark.parametrize(
    ("first", "newer", "reason", "if_match"),
    [
        pytest.param(
            (b"not an image at all", None),
            (_JPEG, "image/jpeg"),
            Reason.NOT_AN_IMAGE,
            True,
            id="other-bytes",  # S3 refuses the conditional delete: no marker at all
        ),
        pytest.param(
            (_JPEG, "image/png"),
            (_JPEG, "image/jpeg"),
            Reason.FORMAT_MISMATCH,
            True,
            id="same-bytes",  # the same ETag passes If-Match: the marker is withdrawn
        ),
        pytest.param(
            (b"not an image at all", None),
            (_JPEG, "image/jpeg"),
            Reason.NOT_AN_IMAGE,
            False,
            id="if-match-ignored",  # a store without conditional deletes: the marker is withdrawn
        ),
    ],
)
def test_a_newer_upload_landing_before_the_delete_stays_current_and_is_ingested_by_its_own_event(
    ingest: Settings,
    emitted: Emitted,
    first: tuple[bytes, str | None],
    newer: tuple[bytes, str | None],
    reason: Reason,
    if_match: bool,
) -> None:
    # GIVEN a bad upload, and a good upload of the same key landing while ingestion quarantines the first: after
    # its HEAD, GET and validation, right before its DeleteObject
    key = "uploads/Apple Red/race.jpg"
    checked = _upload(ingest, key, first[0], **({"ContentType": first[1]} if first[1] else {}))
    landed: list[str] = []

    def upload_the_newer_one(params: dict[str, Any], **_: Any) -> None:
        if "VersionId" in params:  # the withdrawal of a marker, by its version id
            return
        if not landed:
            landed.append(_upload(ingest, key, newer[0], ContentType=newer[1]))
        if not if_match:
            params.pop("IfMatch", None)

    handler._ingestor().s3.meta.events.register("provide-client-params.s3.DeleteObject", upload_the_newer_one)

    # WHEN the notifications are handled: the first upload's, then the newer one's
    stats = _poller(ingest).drain()

    # THEN the first is quarantined with its sidecar, but the newer upload was never hidden by a delete marker:
    # it is the key's current version, and its own event queued it
    (newer_version,) = landed
    s3 = boto3.client("s3")
    assert stats.failed == 0
    target = quarantine_key(reason, key, version_id=checked, quarantine_prefix=ingest.quarantine_prefix)
    sidecar = json.loads(s3.get_object(Bucket=ingest.bucket, Key=sidecar_key(target))["Body"].read())
    assert (sidecar["reason"], sidecar["version_id"]) == (reason.value, checked)
    assert s3.head_object(Bucket=ingest.bucket, Key=key)["VersionId"] == newer_version
    versions = s3.list_object_versions(Bucket=ingest.bucket, Prefix=key)
    assert [v["VersionId"] for v in versions["Versions"]] == [newer_version, checked]
    assert versions.get("DeleteMarkers", []) == []
    assert [(m.key, m.version_id) for m in _images(ingest)] == [(key, newer_version)]
    assert (emitted.count("ImagesRejected"), emitted.count("ImagesAccepted")) == (1, 1)
    assert emitted.count("ImagesGone") == 0
    # ... by the way the test means: S3 refused the marker, or ingestion withdrew it
    withdrawn = emitted.logs("Delete marker withdrawn from a newer upload")
    refused = emitted.logs("Quarantined upload no longer current; left as it is")
    if first[0] == newer[0] or not if_match:
        ((log,), []) = (withdrawn, refused)
        assert (log.version_id, log.newer_version_id) == (checked, newer_version)  # type: ignore[attr-defined]
    else:
        ([], (log,)) = (withdrawn, refused)
        assert (log.version_id, log.error_code) == (checked, "PreconditionFailed")  # type: ignore[attr-defined]


def test_unsafe_key_is_quarantined_as_bad_key(ingest: Settings) -> None:
    version = _upload(ingest, "uploads/no-label.jpg", fruit_image("Plum", 3))
    _poller(ingest).drain()
    s3 = boto3.client("s3")
    target = quarantine_key(
        Reason.BAD_KEY, "uploads/no-label.jpg", version_id=version, quarantine_prefix=ingest.quarantine_prefix
    )
    assert s3.head_object(Bucket=ingest.bucket, Key=target)["ContentLength"] > 0
    assert _images(ingest) == []


def test_oversized_upload_is_rejected_from_head_alone(
    ingest: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a byte limit below the upload's size
    monkeypatch.setenv("POMONA_MAX_BYTES", "100")
    key = "uploads/Orange/big.jpg"
    version = _upload(ingest, key, fruit_image("Orange", 4))

    # WHEN it is ingested
    _poller(ingest).drain()

    # THEN it is quarantined as too large, with no sha256 since it was never downloaded
    s3 = boto3.client("s3")
    target = quarantine_key(
        Reason.TOO_LARGE_BYTES, key, version_id=version, quarantine_prefix=ingest.quarantine_prefix
    )
    sidecar = json.loads(s3.get_object(Bucket=ingest.bucket, Key=sidecar_key(target))["Body"].read())
    assert sidecar["sha256"] is None
    assert sidecar["detail"].startswith("expected at most 100 bytes, got ")
    # ... by its sidecar alone: its bytes were not copied, and stay a version of the upload's key
    listed = s3.list_objects_v2(Bucket=ingest.bucket, Prefix=target)["Contents"]
    assert [item["Key"] for item in listed] == [sidecar_key(target)]
    versions = s3.list_object_versions(Bucket=ingest.bucket, Prefix=key)
    assert [v["VersionId"] for v in versions["Versions"]] == [sidecar["version_id"]]


def test_duplicate_direct_event_queues_one_message(
    ingest: Settings, s3_event_factory: Callable[..., dict[str, Any]]
) -> None:
    # GIVEN an upload whose notification S3 delivers twice (at least once delivery)
    key = "uploads/Pear/p 1+2.jpg"  # a space and a plus: keys arrive URL-encoded
    version = _upload(ingest, key, fruit_image("Pear", 5))
    boto3.client("sqs").purge_queue(QueueUrl=ingest.events_queue_url)
    event = s3_event_factory(bucket=ingest.bucket, key=key, version_id=version)

    # WHEN the handler sees the same event twice
    first = handler.lambda_handler(event, LambdaContext())
    second = handler.lambda_handler(event, LambdaContext())

    # THEN one message
    assert first == second == {"processed": 1}
    (message,) = _images(ingest)
    assert message.key == key


def test_test_event_and_sqs_fixture_shape_are_handled(
    ingest: Settings, load_event: Callable[[str], dict[str, Any]]
) -> None:
    # GIVEN the SQS-wrapped fixture (one real notification, one s3:TestEvent) pointed at an existing object
    key = "uploads/Apple Braeburn/r_1_100.jpg"
    version = _upload(ingest, key, fruit_image("Apple Braeburn", 6))
    event = load_event("sqs_s3_put.json")
    body = json.loads(event["Records"][0]["body"])
    body["Records"][0]["s3"]["bucket"]["name"] = ingest.bucket
    body["Records"][0]["s3"]["object"]["versionId"] = version
    event["Records"][0]["body"] = json.dumps(body)

    # WHEN the handler gets it
    response = handler.lambda_handler(event, LambdaContext())

    # THEN no record failed, and the test event queued nothing
    assert response == {"batchItemFailures": []}
    assert [m.key for m in _images(ingest)] == [key]


def test_poison_record_fails_alone_and_reaches_the_dlq(ingest: Settings) -> None:
    # GIVEN a good upload and a record the handler cannot parse on the events queue
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=ingest.events_queue_url, MessageBody="{not json")
    _upload(ingest, "uploads/Lime/l.jpg", fruit_image("Lime", 7))
    events_dlq = sqs.get_queue_url(QueueName=ingest.events_queue_url.rsplit("/", 1)[1] + "-dlq")["QueueUrl"]

    # WHEN the poller keeps retrying failures at once, past the redrive limit (3 receives)
    poller = _poller(ingest, retry_after_s=0)
    stats = poller.drain(idle_polls=1)

    # THEN the good image is queued, the poison record failed 3 times and now sits in the DLQ
    assert [m.key for m in _images(ingest)] == ["uploads/Lime/l.jpg"]
    assert stats.failed == 3
    (dead,) = sqs.receive_message(QueueUrl=events_dlq, MaxNumberOfMessages=10)["Messages"]
    assert dead["Body"] == "{not json"


def _quarantined(settings: Settings) -> list[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket=settings.bucket, Prefix=settings.quarantine_prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


@pytest.mark.parametrize(
    "missing",
    [
        pytest.param("never-uploaded", id="never-uploaded"),
        pytest.param("version-deleted", id="version-deleted-for-good"),
    ],
)
def test_a_missing_object_is_counted_gone_and_is_no_error(
    ingest: Settings,
    emitted: Emitted,
    s3_event_factory: Callable[..., dict[str, Any]],
    missing: str,
) -> None:
    # GIVEN a notification for an object that is not there: never uploaded, or its version deleted for good
    key = "uploads/Lime/missing.jpg"
    version = "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"
    if missing == "version-deleted":
        version = _upload(ingest, key, fruit_image("Lime", 9))
        boto3.client("s3").delete_object(Bucket=ingest.bucket, Key=key, VersionId=version)

    # WHEN S3 notifies the Lambda
    response = handler.lambda_handler(
        s3_event_factory(bucket=ingest.bucket, key=key, version_id=version), LambdaContext()
    )

    # THEN it is done with, counted as gone and logged: nothing queued, quarantined or failed
    assert response == {"processed": 1}
    assert emitted.count("ImagesGone") == 1
    assert emitted.count("ImagesFailed") == 0
    (log,) = emitted.logs("Object gone before ingestion")
    assert (log.key, log.version_id, log.delete_marker) == (key, version, False)  # type: ignore[attr-defined]
    assert _images(ingest) == []
    assert _quarantined(ingest) == []


def test_an_upload_deleted_by_its_owner_before_ingestion_is_skipped(
    ingest: Settings, emitted: Emitted
) -> None:
    # GIVEN an upload its owner deleted before the Lambda got to it: a delete marker is its key's current version
    key = "uploads/Plum/oops.jpg"
    version = _upload(ingest, key, fruit_image("Plum", 10))
    s3 = boto3.client("s3")
    s3.delete_object(Bucket=ingest.bucket, Key=key)

    # WHEN its notification is handled (its version still exists: a HEAD of that version would find it)
    stats = _poller(ingest).drain()

    # THEN it is not queued, nor quarantined; it is counted gone, and its bytes stay a version of the key
    assert stats.failed == 0
    assert _images(ingest) == []
    assert _quarantined(ingest) == []
    assert emitted.count("ImagesGone") == 1
    (log,) = emitted.logs("Object gone before ingestion")
    assert (log.key, log.version_id, log.delete_marker) == (key, version, True)  # type: ignore[attr-defined]
    versions = s3.list_object_versions(Bucket=ingest.bucket, Prefix=key)
    assert [v["VersionId"] for v in versions["Versions"]] == [version]
    assert [m["IsLatest"] for m in versions["DeleteMarkers"]] == [True]


@pytest.mark.parametrize(
    "first_body",
    [
        pytest.param(fruit_image("Apple Red", 11), id="older-is-an-image"),
        pytest.param(b"not an image at all", id="older-is-not-an-image"),
    ],
)
def test_an_upload_replaced_by_a_newer_version_is_skipped_for_the_newer_one(
    ingest: Settings, emitted: Emitted, first_body: bytes
) -> None:
    # GIVEN a key uploaded twice before ingestion (moto's events carry no version id, only the ETag)
    key = "uploads/Unknown/apple.jpg"
    first = _upload(ingest, key, first_body)
    second = _upload(ingest, key, fruit_image("Apple Red", 12), ContentType="image/jpeg")

    # WHEN both notifications are handled
    stats = _poller(ingest).drain()

    # THEN only the newer version is queued; the older one is counted superseded, neither queued nor
    # quarantined (it is no longer what the key holds), and both stay versions of the key
    assert stats.failed == 0
    assert [(m.key, m.version_id) for m in _images(ingest)] == [(key, second)]
    assert _quarantined(ingest) == []
    assert emitted.count("ImagesSuperseded") == 1
    assert emitted.count("ImagesAccepted") == 1
    (log,) = emitted.logs("Upload superseded before ingestion")
    assert (log.version_id, log.current_version_id) == (first, second)  # type: ignore[attr-defined]
    s3 = boto3.client("s3")
    versions = s3.list_object_versions(Bucket=ingest.bucket, Prefix=key)["Versions"]
    assert sorted(v["VersionId"] for v in versions) == sorted([first, second])
    assert s3.head_object(Bucket=ingest.bucket, Key=key)["VersionId"] == second
