"""What `pomona dlq list|redrive` do: look into a source queue's dead-letter queue without consuming it, and move
its messages back to the source queue.

A DLQ is found from its source queue's `RedrivePolicy`, so the command needs only the settings' queue URLs.
The message descriptions are pure (a received message in, a `Peeked` out); the SQS calls sit in `find_dlq`,
`peek` and `redrive`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

from pomona.core.aws import error_code
from pomona.core.contract import ImageMessage, check_queued
from pomona.core.errors import ContractError, PomonaError
from pomona.core.queues import FAILED_RUNS, FAILURE, SQS_BATCH, Suspicion, in_batches, queue_depth
from pomona.core.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

QueueName = Literal["images", "events"]
QUEUES: tuple[QueueName, ...] = ("images", "events")
_SOURCE_SETTING = {"images": "POMONA_IMAGES_QUEUE_URL", "events": "POMONA_EVENTS_QUEUE_URL"}

# A peek holds messages this long: if the command dies before it gives them back, they return by themselves.
PEEK_VISIBILITY_S = 30
# The copy fallback holds a message this long between its receive and its delete; a message whose copy failed
# comes back to the DLQ after it.
COPY_VISIBILITY_S = 60
TEST_EVENT = "s3:TestEvent"
# How an endpoint without message move tasks answers StartMessageMoveTask.
_UNSUPPORTED = frozenset(
    {"UnsupportedOperation", "AWS.SimpleQueueService.UnsupportedOperation", "InvalidAction", "NotImplemented"}
)
_MISSING = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
_TASK_DONE = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


class QueueLookupError(PomonaError, LookupError):
    """A source queue or its dead-letter queue is not configured, does not exist, or has no redrive policy."""


class QueueAccessError(PomonaError, PermissionError):
    """SQS refused a call on a source queue or its dead-letter queue."""


@dataclass(frozen=True, kw_only=True)
class DeadLetterQueue:
    """A source queue and the DLQ its redrive policy names."""

    name: QueueName
    source_url: str
    source_arn: str
    url: str
    arn: str
    max_receive_count: int


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


@dataclass(frozen=True, kw_only=True)
class Redriven:
    dlq: DeadLetterQueue
    method: Literal["move-task", "copy"]
    moved: int
    failed: int
    # The move task's last status (RUNNING when the wait timed out), or COMPLETED / FAILED for the copy.
    status: str
    detail: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "COMPLETED" and not self.failed


# -- pure: redrive policies and message descriptions ----------------------------------------------------------


def parse_redrive_policy(raw: str | None, *, queue: str) -> tuple[str, int]:
    """The DLQ's ARN and maxReceiveCount from a queue's RedrivePolicy attribute (a JSON string)."""
    if not raw:
        raise QueueLookupError(f"{queue}: expected a RedrivePolicy naming its dead-letter queue, got none")
    try:
        policy = json.loads(raw)
        return str(policy["deadLetterTargetArn"]), int(policy["maxReceiveCount"])
    except (ValueError, KeyError, TypeError) as err:
        raise QueueLookupError(
            f"{queue}: expected a RedrivePolicy with deadLetterTargetArn and maxReceiveCount, got {raw!r}"
        ) from err


def queue_name_from_arn(arn: str) -> str:
    """`arn:aws:sqs:<region>:<account>:<name>` → `<name>`."""
    parts = arn.split(":")
    if len(parts) != 6 or parts[:3] != ["arn", parts[1], "sqs"] or not parts[5]:
        raise QueueLookupError(f"expected an SQS queue ARN (arn:<partition>:sqs:…:<name>), got {arn!r}")
    return parts[5]


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


def copy_entry(index: int, message: Mapping[str, Any]) -> dict[str, Any]:
    """A SendMessageBatch entry that copies `message`: its body and message attributes as received."""
    entry: dict[str, Any] = {"Id": str(index), "MessageBody": message["Body"]}
    attributes = {
        name: {k: v for k, v in value.items() if v not in ([], None)}
        for name, value in message.get("MessageAttributes", {}).items()
    }
    if attributes:
        entry["MessageAttributes"] = attributes
    return entry


def is_unsupported(err: ClientError) -> bool:
    """Whether SQS's answer says the endpoint has no message move tasks."""
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return error_code(err) in _UNSUPPORTED or status == 501


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


# -- SQS: find, peek, redrive ---------------------------------------------------------------------------------


def find_dlq(sqs: SQSClient, settings: Settings, name: QueueName) -> DeadLetterQueue:
    """The DLQ of the `name` queue, from its RedrivePolicy; `QueueLookupError` says what is missing."""
    source_url = settings.images_queue_url if name == "images" else settings.events_queue_url
    label = f"{name} queue"
    if not source_url:
        raise QueueLookupError(f"{label}: expected a queue URL in {_SOURCE_SETTING[name]}, got none")
    with _about(f"{label} {source_url}", "sqs:GetQueueAttributes"):
        attributes = sqs.get_queue_attributes(
            QueueUrl=source_url, AttributeNames=["QueueArn", "RedrivePolicy"]
        )["Attributes"]
    dlq_arn, max_receive_count = parse_redrive_policy(
        attributes.get("RedrivePolicy"), queue=f"{label} {source_url}"
    )
    dlq_name = queue_name_from_arn(dlq_arn)
    with _about(f"{label}'s dead-letter queue {dlq_name} ({dlq_arn})", "sqs:GetQueueUrl"):
        dlq_url = sqs.get_queue_url(QueueName=dlq_name)["QueueUrl"]
    return DeadLetterQueue(
        name=name,
        source_url=source_url,
        source_arn=attributes["QueueArn"],
        url=dlq_url,
        arn=dlq_arn,
        max_receive_count=max_receive_count,
    )


