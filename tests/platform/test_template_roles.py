"""The stack's IAM roles: least privilege for each unit, and who may do what with their credentials."""

from __future__ import annotations

from typing import Any

import pytest
from iam_policies import Request, decide
from manifests import Render, one
from template_stack import (
    BUCKET_ARN,
    PARAMETERS,
    QUARANTINE,
    UPLOADS,
    allowed,
    as_list,
    identity_policy,
    may,
    stack,
    statements,
    trust,
)

from pomona.core.outputs import (
    features_key,
    lease_key,
    lock_key,
    manifest_key,
    pca_latest_key,
    pca_prefix,
    projections_key,
)

# Actions AWS offers no resource-level permissions for, so `Resource: "*"` is the only way to grant them.
RESOURCE_STAR_ONLY = {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "cloudwatch:PutMetricData"}
# The job driver's calls on the dedupe index (pomona.core.resources: seen): lookups and records of committed images.
SEEN_TABLE_ACTIONS = ["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"]


def test_no_allow_statement_uses_wildcard_actions(template: dict[str, Any]) -> None:
    wildcards = [
        (where, action)
        for where, statement in statements(template)
        if statement["Effect"] == "Allow"
        for action in as_list(statement["Action"])
        if action == "*" or action.endswith(":*")
    ]

    assert wildcards == []


def test_resource_star_only_for_actions_without_resource_permissions(template: dict[str, Any]) -> None:
    star = [
        (where, action)
        for where, statement in statements(template)
        if statement["Effect"] == "Allow" and "*" in as_list(statement.get("Resource", []))
        for action in as_list(statement["Action"])
    ]

    assert {action for _, action in star} <= RESOURCE_STAR_ONLY


def test_lambda_role_is_scoped_to_prefixes_queues_and_table(template: dict[str, Any]) -> None:
    grants = allowed(template, "IngestRole")

    assert grants["s3:GetObjectVersion"] == {UPLOADS}
    assert grants["s3:DeleteObject"] == {UPLOADS}
    # It withdraws its own delete marker (DeleteObject with the marker's VersionId) when a newer version lies
    # beneath it. IAM cannot hold this to delete markers; the code passes only a version id S3 returned with
    # DeleteMarker: true.
    assert grants["s3:DeleteObjectVersion"] == {UPLOADS}
    assert grants["s3:PutObject"] == {QUARANTINE}
    # It queues images; failed events reach their DLQ by the events queue's redrive, not by the function.
    assert grants["sqs:SendMessage"] == {"<ImagesQueue.Arn>"}
    drain = {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:ChangeMessageVisibility",
    }
    assert {a for a in grants if a.startswith("sqs:")} == drain | {"sqs:SendMessage"}
    assert all(grants[a] == {"<EventsQueue.Arn>"} for a in drain)
    assert {a for a in grants if a.startswith("dynamodb:")} == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    }
    assert all(grants[a] == {"<IdempotencyTable.Arn>"} for a in grants if a.startswith("dynamodb:"))
    assert grants["logs:PutLogEvents"] == {"<IngestLogGroup.Arn>"}


@pytest.mark.parametrize("output_prefix", ["", "runs/2025/"], ids=["bucket-root", "prefixed"])
def test_job_role_reads_uploads_and_writes_only_outputs_and_quarantine(output_prefix: str) -> None:
    grants = allowed(stack(OutputPrefix=output_prefix), "JobRole")

    assert grants["s3:GetObjectVersion"] == {UPLOADS}
    # The run lock lives under the output prefix with the outputs it guards (pomona.core.outputs.lock_key), and so
    # does the tables' metadata (pomona.featurize.tables).
    assert grants["s3:PutObject"] == {
        f"{BUCKET_ARN}/{output_prefix}{name}/*"
        for name in ("features", "projections", "models", "batches", "locks", "iceberg")
    } | {QUARANTINE}
    assert UPLOADS not in grants["s3:DeleteObject"]
    drain = {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
    }
    assert {a for a in grants if a.startswith("sqs:")} == drain | {"sqs:SendMessage"}
    assert all(grants[a] == {"<ImagesQueue.Arn>"} for a in drain)
    # It gives held messages back to the images queue after a failed run, or dead-letters one that failed a run
    # on its own; never the events queues.
    assert grants["sqs:SendMessage"] == {"<ImagesQueue.Arn>", "<ImagesDeadLetterQueue.Arn>"}


