"""What `pomona dlq redrive` does: move a dead-letter queue's messages back to its source queue, by SQS's message
move task where the endpoint has them, else by copying each message and deleting it once its copy was sent."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from pomona.core.aws import error_code
from pomona.core.queues import SQS_BATCH, batch_with_retry
from pomona.ops.dlq import DeadLetterQueue, about_queue

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

# The copy fallback holds a message this long between its receive and its delete; a message whose copy failed
# comes back to the DLQ after it.
COPY_VISIBILITY_S = 60
# How an endpoint without message move tasks answers StartMessageMoveTask.
_UNSUPPORTED = frozenset(
    {"UnsupportedOperation", "AWS.SimpleQueueService.UnsupportedOperation", "InvalidAction", "NotImplemented"}
)
_TASK_DONE = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


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
    source_label = f"{dlq.name} queue {dlq.source_url}"
    while max_messages is None or moved + len(failures) < max_messages:
        room = SQS_BATCH if max_messages is None else min(SQS_BATCH, max_messages - moved - len(failures))
        with about_queue(dlq.label, "sqs:ReceiveMessage"):
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
        with about_queue(source_label, "sqs:SendMessage"):
            unsent = batch_with_retry(
                lambda e: sqs.send_message_batch(QueueUrl=dlq.source_url, Entries=e),  # type: ignore[arg-type]
                entries,
            )
        sent = [m for i, m in enumerate(fresh) if str(i) not in unsent]
        failures.update({fresh[int(i)]["MessageId"]: f"not sent: {why}" for i, why in unsent.items()})
        deletes = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(sent)]
        with about_queue(dlq.label, "sqs:DeleteMessage"):
            undeleted = batch_with_retry(
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
    try:
        sqs.start_message_move_task(SourceArn=dlq.arn, DestinationArn=dlq.source_arn)
    except ClientError as err:
        if not (is_unsupported(err) or _is_server_error(err)):
            with about_queue(dlq.label, "sqs:StartMessageMoveTask"):
                raise
        latest = _latest_move_task(sqs, dlq)
        if latest is None or (is_unsupported(err) and latest.get("Status") != "RUNNING"):
            return None
        if latest.get("Status") != "RUNNING":
            with about_queue(dlq.label, "sqs:StartMessageMoveTask"):
                raise
        on_status("a message move task already runs on this DLQ: following it")
    else:
        on_status(f"started a message move task {dlq.arn} → {dlq.source_arn}")
    deadline = time.monotonic() + timeout_s
    while True:
        with about_queue(dlq.label, "sqs:ListMessageMoveTasks"):
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
    moto answers both calls with a server error."""
    try:
        results = sqs.list_message_move_tasks(SourceArn=dlq.arn, MaxResults=1)["Results"]
    except ClientError as err:
        if is_unsupported(err) or _is_server_error(err):
            return None
        raise
    return results[0] if results else {}


def _is_server_error(err: ClientError) -> bool:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)) >= 500