def peek(sqs: SQSClient, dlq: DeadLetterQueue, settings: Settings, *, limit: int, wait_s: int = 1) -> Listing:
    """Up to `limit` of the DLQ's messages, described, and every one of them made visible again.

    Received messages stay invisible until the look ends, so no message is received twice; then each is given
    back at once (visibility 0). SQS counts a look as a receive: `receives` includes earlier looks."""
    with _about(f"{dlq.name} dead-letter queue {dlq.url}", "sqs:GetQueueAttributes"):
        depth = queue_depth(sqs, dlq.url)
    held: dict[str, Mapping[str, Any]] = {}
    receipts: list[str] = []
    try:
        with _about(f"{dlq.name} dead-letter queue {dlq.url}", "sqs:ReceiveMessage"):
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
        not_released = len(_release(sqs, dlq.url, receipts))
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


def redrive(
    sqs: SQSClient,
    dlq: DeadLetterQueue,
    *,
    max_messages: int | None = None,
    task_sqs: SQSClient | None = None,
    timeout_s: float = 600.0,
    poll_s: float = 2.0,
    wait_s: int = 1,
    on_status: Callable[[str], None] = lambda _: None,
) -> Redriven:
    """Move the DLQ's messages back to the source queue: by SQS's message move task where the endpoint has
    them (and no `max_messages`: a task moves everything), else by copying (`copy_back`).

    `task_sqs` makes the move-task calls; give it a single-attempt retry policy, so an endpoint that answers
    them with a server error is found out at once, not after the retry policy's backoff."""
    if max_messages is None:
        outcome = _move_task(task_sqs or sqs, dlq, timeout_s=timeout_s, poll_s=poll_s, on_status=on_status)
        if outcome is not None:
            return outcome
        on_status("no message move task on this endpoint for this DLQ: copying the messages back instead")
    return copy_back(sqs, dlq, max_messages=max_messages, wait_s=wait_s)


def copy_back(
    sqs: SQSClient, dlq: DeadLetterQueue, *, max_messages: int | None = None, wait_s: int = 1
) -> Redriven:
    """Receive from the DLQ, send copies (body and message attributes) to the source queue, and delete from the
    DLQ only the messages whose copy was sent, ten at a time, until the DLQ gives nothing.

    A message whose copy failed stays in the DLQ (it returns after COPY_VISIBILITY_S) and is not tried again in
    this run; one sent but not deleted is in both queues, and is counted failed: the units dedupe its replay."""
    moved = 0
    done: set[str] = set()  # message ids sent or given up on in this run: never sent twice
    failures: dict[str, str] = {}
    dlq_label, source_label = f"{dlq.name} dead-letter queue {dlq.url}", f"{dlq.name} queue {dlq.source_url}"
    while max_messages is None or moved + len(failures) < max_messages:
        room = SQS_BATCH if max_messages is None else min(SQS_BATCH, max_messages - moved - len(failures))
        with _about(dlq_label, "sqs:ReceiveMessage"):
            batch = sqs.receive_message(
                QueueUrl=dlq.url,
                MaxNumberOfMessages=room,
                VisibilityTimeout=COPY_VISIBILITY_S,
                WaitTimeSeconds=wait_s,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
        if not batch:
            break
        # One given up on (or sent) earlier in this run is back after its visibility timeout: left alone, now
        # invisible again, so the loop still ends at the first empty receive.
        fresh = [m for m in batch if m["MessageId"] not in done]
        if not fresh:
            continue
        done.update(m["MessageId"] for m in fresh)
        entries = [copy_entry(i, m) for i, m in enumerate(fresh)]
        with _about(source_label, "sqs:SendMessage"):
            unsent = _batch_with_retry(
                lambda e: sqs.send_message_batch(QueueUrl=dlq.source_url, Entries=e),  # type: ignore[arg-type]
                entries,
            )
        sent = [m for i, m in enumerate(fresh) if str(i) not in unsent]
        failures.update({fresh[int(i)]["MessageId"]: f"not sent: {why}" for i, why in unsent.items()})
        deletes = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(sent)]
        with _about(dlq_label, "sqs:DeleteMessage"):
            undeleted = _batch_with_retry(
                lambda e: sqs.delete_message_batch(QueueUrl=dlq.url, Entries=e),  # type: ignore[arg-type]
                deletes,
            )
        failures.update(
            {sent[int(i)]["MessageId"]: f"sent, not deleted: {why}" for i, why in undeleted.items()}
        )
        moved += len(sent) - len(undeleted)
    detail = "; ".join(f"{mid}: {why}" for mid, why in list(failures.items())[:3])
    return Redriven(
        dlq=dlq,
        method="copy",
        moved=moved,
        failed=len(failures),
        status="FAILED" if failures else "COMPLETED",
        detail=detail + (f"; and {len(failures) - 3} more" if len(failures) > 3 else ""),
    )


