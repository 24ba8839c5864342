"""One upload, start to end: HEAD, GET, validate, then queue it or quarantine it. The I/O around `checks`.

Every event ends one of four ways, each counted by a metric:

- `accepted` (`ImagesAccepted`): queued on the images queue.
- `quarantined` (`ImagesRejected` by `Reason`): copied to `quarantine/<reason>/<key>/<version id>` with a JSON
  sidecar beside it, and hidden from `uploads/` by a delete marker (the bucket is versioned, so the bytes stay)
  unless a newer upload of the key came meanwhile: ingestion never hides a version it did not check.
- `gone` (`ImagesGone`): the key has no current object when we get to it: its owner deleted it (a delete marker
  is current) or it never was there. Nothing to do.
- `superseded` (`ImagesSuperseded`): the key's current version is a newer one than the event names. The newer
  upload has an event of its own, which ingests it; the older bytes stay a noncurrent version.

Anything else raises and is retried by the platform, then dead-lettered. A failing S3 or SQS call counts in
`ImagesFailed` by `ErrorCode` first: a 403 is an IAM, bucket policy or KMS mistake to fix, never "gone".
Nothing is remembered by the idempotency store when we raise, so once the cause is fixed the retry (or a redrive
from the DLQ) ingests the upload.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import boto3
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyPersistenceLayerError
from botocore.exceptions import BotoCoreError, ClientError

from pomona.core.aws import RETRIES, error_code
from pomona.core.contract import (
    ImageMessage,
    QuarantineSidecar,
    Reason,
    label_from_key,
    utc_now,
)
from pomona.core.errors import BadKeyError
from pomona.core.quarantine import quarantine_object
from pomona.core.settings import Settings
from pomona.validation.checks import ImageVerdict, Limits, validate_image

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aws_lambda_powertools import Metrics
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

Outcome = Literal["accepted", "quarantined", "gone", "superseded"]
# How long a finished record keeps a repeated event from queueing the image again.
IDEMPOTENCY_TTL_S = 7 * 24 * 3600
# What S3 answers for a key or version that is not there. A HEAD response has no body, so botocore names its
# error by the status alone.
_MISSING = frozenset({"404", "NoSuchKey", "NoSuchVersion", "NotFound"})
# `ErrorCode` for a bodiless (HEAD) error; any 403 there is a denial (IAM, bucket policy, KMS, signature).
_STATUS_CODES = {
    400: "BadRequest",
    403: "AccessDenied",
    404: "NotFound",
    405: "MethodNotAllowed",
    412: "PreconditionFailed",
    500: "InternalError",
    503: "SlowDown",
}


@dataclass(frozen=True, kw_only=True)
class ObjectRef:
    """An object named by an S3 notification."""

    bucket: str
    key: str
    version_id: str | None
    etag: str | None = None


class Ingestor:
    """Ingests uploads with one set of clients; `ingest` is idempotent per (bucket, key, version id)."""

    def __init__(
        self,
        *,
        settings: Settings,
        s3: S3Client,
        sqs: SQSClient,
        persistence: DynamoDBPersistenceLayer,
        metrics: Metrics | None = None,
        logger: logging.Logger | Any = None,
    ) -> None:
        self.settings = settings
        self.limits = Limits.from_settings(settings)
        self.s3 = s3
        self.sqs = sqs
        self.metrics = metrics
        self.log = logger or logging.getLogger(__name__)
        self.idempotency = IdempotencyConfig(
            event_key_jmespath="[bucket, key, version_id]",
            expires_after_seconds=IDEMPOTENCY_TTL_S,
            raise_on_no_idempotency_key=True,
        )
        self._ingest_once = idempotent_function(
            data_keyword_argument="ref", config=self.idempotency, persistence_store=persistence
        )(self._ingest)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Ingestor:
        settings = Settings.from_env()
        return cls(
            settings=settings,
            s3=boto3.client("s3", config=RETRIES),
            sqs=boto3.client("sqs", config=RETRIES),
            persistence=DynamoDBPersistenceLayer(table_name=settings.idempotency_table, boto_config=RETRIES),
            **kwargs,
        )

    def ingest(self, ref: ObjectRef) -> dict[str, Any]:
        """Queue or quarantine one object, once; a repeated event returns the first outcome.

        A failing AWS call (S3, SQS, or DynamoDB under the idempotency store) is logged and counted in
        `ImagesFailed` by its error code, then raised again.
        """
        version_id = ref.version_id
        try:
            version_id = version_id or self._version_by_etag(ref)
            outcome: dict[str, Any] = self._ingest_once(
                ref={"bucket": ref.bucket, "key": ref.key, "version_id": version_id, "etag": ref.etag}
            )
        except (ClientError, BotoCoreError, IdempotencyPersistenceLayerError) as err:
            cause = err.__cause__ if isinstance(err, IdempotencyPersistenceLayerError) else err
            code = failure_code(cause)
            self.log.error(
                "Ingestion failed",
                extra={
                    "key": ref.key,
                    "version_id": version_id,
                    "error_code": code,
                    "operation": getattr(cause, "operation_name", None),
                    "error": str(cause),
                },
            )
            self._count_by("ImagesFailed", "ErrorCode", code)
            raise
        return outcome

    def _version_by_etag(self, ref: ObjectRef) -> str | None:
        """The version an event without a version id names (moto's events carry none): the one with its ETag."""
        if not ref.etag:
            return None
        try:  # usually the current version, found with one HEAD; else the object was replaced since
            head = self.s3.head_object(Bucket=ref.bucket, Key=ref.key)
            if head["ETag"].strip('"') == ref.etag.strip('"'):
                return head.get("VersionId")
        except ClientError as err:
            if _status(err) != 404:
                raise
        pages = self.s3.get_paginator("list_object_versions").paginate(Bucket=ref.bucket, Prefix=ref.key)
        for page in pages:
            for version in page.get("Versions", []):
                if version["Key"] == ref.key and version["ETag"].strip('"') == ref.etag.strip('"'):
                    return version["VersionId"]
        return None

    def _ingest(self, ref: dict[str, Any]) -> dict[str, Any]:
        bucket, key, version_id = ref["bucket"], ref["key"], ref["version_id"]
        try:  # the key's current version, not the event's: a deleted or replaced upload is not ingested
            head = self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if error_code(err) not in _MISSING:
                raise
            deleted = _header(err, "x-amz-delete-marker") == "true"
            return self._gone(key, version_id, deleted=deleted)
        if not is_current_version(version_id, ref.get("etag"), head):
            # A newer upload of the key replaced this one. It has an ObjectCreated event of its own, which
            # ingests it, so skipping this one loses nothing; its bytes stay a noncurrent version.
            self.log.info(
                "Upload superseded before ingestion",
                extra={"key": key, "version_id": version_id, "current_version_id": head.get("VersionId")},
            )
            self._count("ImagesSuperseded", MetricUnit.Count, 1)
            return {"outcome": "superseded", "key": key}
        version_id = head.get("VersionId") or version_id
        size = head["ContentLength"]
        source = {"bucket": bucket, "key": key, "version_id": version_id, "size": size, "etag": head["ETag"]}

        try:
            label = label_from_key(
                key,
                uploads_prefix=self.settings.uploads_prefix,
                override=head.get("Metadata", {}).get("label"),
            )
        except BadKeyError as err:
            return self._quarantine(source, Reason.BAD_KEY, str(err), sha256=None)

        if size > self.limits.max_bytes:
            detail = f"expected at most {self.limits.max_bytes} bytes, got {size}"
            return self._quarantine(source, Reason.TOO_LARGE_BYTES, detail, sha256=None)

        try:  # that version, even if a newer one lands after the HEAD
            body = self.s3.get_object(Bucket=bucket, Key=key, **_version(version_id))["Body"].read()
        except ClientError as err:
            if error_code(err) not in _MISSING:
                raise
            return self._gone(key, version_id, deleted=False)  # deleted for good between HEAD and GET
        verdict = validate_image(
            body, limits=self.limits, declared_type=head.get("ContentType"), filename=key
        )
        self._count("BytesValidated", MetricUnit.Bytes, len(body))
        if not verdict.accepted:
            assert verdict.reason is not None
            return self._quarantine(source, verdict.reason, verdict.detail, sha256=verdict.sha256)
        return self._queue(source, verdict, label=label, uploaded_at=_iso(head["LastModified"]))

    def _queue(
        self, source: dict[str, Any], verdict: ImageVerdict, *, label: str, uploaded_at: str
    ) -> dict[str, Any]:
        assert verdict.format
        assert verdict.width
        assert verdict.height
        assert verdict.mode
        assert verdict.sha256  # validate_image always digests
        message = ImageMessage(
            bucket=source["bucket"],
            key=source["key"],
            version_id=source["version_id"],
            etag=source["etag"],
            sha256=verdict.sha256,
            size=verdict.size,
            format=verdict.format,
            width=verdict.width,
            height=verdict.height,
            mode=verdict.mode,
            orientation=verdict.orientation,
            label=label,
            uploaded_at=uploaded_at,
            validated_at=utc_now(),
        )
        sent = self.sqs.send_message(QueueUrl=self.settings.images_queue_url, MessageBody=message.to_json())
        self.log.info("Image accepted", extra={"key": message.key, "sha256": message.sha256, "label": label})
        self._count("ImagesAccepted", MetricUnit.Count, 1)
        return {"outcome": "accepted", "key": message.key, "message_id": sent["MessageId"]}

    def _quarantine(
        self, source: dict[str, Any], reason: Reason, detail: str, *, sha256: str | None
    ) -> dict[str, Any]:
        sidecar = QuarantineSidecar(
            reason=reason,
            detail=detail,
            original_key=source["key"],
            version_id=source["version_id"],
            etag=source["etag"],
            size=source["size"],
            sha256=sha256,
            stage="ingest",
        )
        # Copy, sidecar, then retire: a crash in between leaves the original, and the retry redoes it all. An
        # upload over max_bytes is not copied (gigabytes inside a 30 s Lambda): the sidecar names its version,
        # which the bucket keeps as a noncurrent version once the delete marker below hides it.
        target = quarantine_object(
            self.s3,
            sidecar,
            bucket=source["bucket"],
            quarantine_prefix=self.settings.quarantine_prefix,
            copy=reason is not Reason.TOO_LARGE_BYTES,
        )
        self._retire(source)
        self.log.warning(
            "Image quarantined", extra={"key": source["key"], "reason": reason.value, "detail": detail}
        )
        self._count_by("ImagesRejected", "Reason", reason.value)
        return {
            "outcome": "quarantined",
            "key": source["key"],
            "reason": reason.value,
            "quarantine_key": target,
        }

    def _gone(self, key: str, version_id: str | None, *, deleted: bool) -> dict[str, Any]:
        self.log.info(
            "Object gone before ingestion",
            extra={"key": key, "version_id": version_id, "delete_marker": deleted},
        )
        self._count("ImagesGone", MetricUnit.Count, 1)
        return {"outcome": "gone", "key": key}

    def _retire(self, source: Mapping[str, Any]) -> None:
        """Take a quarantined upload out of `uploads/` with a delete marker (its bytes stay a noncurrent version),
        never hiding a version this ingestion did not check.

        The delete is conditional on the current object's ETag (`If-Match`), so S3 puts no marker over a newer
        upload with other bytes: one that lands after our HEAD makes it fail (412), and one the owner deleted
        (404) needs no marker. An ETag names bytes, not a version: a newer upload of the same bytes (or a store
        that ignores `If-Match`) still gets the marker. So the key's versions are listed after it, and when the
        newest object version is not the checked one, our marker (by its own version id: nothing else is ever
        deleted by version) is removed, and the newer upload is current again for its own event to ingest.
        """
        bucket, key, version_id = source["bucket"], source["key"], source["version_id"]
        try:
            deleted = self.s3.delete_object(Bucket=bucket, Key=key, IfMatch=source["etag"])
        except ClientError as err:
            if _status(err) not in {404, 412}:
                raise
            self.log.info(
                "Quarantined upload no longer current; left as it is",
                extra={"key": key, "version_id": version_id, "error_code": failure_code(err)},
            )
            return
        marker = deleted.get("VersionId") if deleted.get("DeleteMarker") else None
        if marker is None:
            return  # an unversioned bucket (never the deployment's): S3 deleted the object itself, no marker
        newest = newest_version(self.s3, bucket, key)
        if newest is not None and newest != version_id:
            self.s3.delete_object(Bucket=bucket, Key=key, VersionId=marker)
            self.log.warning(
                "Delete marker withdrawn from a newer upload",
                extra={"key": key, "version_id": version_id, "newer_version_id": newest, "marker": marker},
            )

    def _count(self, name: str, unit: MetricUnit, value: float) -> None:
        if self.metrics is not None:
            self.metrics.add_metric(name=name, unit=unit, value=value)

    def _count_by(self, name: str, dimension: str, value: str) -> None:
        """One count of `name` by `dimension`, in a metric set of its own so the dimension attaches to no other."""
        if self.metrics is not None:
            with single_metric(
                name=name, unit=MetricUnit.Count, value=1, default_dimensions=self.metrics.default_dimensions
            ) as metric:
                metric.add_dimension(name=dimension, value=value)


def is_current_version(version_id: str | None, etag: str | None, head: Mapping[str, Any]) -> bool:
    """Whether `head`, S3's answer to a HEAD of the key without a version id, is the upload an event names.

    A real version id must be the current one. Without one (an unversioned bucket, whose objects have no id or
    "null", or an event we could not place) the event's ETag, when it has one, must be the current object's.
    """
    if version_id not in {None, "null"}:
        return bool(head.get("VersionId") == version_id)
    return etag is None or str(head.get("ETag", "")).strip('"') == etag.strip('"')


def newest_version(s3: S3Client, bucket: str, key: str) -> str | None:
    """The id of `key`'s newest object version (delete markers aside), or None when it has none.

    S3 lists a key's versions newest first, and `key` before every longer key it prefixes: a page that names another
    key ends the search."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
        versions = [v["VersionId"] for v in page.get("Versions", []) if v["Key"] == key]
        if versions:
            return versions[0]
        listed = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        if any(item["Key"] != key for item in listed):
            return None
    return None


def failure_code(err: BaseException | None) -> str:
    """A low-cardinality name for a failed AWS call: its error code, named from the status for an S3 HEAD."""
    if isinstance(err, ClientError):
        code = error_code(err)
        if code and not code.isdigit():
            return code
        status = _status(err) or int(code or 0)
        return _STATUS_CODES.get(status, f"Http{status}")
    return type(err).__name__  # botocore's own: EndpointConnectionError, ReadTimeoutError, ...


def _version(version_id: str | None) -> dict[str, Any]:
    return {"VersionId": version_id} if version_id else {}


def _header(err: ClientError, name: str) -> str | None:
    return err.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get(name)


def _status(err: ClientError) -> int:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
