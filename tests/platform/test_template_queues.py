"""Who may send to the stack's queues: their policies with the roles' own, as IAM decides."""

from __future__ import annotations

from typing import Any

import pytest
from cfn_eval import resources
from iam_policies import Request, Statement, decide
from template_stack import ADMIN, BUCKET_ARN, OPERATOR, identity_policy, queue_policy, stack

from pomona.core.resources import describe

# What an administrator's identity policy grants: everything, so only the queue's own policy can refuse.
ADMIN_POLICY: list[Statement] = [{"Effect": "Allow", "Action": "*", "Resource": "*"}]


def _send(template: dict[str, Any], queue: str, principal: str, **context: str) -> str:
    """The decision on `principal` sending to `queue`, with its identity policy from the template, if a role."""
    roles = {f"<{name}.Arn>": name for name in resources(template, "AWS::IAM::Role")}
    identity = identity_policy(template, roles[principal]) if principal in roles else []
    if principal in {ADMIN, OPERATOR}:
        identity = ADMIN_POLICY
    request = Request(
        principal=principal, action="sqs:SendMessage", resource=f"<{queue}.Arn>", context=context
    )
    return decide(request, resource_policy=queue_policy(template, queue), identity_policy=identity)


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        pytest.param("<IngestRole.Arn>", "allow", id="ingest-lambda"),
        pytest.param("<JobRole.Arn>", "allow", id="job-driver"),
        pytest.param("<ExecutorRole.Arn>", "deny", id="job-executors"),
        pytest.param("<TriggerRole.Arn>", "deny", id="trigger"),
        pytest.param("<ClassifyRole.Arn>", "deny", id="classify-lambda"),
        pytest.param(ADMIN, "deny", id="administrator"),
        pytest.param(OPERATOR, "deny", id="operator-without-redrive-parameter"),
    ],
)
def test_images_queue_takes_messages_only_from_the_ingestion_lambda_and_the_job_driver(
    template: dict[str, Any], principal: str, expected: str
) -> None:
    # A message here makes the job fetch and featurize what it names: the Lambda queues accepted images, the
    # driver gives back the messages a failed run held. No one else may write one, the executors included.
    assert _send(template, "ImagesQueue", principal) == expected


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        pytest.param("<JobRole.Arn>", "allow", id="job-driver"),
        pytest.param("<ExecutorRole.Arn>", "implicit deny", id="job-executors"),
        pytest.param("<IngestRole.Arn>", "implicit deny", id="ingest-lambda"),
        pytest.param("<TriggerRole.Arn>", "implicit deny", id="trigger"),
        pytest.param("<ClassifyRole.Arn>", "implicit deny", id="classify-lambda"),
    ],
)
def test_of_the_stacks_roles_only_the_job_driver_sends_to_the_images_dlq(
    template: dict[str, Any], principal: str, expected: str
) -> None:
    # A message that failed a run on its own goes there with the failure in its attributes; the Lambda's failed
    # events reach their own DLQ by the events queue's redrive, and an executor holds no queue at all.
    assert _send(template, "ImagesDeadLetterQueue", principal) == expected


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        pytest.param("ImagesQueue", "allow", id="images"),
        pytest.param("ImagesDeadLetterQueue", "allow", id="images-dlq"),
        pytest.param("EventsQueue", "deny", id="events"),
        pytest.param("IngestFailuresQueue", "implicit deny", id="events-dlq"),
    ],
)
def test_job_driver_sends_only_to_the_images_queue_and_its_dlq(
    template: dict[str, Any], queue: str, expected: str
) -> None:
    assert _send(template, queue, "<JobRole.Arn>") == expected


def test_events_dlq_takes_no_message_from_the_stacks_roles(template: dict[str, Any]) -> None:
    # Only its source queue dead-letters there (test_dead_letter_queues_take_only_their_source_queue).
    roles = [f"<{name}.Arn>" for name in resources(template, "AWS::IAM::Role")]

    assert {role: _send(template, "IngestFailuresQueue", role) for role in roles} == dict.fromkeys(
        roles, "implicit deny"
    )


def test_redrive_role_may_also_send_to_the_images_queue() -> None:
    # GIVEN the stack deployed with an operator's role for redriving dead-letter queues
    template = stack(RedriveRoleArn=OPERATOR)

    # THEN that role may send (a message move task sends with its caller's permissions); others still may not
    assert _send(template, "ImagesQueue", OPERATOR) == "allow"
    assert _send(template, "ImagesQueue", "<IngestRole.Arn>") == "allow"
    assert _send(template, "ImagesQueue", "<JobRole.Arn>") == "allow"
    assert _send(template, "ImagesQueue", "<ExecutorRole.Arn>") == "deny"
    assert _send(template, "ImagesQueue", ADMIN) == "deny"


def test_images_queue_refuses_plain_http(template: dict[str, Any]) -> None:
    assert _send(template, "ImagesQueue", "<IngestRole.Arn>", **{"aws:SecureTransport": "false"}) == "deny"


S3_FROM_THE_BUCKET = {"aws:SourceArn": BUCKET_ARN, "aws:SourceAccount": "123456789012"}


@pytest.mark.parametrize(
    ("principal", "context", "expected"),
    [
        pytest.param("s3.amazonaws.com", S3_FROM_THE_BUCKET, "allow", id="s3-for-the-bucket"),
        pytest.param(
            "s3.amazonaws.com",
            {"aws:SourceArn": "arn:aws:s3:::someone-elses-bucket", "aws:SourceAccount": "123456789012"},
            "deny",
            id="s3-for-another-bucket",
        ),
        pytest.param(
            "s3.amazonaws.com",
            {"aws:SourceArn": BUCKET_ARN, "aws:SourceAccount": "210987654321"},
            "implicit deny",
            id="s3-for-another-account",
        ),
        pytest.param("<IngestRole.Arn>", {}, "deny", id="ingest-lambda"),
        pytest.param(ADMIN, {}, "deny", id="administrator"),
    ],
)
def test_events_queue_takes_notifications_only_from_the_bucket(
    template: dict[str, Any], principal: str, context: dict[str, str], expected: str
) -> None:
    # An event makes the Lambda judge (and possibly retire) the key it names: only the bucket's own S3 events.
    assert _send(template, "EventsQueue", principal, **context) == expected


def test_redrive_role_may_also_send_to_the_events_queue() -> None:
    template = stack(RedriveRoleArn=OPERATOR)

    assert _send(template, "EventsQueue", OPERATOR) == "allow"
    assert _send(template, "EventsQueue", "s3.amazonaws.com", **S3_FROM_THE_BUCKET) == "allow"
    assert _send(template, "EventsQueue", ADMIN) == "deny"


@pytest.mark.parametrize(
    ("dlq", "source"), [("ImagesDeadLetterQueue", "images"), ("IngestFailuresQueue", "events")]
)
def test_dead_letter_queues_take_only_their_source_queue(
    template: dict[str, Any], dlq: str, source: str
) -> None:
    queue = resources(template, "AWS::SQS::Queue")[dlq]
    name = getattr(describe(), source).name

    assert queue["RedriveAllowPolicy"] == {
        "redrivePermission": "byQueue",
        "sourceQueueArns": [f"arn:aws:sqs:us-east-1:123456789012:{name}"],
    }