@pytest.mark.parametrize("output_prefix", ["", "runs/2025/"], ids=["bucket-root", "prefixed"])
def test_executor_role_reads_uploads_and_features_and_writes_only_part_files(output_prefix: str) -> None:
    grants = allowed(stack(OutputPrefix=output_prefix), "ExecutorRole")
    features, projections = (f"{BUCKET_ARN}/{output_prefix}{name}/*" for name in ("features", "projections"))

    # GET by VersionId needs GetObjectVersion; the projection pass reads its batch's features back.
    assert grants == {
        "s3:GetObject": {UPLOADS, features},
        "s3:GetObjectVersion": {UPLOADS},
        "s3:PutObject": {features, projections},
        "s3:ListBucket": {BUCKET_ARN},
    }


BATCH = "20260101T000000Z-1a2b3c4d"
# What an executor does with one message group: fetch, write features, read them back, write projections.
EXECUTOR_CALLS = [
    pytest.param("s3:GetObjectVersion", "uploads/Apple Red/photo.jpg", id="get-upload-version"),
    pytest.param("s3:GetObject", "uploads/Apple Red/photo.jpg", id="get-upload"),
    pytest.param("s3:PutObject", features_key("{prefix}", BATCH, 0), id="put-features"),
    pytest.param("s3:GetObject", features_key("{prefix}", BATCH, 0), id="read-features-back"),
    pytest.param("s3:PutObject", projections_key("{prefix}", BATCH, 0), id="put-projections"),
]
# What only the driver does: the queue, the dedupe index, the commit, the locks, quarantine.
DRIVER_CALLS = [
    pytest.param("sqs:ReceiveMessage", "<ImagesQueue.Arn>", id="receive"),
    pytest.param("sqs:DeleteMessage", "<ImagesQueue.Arn>", id="delete-message"),
    pytest.param("sqs:ChangeMessageVisibility", "<ImagesQueue.Arn>", id="extend-lease"),
    pytest.param("dynamodb:BatchGetItem", "<SeenTable.Arn>", id="read-seen"),
    pytest.param("dynamodb:BatchWriteItem", "<SeenTable.Arn>", id="write-seen"),
    pytest.param("s3:PutObject", pca_latest_key("{prefix}"), id="move-latest"),
    pytest.param("s3:GetObject", pca_latest_key("{prefix}"), id="read-latest"),
    pytest.param("s3:PutObject", f"{pca_prefix('{prefix}', 3, BATCH)}model.npz", id="write-model"),
    pytest.param("s3:PutObject", lock_key("{prefix}"), id="take-lock"),
    pytest.param("s3:PutObject", lease_key("{prefix}", BATCH), id="take-lease"),
    pytest.param("s3:PutObject", manifest_key("{prefix}", BATCH), id="write-manifest"),
    pytest.param(
        "s3:PutObject", "quarantine/decode_failed/uploads/Apple%20Red/photo.jpg/v1", id="quarantine"
    ),
    pytest.param("s3:DeleteObject", features_key("{prefix}", BATCH, 0), id="delete-stale-part"),
]


def _arn(resource: str, prefix: str) -> str:
    return resource if resource.startswith("<") else f"{BUCKET_ARN}/{resource.format(prefix=prefix)}"


@pytest.mark.parametrize("prefix", ["", "runs/2025/"], ids=["bucket-root", "prefixed"])
@pytest.mark.parametrize(("action", "resource"), EXECUTOR_CALLS)
def test_executor_role_may_fetch_uploads_and_write_part_files(
    prefix: str, action: str, resource: str
) -> None:
    assert may(stack(OutputPrefix=prefix), "ExecutorRole", action, _arn(resource, prefix)) == "allow"


@pytest.mark.parametrize("prefix", ["", "runs/2025/"], ids=["bucket-root", "prefixed"])
@pytest.mark.parametrize(("action", "resource"), DRIVER_CALLS)
def test_only_the_driver_role_may_drain_record_commit_lock_and_quarantine(
    prefix: str, action: str, resource: str
) -> None:
    # GIVEN a decoder exploit running in an executor, with the executors' credentials
    template = stack(OutputPrefix=prefix)
    arn = _arn(resource, prefix)

    # THEN it cannot silence uploads (delete messages, plant hashes) nor touch the commit; the driver still can
    assert may(template, "ExecutorRole", action, arn) == "implicit deny"
    assert may(template, "JobRole", action, arn) == "allow"


