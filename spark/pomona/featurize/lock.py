"""The run lock: a lease in S3 that keeps two featurization runs from working at once; and each run's own lease
on its batch's files, which outlives a takeover of the lock so that recovery never deletes a live run's files."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from pomona.core.aws import get_json, is_missing, is_precondition_failed, put_json
from pomona.core.errors import PomonaError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

LOCK_TTL = timedelta(minutes=30)
# A run's lease on its batch outlives its lock: a run that stalls past its lock's TTL, and whose lock is taken
# over, still finds its files where it left them for another TTL.
LEASE_TTL = 2 * LOCK_TTL


class ConcurrentRunError(PomonaError, RuntimeError):
    """Another featurization run holds the lock or committed first; this run stops without committing."""


@dataclass(frozen=True)
class Holder:
    owner: str
    expires_at: datetime


@dataclass(frozen=True)
class Lease:
    """A run's lease on its batch, as read: until when it is held, and the PCA version the run was writing (None
    until it got that far)."""

    expires_at: datetime
    pca_version: int | None = None

    def is_live(self, now: datetime | None = None) -> bool:
        return self.expires_at > (now or datetime.now(UTC))


@dataclass
class RunLock:
    """A lease in S3 that keeps two featurization runs from working at once; renewed by the run's heartbeat."""

    s3: S3Client
    bucket: str
    key: str  # pomona.core.outputs.lock_key
    # The run's lease on its batch (pomona.core.outputs.lease_key), written and renewed while the lock is ours.
    lease_key: str | None = None
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    etag: str | None = None
    # Written into the lease with each renewal: the PCA version the run writes (recovery finds its folder by it).
    pca_version: int | None = None

    def acquire(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        self._take(now)
        try:
            self._write_lease(now)
        except BaseException:  # no lease, no run: free the lock now rather than after its TTL
            self.s3.delete_object(Bucket=self.bucket, Key=self.key)
            raise

    def _take(self, now: datetime) -> None:
        try:
            self.etag = put_json(self.s3, self.bucket, self.key, self._document(now), if_none_match=True)
            return
        except ClientError as err:
            if not is_precondition_failed(err):
                raise
        found = self._holder()
        if found is not None:
            holder, etag = found
            if holder.owner == self.owner:  # our write landed, its response was lost, the retry met it
                self.etag = etag
                return
            if holder.expires_at > now:
                raise ConcurrentRunError(
                    f"expected no other run, found run {holder.owner} holding the lock until "
                    f"{holder.expires_at.isoformat()}"
                )
            log.warning("Taking over an expired run lock", extra={"previous_owner": holder.owner})
            try:
                self.etag = put_json(self.s3, self.bucket, self.key, self._document(now), if_match=etag)
                return
            except ClientError as err:
                if not is_precondition_failed(err):
                    raise
        raise ConcurrentRunError("expected to take the run lock, another run took it at the same moment")

    def renew(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        self._renew(now)
        self._write_lease(now)

    def _renew(self, now: datetime) -> None:
        try:
            self.etag = put_json(self.s3, self.bucket, self.key, self._document(now), if_match=self.etag)
        except ClientError as err:
            # S3 answers a conditional write to a key that is gone with 404: the lock was deleted under us.
            if not (is_precondition_failed(err) or is_missing(err)):
                raise
            found = self._holder()
            if found is None or found[0].owner != self.owner:
                raise ConcurrentRunError("expected to still hold the run lock, another run took it") from err
            self.etag = found[1]  # our renewal landed, its response was lost, the retry met it

    def release(self, *, settled: bool = True) -> None:
        """Delete the lock if it is still ours: a run that lost it must not free the run that took it over.

        The conditional renewal first makes it ours for a full TTL, so no run can take it over before the delete.
        The run's lease goes if the run left nothing uncommitted (`settled`: it committed, or wrote nothing);
        otherwise it is ended, not deleted: it marks the files the next recovery deletes at once.
        """
        try:
            self._renew(datetime.now(UTC))
            self.s3.delete_object(Bucket=self.bucket, Key=self.key)
        except ConcurrentRunError:
            pass
        finally:
            if self.lease_key is not None and settled:
                self.s3.delete_object(Bucket=self.bucket, Key=self.lease_key)
            elif self.lease_key is not None:
                self._write_lease(datetime.now(UTC), ttl=timedelta(0))

    def _write_lease(self, now: datetime, *, ttl: timedelta = LEASE_TTL) -> None:
        if self.lease_key is not None:  # the key is this run's alone: no condition needed
            document = self._document(now, ttl=ttl)
            if self.pca_version is not None:
                document["pca_version"] = self.pca_version
            put_json(self.s3, self.bucket, self.lease_key, document)

    def _holder(self) -> tuple[Holder, str] | None:
        """Who holds the lock until when, and the document's ETag; None when there is no lock."""
        found = _read(self.s3, self.bucket, self.key, ttl=LOCK_TTL)
        if found is None:
            return None
        document, expires_at, etag = found
        owner = str(document["owner"]) if "owner" in document else "(malformed lock document)"
        return Holder(owner=owner, expires_at=expires_at), etag

    def _document(self, now: datetime, *, ttl: timedelta = LOCK_TTL) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "acquired_at": now.isoformat(),
            "expires_at": (now + ttl).isoformat(),
        }


def read_lease(s3: S3Client, bucket: str, key: str) -> Lease | None:
    """The run lease at `key` (pomona.core.outputs.lease_key), or None when there is none."""
    found = _read(s3, bucket, key, ttl=LEASE_TTL)
    if found is None:
        return None
    document, expires_at, _ = found
    version = document.get("pca_version")
    return Lease(expires_at=expires_at, pca_version=version if isinstance(version, int) else None)


def _read(
    s3: S3Client, bucket: str, key: str, *, ttl: timedelta
) -> tuple[dict[str, Any], datetime, str] | None:
    """A lock or lease document, until when it holds, and its ETag; None when there is none.

    A document that is not one (a hand edit, a bug) is reported and holds until `ttl` has passed since it was
    written: never a permanent block, never taken over at once."""
    try:
        found = get_json(s3, bucket, key)
        if found is None:
            return None
        document, etag = found
        return document, datetime.fromisoformat(document["expires_at"]), etag
    except (ValueError, KeyError, TypeError) as err:
        return _malformed(s3, bucket, key, ttl=ttl, error=err)


def _malformed(
    s3: S3Client, bucket: str, key: str, *, ttl: timedelta, error: Exception
) -> tuple[dict[str, Any], datetime, str] | None:
    """A document that is no lock or lease: held until `ttl` after it was written, by its object's metadata."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if is_missing(err):  # deleted since it was read
            return None
        raise
    expires_at = head["LastModified"] + ttl
    log.error(
        "Malformed run lock or lease: held until its TTL passes",
        extra={"key": key, "error": str(error), "expires_at": expires_at.isoformat()},
    )
    return {}, expires_at, head["ETag"]
