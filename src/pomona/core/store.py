"""Reading and writing the job's outputs in S3: JSON documents, conditional writes, the run lock, committed batches.

Only boto3 and the standard library, so the CLI can read what the job wrote without numpy or Spark.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import ClientError

from pomona.core.contract import manifest_key, pca_latest_key, pca_prefix
from pomona.core.errors import PomonaError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

# Throttling, 5xx and connection resets are retried with backoff and client-side rate limiting.
RETRIES = Config(retries={"mode": "adaptive", "max_attempts": 8})
LOCK_KEY = "locks/featurize.json"
LOCK_TTL = timedelta(minutes=30)


class ConcurrentRunError(PomonaError, RuntimeError):
    """Another featurization run holds the lock or committed first; this run stops without committing."""


def is_precondition_failed(err: ClientError) -> bool:
    code = err.response.get("Error", {}).get("Code", "")
    return code in {"PreconditionFailed", "ConditionalRequestConflict", "412"}


def is_missing(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code", "") in {"NoSuchKey", "404", "NotFound"}


def get_json(s3: S3Client, bucket: str, key: str) -> tuple[dict[str, Any], str] | None:
    """The document at `key` and its ETag, or None when there is none."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if is_missing(err):
            return None
        raise
    return json.loads(response["Body"].read()), response["ETag"]


def put_json(
    s3: S3Client,
    bucket: str,
    key: str,
    document: dict[str, Any],
    *,
    if_none_match: bool = False,
    if_match: str | None = None,
) -> str:
    """Write `document`; with `if_none_match` or `if_match` the write fails with ClientError instead of clobbering."""
    conditions: dict[str, str] = {}
    if if_none_match:
        conditions["IfNoneMatch"] = "*"
    if if_match is not None:
        conditions["IfMatch"] = if_match
    response = s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode(),
        ContentType="application/json",
        **conditions,  # type: ignore[arg-type]
    )
    return response["ETag"]


# -- the PCA version pointer -------------------------------------------------------------------------------------


def read_latest(s3: S3Client, bucket: str, prefix: str) -> tuple[int, str | None]:
    """The committed PCA version (0 when there is none yet) and the pointer's ETag for a conditional update."""
    found = get_json(s3, bucket, pca_latest_key(prefix))
    if found is None:
        return 0, None
    document, etag = found
    return int(document["version"]), etag


def advance_latest(
    s3: S3Client, bucket: str, prefix: str, *, version: int, etag: str | None, batch_id: str
) -> None:
    """Point LATEST at `version`, only if nobody moved it since we read `etag`: a concurrent run fails cleanly.

    `batch_id` names the batch whose metadata `version` holds: it tells our own write from another run's.
    """
    try:
        put_json(
            s3,
            bucket,
            pca_latest_key(prefix),
            {"version": version},
            if_none_match=etag is None,
            if_match=etag,
        )
    except ClientError as err:
        if is_precondition_failed(err):
            if _committed(s3, bucket, prefix, version=version, batch_id=batch_id):
                return  # our first attempt landed, its response was lost, and botocore's retry met it
            raise ConcurrentRunError(
                f"expected models/pca/LATEST to be unchanged since this run read it, found it moved "
                f"(another run committed first); version {version} is left uncommitted"
            ) from err
        raise


def _committed(s3: S3Client, bucket: str, prefix: str, *, version: int, batch_id: str) -> bool:
    metadata = read_pca_metadata(s3, bucket, prefix, version)
    return read_latest(s3, bucket, prefix)[0] == version and (metadata or {}).get("batch_id") == batch_id


def read_pca_metadata(s3: S3Client, bucket: str, prefix: str, version: int) -> dict[str, Any] | None:
    found = get_json(s3, bucket, pca_prefix(prefix, version) + "metadata.json")
    return None if found is None else found[0]


# -- committed batches -------------------------------------------------------------------------------------------


def committed_batches(s3: S3Client, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every committed batch's manifest, oldest first. Readers trust nothing else."""
    manifests = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}batches/"):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/manifest.json"):
                found = get_json(s3, bucket, item["Key"])
                if found is not None:
                    manifests.append(found[0])
    return sorted(manifests, key=lambda m: str(m["batch_id"]))


def manifest_exists(s3: S3Client, bucket: str, prefix: str, batch_id: str) -> bool:
    return get_json(s3, bucket, manifest_key(prefix, batch_id)) is not None


# -- the run lock ------------------------------------------------------------------------------------------------


@dataclass
class RunLock:
    """A lease in S3 that keeps two featurization runs from working at once; renewed by the run's heartbeat."""

    s3: S3Client
    bucket: str
    key: str = LOCK_KEY
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    etag: str | None = None

    def acquire(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        try:
            self.etag = put_json(self.s3, self.bucket, self.key, self._document(now), if_none_match=True)
            return
        except ClientError as err:
            if not is_precondition_failed(err):
                raise
        found = get_json(self.s3, self.bucket, self.key)
        if found is not None:
            holder, etag = found
            if holder["owner"] == self.owner:  # our write landed, its response was lost, the retry met it
                self.etag = etag
                return
            if datetime.fromisoformat(holder["expires_at"]) > now:
                raise ConcurrentRunError(
                    f"expected no other run, found run {holder['owner']} holding the lock until {holder['expires_at']}"
                )
            log.warning("Taking over an expired run lock", extra={"previous_owner": holder["owner"]})
            try:
                self.etag = put_json(self.s3, self.bucket, self.key, self._document(now), if_match=etag)
                return
            except ClientError as err:
                if not is_precondition_failed(err):
                    raise
        raise ConcurrentRunError("expected to take the run lock, another run took it at the same moment")

    def renew(self, now: datetime | None = None) -> None:
        try:
            self.etag = put_json(
                self.s3, self.bucket, self.key, self._document(now or datetime.now(UTC)), if_match=self.etag
            )
        except ClientError as err:
            # S3 answers a conditional write to a key that is gone with 404: the lock was deleted under us.
            if not (is_precondition_failed(err) or is_missing(err)):
                raise
            found = get_json(self.s3, self.bucket, self.key)
            if found is None or found[0]["owner"] != self.owner:
                raise ConcurrentRunError("expected to still hold the run lock, another run took it") from err
            self.etag = found[1]  # our renewal landed, its response was lost, the retry met it

    def release(self) -> None:
        """Delete the lock if it is still ours: a run that lost it must not free the run that took it over.

        The conditional renewal first makes it ours for a full TTL, so no run can take it over before the delete.
        """
        try:
            self.renew()
        except ConcurrentRunError:
            return
        self.s3.delete_object(Bucket=self.bucket, Key=self.key)

    def _document(self, now: datetime) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "acquired_at": now.isoformat(),
            "expires_at": (now + LOCK_TTL).isoformat(),
        }