@pytest.mark.parametrize(
    ("role", "namespace", "expected"),
    [
        ("JobRole", "Pomona", "allow"),
        ("JobRole", "AWS/SQS", "implicit deny"),
        ("JobRole", "Other", "implicit deny"),
        ("ExecutorRole", "Pomona", "implicit deny"),
    ],
)
def test_only_the_driver_puts_run_metrics_and_only_in_its_namespace(
    template: dict[str, Any], role: str, namespace: str, expected: str
) -> None:
    context = {"cloudwatch:namespace": namespace}

    assert may(template, role, "cloudwatch:PutMetricData", "*", **context) == expected


@pytest.mark.parametrize(
    ("role", "action"),
    [
        ("IngestRole", "s3:ListBucket"),
        ("IngestRole", "s3:ListBucketVersions"),
        ("JobRole", "s3:ListBucket"),
        ("ExecutorRole", "s3:ListBucket"),
    ],
)
def test_roles_may_list_the_bucket_so_a_missing_key_is_a_404(
    template: dict[str, Any], role: str, action: str
) -> None:
    # S3 answers 404 for a missing key only to a caller allowed s3:ListBucket on the bucket, and that check
    # carries no s3:prefix: a prefix-conditioned grant turns a deleted upload or an absent lock into a 403.
    assert may(template, role, action, BUCKET_ARN) == "allow"


@pytest.mark.parametrize(
    ("role", "service_account"),
    [("JobRole", "pomona"), ("ExecutorRole", "pomona-executor"), ("TriggerRole", "pomona-trigger")],
    ids=["job-driver", "job-executors", "trigger"],
)
def test_irsa_trust_is_limited_to_one_service_account_each(
    template: dict[str, Any], role: str, service_account: str
) -> None:
    statement = trust(template, role)
    issuer = "oidc.eks.us-east-1.amazonaws.com/id/ABC123"

    assert statement["Principal"] == {"Federated": PARAMETERS["OidcProviderArn"]}
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Condition"] == {
        "StringEquals": {
            f"{issuer}:sub": f"system:serviceaccount:pomona:{service_account}",
            f"{issuer}:aud": "sts.amazonaws.com",
        }
    }


@pytest.mark.parametrize("account", ["", "featurize"], ids=["chart-default", "renamed"])
def test_driver_and_executor_roles_trust_exactly_the_charts_accounts(render: Render, account: str) -> None:
    # GIVEN the chart and the stack installed with the same ServiceAccount name (the release's by default)
    manifests = render(set={"serviceAccount.name": account} if account else {})
    spec = one(manifests, "ScheduledSparkApplication")["spec"]["template"]
    template = stack(JobServiceAccount=account or "pomona")

    # THEN JobRole trusts the driver's account alone, and ExecutorRole the executors' alone
    for pod, role in (("driver", "JobRole"), ("executor", "ExecutorRole")):
        conditions = trust(template, role)["Condition"]
        (subject,) = [v for k, v in conditions["StringEquals"].items() if k.endswith(":sub")]
        assert subject == f"system:serviceaccount:pomona:{spec[pod]['serviceAccount']}"


def _on_table(template: dict[str, Any], role: str, action: str, table: str) -> str:
    """The decision on `role` calling `action` on `table` (logical ids), with the role's identity policy."""
    request = Request(principal=f"<{role}.Arn>", action=action, resource=f"<{table}.Arn>")
    return decide(request, resource_policy=[], identity_policy=identity_policy(template, role))


def test_job_role_may_only_batch_read_and_write_the_seen_table(template: dict[str, Any]) -> None:
    grants = allowed(template, "JobRole")

    # The driver's lookups (BatchGetItem) and records of committed images (BatchWriteItem), nothing else.
    assert {a: grants[a] for a in grants if a.startswith("dynamodb:")} == {
        action: {"<SeenTable.Arn>"} for action in SEEN_TABLE_ACTIONS
    }


@pytest.mark.parametrize("action", SEEN_TABLE_ACTIONS)
def test_job_role_may_use_the_seen_table(template: dict[str, Any], action: str) -> None:
    assert _on_table(template, "JobRole", action, "SeenTable") == "allow"
    assert _on_table(template, "JobRole", action, "IdempotencyTable") == "implicit deny"


@pytest.mark.parametrize(
    "action",
    [
        *SEEN_TABLE_ACTIONS,
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    ],
)
def test_lambda_role_may_not_use_the_seen_table(template: dict[str, Any], action: str) -> None:
    # Only the job records committed images; the Lambda keeps to its idempotency table.
    assert _on_table(template, "IngestRole", action, "SeenTable") == "implicit deny"


def test_trigger_role_only_reads_queue_depth(template: dict[str, Any]) -> None:
    assert allowed(template, "TriggerRole") == {"sqs:GetQueueAttributes": {"<ImagesQueue.Arn>"}}