def _move_task(
    sqs: SQSClient, dlq: DeadLetterQueue, *, timeout_s: float, poll_s: float, on_status: Callable[[str], None]
) -> Redriven | None:
    """Start a message move task and follow it; None when the endpoint has no move tasks, or refuses one for
    this queue while none runs (then copying races no task)."""
    label = f"{dlq.name} dead-letter queue {dlq.url}"
    try:
        sqs.start_message_move_task(SourceArn=dlq.arn, DestinationArn=dlq.source_arn)
    except ClientError as err:
        if not (is_unsupported(err) or _is_server_error(err)):
            with _about(label, "sqs:StartMessageMoveTask"):
                raise
        latest = _latest_move_task(sqs, dlq)
        if latest is None or (is_unsupported(err) and latest.get("Status") != "RUNNING"):
            return None
        if latest.get("Status") != "RUNNING":
            with _about(label, "sqs:StartMessageMoveTask"):
                raise
        on_status("a message move task already runs on this DLQ: following it")
    else:
        on_status(f"started a message move task {dlq.arn} → {dlq.source_arn}")
    deadline = time.monotonic() + timeout_s
    while True:
        with _about(label, "sqs:ListMessageMoveTasks"):
            results = sqs.list_message_move_tasks(SourceArn=dlq.arn, MaxResults=1)["Results"]
        task: Mapping[str, Any] = results[0] if results else {}
        status = str(task.get("Status", "RUNNING"))
        moved = int(task.get("ApproximateNumberOfMessagesMoved", 0))
        to_move = task.get("ApproximateNumberOfMessagesToMove")
        on_status(f"{status}: {moved}" + (f" of {to_move}" if to_move is not None else "") + " moved")
        if status in _TASK_DONE or time.monotonic() >= deadline:
            failed = max(int(to_move) - moved, 0) if to_move is not None and status != "COMPLETED" else 0
            detail = str(task.get("FailureReason", ""))
            if status not in _TASK_DONE:
                detail = f"still running after {timeout_s:g} s; it goes on (aws sqs list-message-move-tasks)"
            return Redriven(
                dlq=dlq, method="move-task", moved=moved, failed=failed, status=status, detail=detail
            )
        time.sleep(poll_s)


def _latest_move_task(sqs: SQSClient, dlq: DeadLetterQueue) -> Mapping[str, Any] | None:
    """The DLQ's latest move task ({} when there is none), or None when the endpoint has no move tasks at all:
    moto 5.2.5 answers both calls with a server error."""
    try:
        results = sqs.list_message_move_tasks(SourceArn=dlq.arn, MaxResults=1)["Results"]
    except ClientError as err:
        if is_unsupported(err) or _is_server_error(err):
            return None
        raise
    return results[0] if results else {}


def _is_server_error(err: ClientError) -> bool:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)) >= 500


def _release(sqs: SQSClient, url: str, receipts: Sequence[str]) -> list[str]:
    """Make received messages visible again now; the receipts SQS would not release (they return by themselves
    after PEEK_VISIBILITY_S)."""
    left: list[str] = []
    for batch in in_batches(receipts):
        entries = [{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0} for i, r in enumerate(batch)]
        failed = _batch_with_retry(
            lambda e: sqs.change_message_visibility_batch(QueueUrl=url, Entries=e),  # type: ignore[arg-type]
            entries,
        )
        left += [batch[int(i)] for i in failed]
    return left


def _batch_with_retry(
    call: Callable[[list[dict[str, Any]]], Any], entries: list[dict[str, Any]]
) -> dict[str, str]:
    """`call(entries)`, then once more for the entries that failed on SQS's side; the Ids still failed, with
    SQS's code and message."""
    if not entries:
        return {}
    failed = call(entries).get("Failed", [])
    retry = {f["Id"] for f in failed if not f.get("SenderFault")}
    if retry:
        again = call([e for e in entries if e["Id"] in retry]).get("Failed", [])
        failed = [f for f in failed if f["Id"] not in retry] + again
    return {f["Id"]: f"{f.get('Code', '')} {f.get('Message', '')}".strip() for f in failed}


@contextmanager
def _about(what: str, action: str) -> Iterator[None]:
    """SQS's "no such queue" and "access denied" as one line naming the queue; other errors as they are."""
    try:
        yield
    except ClientError as err:
        code = error_code(err)
        found = f"{code} ({err.response.get('Error', {}).get('Message', '')})"
        if code in _MISSING or err.response.get("Error", {}).get("QueryErrorCode") in _MISSING:
            raise QueueLookupError(f"{what}: expected an existing queue, got {found}") from err
        if "AccessDenied" in code:
            raise QueueAccessError(f"{what}: expected permission for {action}, got {found}") from err
        raise
