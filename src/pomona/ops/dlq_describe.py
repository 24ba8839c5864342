"""What `pomona dlq list` shows: a look into a dead-letter queue that consumes nothing, and per message what it
names and why it is there, where that can be known.

The descriptions are pure (a received message in, a `Peeked` out); the SQS calls sit in `peek`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from pomona.core.contract import ImageMessage, check_queued
from pomona.core.errors import ContractError
from pomona.core.queues import FAILED_RUNS, FAILURE, SQS_BATCH, Suspicion, change_visibility, queue_depth
from pomona.core.settings import Settings
from pomona.ops.dlq import DeadLetterQueue, QueueName, about_queue

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

# A peek holds messages this long: if the command dies before it gives them back, they return by themselves.
PEEK_VISIBILITY_S = 30
TEST_EVENT = "s3:TestEvent"


@dataclass(frozen=True, kw_only=True)
class Peeked:
    """One DLQ message as `dlq list` shows it."""

    message_id: str
    # Receives before this look (SQS counts the look itself, and earlier looks too).
    receives: int
    sent_at: str
    payload: str
    keys: tuple[str, ...]
    reason: str


@dataclass(frozen=True, kw_only=True)
class Listing:
    dlq: DeadLetterQueue
    visible: int
    in_flight: int
    messages: list[Peeked]
    # Looked-at messages SQS would not make visible again at once; they return after PEEK_VISIBILITY_S.
    not_released: int


# -- pure: what a message names and why it is there ---------------------------------------------------------------


def describe_message(
    name: QueueName, message: Mapping[str, Any], *, settings: Settings, max_receive_count: int
) -> Peeked:
    """What a received DLQ message holds and, where it can be known, why it is there."""
    attributes = message.get("Attributes", {})
    receives = max(int(attributes.get("ApproximateReceiveCount", "1")) - 1, 0)
    if name == "images":
        payload, keys, problem = describe_image_body(message["Body"], settings)
    else:
        payload, keys, problem = describe_event_body(message["Body"])
    return Peeked(
        message_id=message["MessageId"],
        receives=receives,
        sent_at=_iso(attributes.get("SentTimestamp")),
        payload=payload,
        keys=keys,
        reason=problem or failure_reason(message) or receive_reason(receives, max_receive_count),
    )


def failure_reason(message: Mapping[str, Any]) -> str | None:
    """Why the job dead-lettered a message itself: it failed a run on its own (`pomona.core.queues.Suspicion`)."""
    suspicion = Suspicion.of(message)
    if not suspicion.failed_runs:
        return None
    return f"failed a run on its own (after {suspicion.failed_runs} failed runs): {suspicion.failure}"


def receive_reason(receives: int, max_receive_count: int) -> str:
    """Why a well-formed message is in the DLQ: SQS stores no reason, only how often it was received."""
    if receives >= max_receive_count:
        return f"exceeded maxReceiveCount ({receives} receives, limit {max_receive_count})"
    return (
        f"no stored reason: {receives} receives, under maxReceiveCount {max_receive_count} "
        "(sent to the DLQ directly?)"
    )


def describe_image_body(body: str, settings: Settings) -> tuple[str, tuple[str, ...], str | None]:
    """An images-queue message: its key, version and label; the problem when it is no ImageMessage, or names
    what this deployment's ingestion would not have queued (the job leaves both for the DLQ)."""
    try:
        image = ImageMessage.from_json(body)
    except ContractError as err:
        data = _json_object(body)
        key = data.get("key") if data else None
        if isinstance(key, str):
            # A key that is not Unicode text (a lone surrogate) is shown escaped: a terminal cannot print it.
            key = key.encode("utf-8", "backslashreplace").decode()
            return key, (key,), f"not an ImageMessage: {err}"
        return _preview(body), (), f"not an ImageMessage: {err}"
    payload = f"{image.key} (version {image.version_id}, label {image.label!r})"
    try:
        check_queued(image, settings)
    except ContractError as err:
        return payload, (image.key,), f"not what this deployment queues: {err}"
    return payload, (image.key,), None


def describe_event_body(body: str) -> tuple[str, tuple[str, ...], str | None]:
    """An events-queue message: the S3 keys its notification names, URL-decoded as S3 sends them encoded."""
    data = _json_object(body)
    if data is None:
        return _preview(body), (), f"expected an S3 notification (a JSON object), got {_preview(body)}"
    if data.get("Event") == TEST_EVENT:
        return f"{TEST_EVENT} (names no object)", (), None
    records = data.get("Records")
    if not isinstance(records, list) or not records:
        return "", (), f"expected an S3 notification with Records or {TEST_EVENT}, got keys {sorted(data)}"
    keys: list[str] = []
    for i, record in enumerate(records):
        try:
            keys.append(unquote_plus(record["s3"]["object"]["key"]))
        except (KeyError, TypeError):
            return "", tuple(keys), f"expected Records[{i}].s3.object.key, got {_preview(json.dumps(record))}"
    shown = ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
    return shown, tuple(keys), None


def _json_object(body: str) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _preview(body: str) -> str:
    return repr(body[:60] + ("…" if len(body) > 60 else ""))


def _iso(millis: str | None) -> str:
    if not millis:
        return ""
    moment = datetime.fromtimestamp(int(millis) / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- SQS: the look --------------------------------------------------------------------------------------------


def peek(sqs: SQSClient, dlq: DeadLetterQueue, settings: Settings, *, limit: int, wait_s: int = 1) -> Listing:
    """Up to `limit` of the DLQ's messages, described, and every one of them made visible again.

    Received messages stay invisible until the look ends, so no message is received twice; then each is given
    back at once (visibility 0). SQS counts a look as a receive: `receives` includes earlier looks."""
    with about_queue(dlq.label, "sqs:GetQueueAttributes"):
        depth = queue_depth(sqs, dlq.url)
    held: dict[str, Mapping[str, Any]] = {}
    receipts: list[str] = []
    try:
        with about_queue(dlq.label, "sqs:ReceiveMessage"):
            while len(held) < limit:
                batch = sqs.receive_message(
                    QueueUrl=dlq.url,
                    MaxNumberOfMessages=min(SQS_BATCH, limit - len(held)),
                    VisibilityTimeout=PEEK_VISIBILITY_S,
                    WaitTimeSeconds=wait_s,
                    MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                    MessageAttributeNames=[FAILURE, FAILED_RUNS],
                ).get("Messages", [])
                for message in batch:
                    held.setdefault(message["MessageId"], message)
                    receipts.append(message["ReceiptHandle"])
                # Done when the queue gave nothing, or all it said it held: no last long-poll on an empty queue.
                if not batch or 0 < depth["visible"] <= len(held):
                    break
    finally:
        # Given back now; any SQS would not take back return by themselves after PEEK_VISIBILITY_S.
        not_released = len(change_visibility(sqs, dlq.url, receipts, 0))
    messages = [
        describe_message(dlq.name, m, settings=settings, max_receive_count=dlq.max_receive_count)
        for m in held.values()
    ]
    return Listing(
        dlq=dlq,
        visible=depth["visible"],
        in_flight=depth["in_flight"],
        messages=sorted(messages, key=lambda m: (m.sent_at, m.message_id)),
        not_released=not_released,
    )
