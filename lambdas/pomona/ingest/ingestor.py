"""One upload, start to end: HEAD, GET, validate, then queue it or quarantine it. The I/O around `checks`.

Every object ends one of three ways: queued on the images queue, quarantined with a reason (copied under
`quarantine/<reason>/`, a JSON sidecar beside it, the original deleted — the bucket is versioned, so the bytes
stay), or gone (deleted before we got to it: nothing to do). Anything else raises, and the platform retries.
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
from botocore.exceptions import ClientError

from pomona.core.aws import RETRIES, error_code
from pomona.core.contract import (
    ImageMessage,
    QuarantineSidecar,
    Reason,
    label_from_key,
    quarantine_key,
    sidecar_key,
    utc_now,
)
from pomona.core.errors import BadKeyError
from pomona.core.settings import Settings
from pomona.ingest.checks import ImageVerdict, Limits, validate_image

if TYPE_CHECKING:
    from aws_lambda_powertools import Metrics
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

Outcome = Literal["accepted", "quarantined", "gone"]
# How long a finished record keeps a repeated event from queueing the image again.
IDEMPOTENCY_TTL_S = 7 * 24 * 3600


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
        """Queue or quarantine one object, once; a repeated event returns the first outcome."""
        version_id = ref.version_id or self._version_by_etag(ref)
        outcome: dict[str, Any] = self._ingest_once(
            ref={"bucket": ref.bucket, "key": ref.key, "version_id": version_id}
        )
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
        try:
            head = self.s3.head_object(Bucket=bucket, Key=key, **_version(version_id))
        except ClientError as err:
            if _status(err) in {404, 403} and error_code(err) in {"404", "NoSuchKey", "NoSuchVersion", "403"}:
                self.log.info("Object gone before ingestion", extra={"key": key, "version_id": version_id})
                return {"outcome": "gone", "key": key}
            raise
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

        body = self.s3.get_object(Bucket=bucket, Key=key, **_version(version_id))["Body"].read()
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
        target = quarantine_key(reason, source["key"], quarantine_prefix=self.settings.quarantine_prefix)
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
        # Copy, sidecar, then delete: a crash in between leaves the original, and the retry redoes it all. An
        # upload over max_bytes is not copied (gigabytes inside a 30 s Lambda): the sidecar names its version,
        # which the bucket keeps as a noncurrent version once the delete marker below hides it.
        if reason is not Reason.TOO_LARGE_BYTES:
            copy_source: Any = {
                "Bucket": source["bucket"],
                "Key": source["key"],
                **_version(source["version_id"]),
            }
            self.s3.copy(copy_source, source["bucket"], target)
        self.s3.put_object(
            Bucket=source["bucket"],
            Key=sidecar_key(target),
            Body=sidecar.to_json(),
            ContentType="application/json",
        )
        # A delete marker takes the upload out of `uploads/` while its bytes stay versioned; only when it is still
        # the current version, so a newer upload of the same key stays visible.
        if self._current_version(source["bucket"], source["key"]) == source["version_id"]:
            self.s3.delete_object(Bucket=source["bucket"], Key=source["key"])
        self.log.warning(
            "Image quarantined", extra={"key": source["key"], "reason": reason.value, "detail": detail}
        )
        if self.metrics is not None:
            # Its own metric set: the Reason dimension must not attach to ImagesAccepted or BytesValidated.
            with single_metric(
                name="ImagesRejected",
                unit=MetricUnit.Count,
                value=1,
                default_dimensions=self.metrics.default_dimensions,
            ) as rejected:
                rejected.add_dimension(name="Reason", value=reason.value)
        return {
            "outcome": "quarantined",
            "key": source["key"],
            "reason": reason.value,
            "quarantine_key": target,
        }

    def _current_version(self, bucket: str, key: str) -> str | None:
        try:
            return self.s3.head_object(Bucket=bucket, Key=key).get("VersionId")
        except ClientError as err:
            if _status(err) == 404:
                return None
            raise

    def _count(self, name: str, unit: MetricUnit, value: float) -> None:
        if self.metrics is not None:
            self.metrics.add_metric(name=name, unit=unit, value=value)


def _version(version_id: str | None) -> dict[str, Any]:
    return {"VersionId": version_id} if version_id else {}


def _status(err: ClientError) -> int:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
