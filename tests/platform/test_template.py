"""The CloudFormation template: cfn-lint, least-privilege IAM, and the names and settings of `pomona.core.resources`."""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import pytest
import yaml
from dockerfiles import stage_env
from iam_policies import Request, Statement, decide, lambda_permission_statement
from manifests import CHART, ROOT, Render, one

from pomona.core.outputs import (
    features_key,
    lease_key,
    lock_key,
    manifest_key,
    pca_latest_key,
    pca_prefix,
    projections_key,
)
from pomona.core.resources import DEFAULT_NAME, describe
from pomona.core.settings import ENV_VARS, Settings

cfnlint_api = pytest.importorskip("cfnlint.api", reason="needs cfn-lint (a dev dependency)")
cfnlint_decode = pytest.importorskip("cfnlint.decode", reason="needs cfn-lint (a dev dependency)")

TEMPLATE = ROOT / "deploy" / "template.yaml"
# Parameters without a default, as a deployment would pass them.
PARAMETERS = {
    "Name": DEFAULT_NAME,
    "IngestImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/pomona-lambda:1",
    "ClassifyImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/pomona-classify:1",
    "OidcProviderArn": "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/ABC123",
}
PSEUDO = {"AWS::Partition": "aws", "AWS::AccountId": "123456789012", "AWS::Region": "us-east-1"}
# Actions AWS offers no resource-level permissions for, so `Resource: "*"` is the only way to grant them.
RESOURCE_STAR_ONLY = {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "cloudwatch:PutMetricData"}
# The job driver's calls on the dedupe index (pomona.core.resources: seen): lookups and records of committed images.
SEEN_TABLE_ACTIONS = ["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"]
BUCKET_ARN = f"arn:aws:s3:::{describe().bucket}"
OPERATOR = "arn:aws:iam::123456789012:role/operator"
ADMIN = "arn:aws:iam::123456789012:role/admin"
# What an administrator's identity policy grants: everything, so only the queue's own policy can refuse.
ADMIN_POLICY: list[Statement] = [{"Effect": "Allow", "Action": "*", "Resource": "*"}]
# The Cognito identity pool's authenticated role, as a deployment passes it in AppInvokeRoleArn.
APP_ROLE = "arn:aws:iam::123456789012:role/pomona-app-authenticated"
# What a SigV4-signed request to an AWS_IAM function URL carries, for both actions Lambda checks.
THROUGH_THE_URL = {"lambda:FunctionUrlAuthType": "AWS_IAM", "lambda:InvokedViaFunctionUrl": "true"}
TOPIC = "arn:aws:sns:us-east-1:123456789012:pomona-alarms"
_NO_VALUE = object()  # AWS::NoValue: the key or list item is left out


@cache
def _decoded() -> dict[str, Any]:
    decoded, problems = cfnlint_decode.decode(TEMPLATE)
    assert not problems
    return decoded  # type: ignore[no-any-return]


def stack(**parameters: str) -> dict[str, Any]:
    """The template with intrinsic functions evaluated for these parameters (defaults otherwise), without the
    resources and outputs whose Condition does not hold, as CloudFormation creates it."""
    decoded = _decoded()
    names = (
        {k: str(v.get("Default", "")) for k, v in decoded["Parameters"].items()}
        | PARAMETERS
        | PSEUDO
        | parameters
    )
    resolved: dict[str, Any] = resolve(decoded, decoded, names)
    for section in ("Resources", "Outputs"):
        resolved[section] = {
            name: item
            for name, item in resolved[section].items()
            if "Condition" not in item or _holds(decoded["Conditions"][item["Condition"]], decoded, names)
        }
    return resolved


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return stack()


def resolve(node: Any, template: dict[str, Any], names: dict[str, str]) -> Any:
    """Intrinsic functions evaluated; resources become `<Logical>` / `<Logical>.<Attr>`."""
    if isinstance(node, list):
        return [v for v in (resolve(n, template, names) for n in node) if v is not _NO_VALUE]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Ref"}:
        if node["Ref"] == "AWS::NoValue":
            return _NO_VALUE
        return names.get(node["Ref"], f"<{node['Ref']}>")
    if set(node) == {"Fn::GetAtt"}:
        return f"<{'.'.join(node['Fn::GetAtt'])}>"
    if set(node) == {"Fn::Sub"}:
        text, extra = (node["Fn::Sub"], {}) if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"]
        scope = names | {k: resolve(v, template, names) for k, v in extra.items()}
        return re.sub(r"\$\{([^}]+)\}", lambda m: scope.get(m[1], f"<{m[1]}>"), text)
    if set(node) == {"Fn::Split"}:
        separator, value = node["Fn::Split"]
        return resolve(value, template, names).split(separator)
    if set(node) == {"Fn::Select"}:
        index, values = node["Fn::Select"]
        return resolve(values, template, names)[int(index)]
    if set(node) == {"Fn::If"}:
        condition, yes, no = node["Fn::If"]
        return resolve(
            yes if _holds(template["Conditions"][condition], template, names) else no, template, names
        )
    resolved = {k: resolve(v, template, names) for k, v in node.items()}
    return {k: v for k, v in resolved.items() if v is not _NO_VALUE}


def _holds(condition: dict[str, Any], template: dict[str, Any], names: dict[str, str]) -> bool:
    ((function, args),) = condition.items()
    if function == "Fn::Not":
        return not _holds(args[0], template, names)
    if function == "Fn::Equals":
        left, right = (resolve(a, template, names) for a in args)
        return bool(left == right)
    raise ValueError(f"expected Fn::Not or Fn::Equals in a condition, got {function}")


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in template["Resources"].items() if r["Type"] == kind}


def statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, statement) for every IAM statement: role, trust, bucket and queue policies."""
    found = []
    for name, role in resources(template, "AWS::IAM::Role").items():
        trust = role["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        found += [(f"{name} trust", s) for s in trust["Statement"]]
        for policy in role.get("Policies", []):
            found += [(f"{name}/{policy['PolicyName']}", s) for s in policy["PolicyDocument"]["Statement"]]
    for kind in ("AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy"):
        for name, policy in resources(template, kind).items():
            found += [(name, s) for s in policy["PolicyDocument"]["Statement"]]
    return found


def identity_policy(template: dict[str, Any], role: str) -> list[Statement]:
    return [s for where, s in statements(template) if where.startswith(f"{role}/")]


def queue_policy(template: dict[str, Any], queue: str) -> list[Statement]:
    """The statements of the QueuePolicy attached to `queue` (a logical id); none if it has no policy."""
    policies = [
        p for p in resources(template, "AWS::SQS::QueuePolicy").values() if f"<{queue}>" in p["Queues"]
    ]
    assert len(policies) <= 1, f"expected at most one QueuePolicy on {queue}, got {len(policies)}"
    return [s for p in policies for s in p["PolicyDocument"]["Statement"]]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allowed(template: dict[str, Any], role: str) -> dict[str, set[str]]:
    """Action → the resources `role` may use it on."""
    grants: dict[str, set[str]] = {}
    for statement in identity_policy(template, role):
        if statement["Effect"] == "Allow":
            for action in _list(statement["Action"]):
                grants.setdefault(action, set()).update(_list(statement["Resource"]))
    return grants


# -- lint -----------------------------------------------------------------------------------------------------


def test_cfn_lint_finds_nothing() -> None:
    matches = cfnlint_api.lint_file(TEMPLATE)

    assert [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches] == []


# -- IAM ------------------------------------------------------------------------------------------------------


def test_no_allow_statement_uses_wildcard_actions(template: dict[str, Any]) -> None:
    wildcards = [
        (where, action)
        for where, statement in statements(template)
        if statement["Effect"] == "Allow"
        for action in _list(statement["Action"])
        if action == "*" or action.endswith(":*")
    ]

    assert wildcards == []


def test_resource_star_only_for_actions_without_resource_permissions(template: dict[str, Any]) -> None:
    star = [
        (where, action)
        for where, statement in statements(template)
        if statement["Effect"] == "Allow" and "*" in _list(statement.get("Resource", []))
        for action in _list(statement["Action"])
    ]

    assert {action for _, action in star} <= RESOURCE_STAR_ONLY


def test_bucket_refuses_plain_http(template: dict[str, Any]) -> None:
    ((_, deny),) = [
        (w, s) for w, s in statements(template) if w == "ImagesBucketPolicy" and s["Effect"] == "Deny"
    ]

    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == ["<ImagesBucket.Arn>", "<ImagesBucket.Arn>/*"]


def test_lambda_role_is_scoped_to_prefixes_queues_and_table(template: dict[str, Any]) -> None:
    grants = allowed(template, "IngestRole")

    assert grants["s3:GetObjectVersion"] == {f"{BUCKET_ARN}/uploads/*"}
    assert grants["s3:DeleteObject"] == {f"{BUCKET_ARN}/uploads/*"}
    # It withdraws its own delete marker (DeleteObject with the marker's VersionId) when a newer version lies
    # beneath it. IAM cannot hold this to delete markers; the code passes only a version id S3 returned with
    # DeleteMarker: true.
    assert grants["s3:DeleteObjectVersion"] == {f"{BUCKET_ARN}/uploads/*"}
    assert grants["s3:PutObject"] == {f"{BUCKET_ARN}/quarantine/*"}
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

    assert grants["s3:GetObjectVersion"] == {f"{BUCKET_ARN}/uploads/*"}
    # The run lock lives under the output prefix with the outputs it guards (pomona.core.outputs.lock_key).
    assert grants["s3:PutObject"] == {
        f"{BUCKET_ARN}/{output_prefix}{name}/*"
        for name in ("features", "projections", "models", "batches", "locks")
    } | {f"{BUCKET_ARN}/quarantine/*"}
    assert f"{BUCKET_ARN}/uploads/*" not in grants["s3:DeleteObject"]
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
        "s3:GetObject": {f"{BUCKET_ARN}/uploads/*", features},
        "s3:GetObjectVersion": {f"{BUCKET_ARN}/uploads/*"},
        "s3:PutObject": {features, projections},
        "s3:ListBucket": {BUCKET_ARN},
    }


def _may(template: dict[str, Any], role: str, action: str, resource: str, **context: str) -> str:
    """The decision on `role` calling `action` on `resource`, by its identity policy and the resource policies."""
    resource_policy = [s for where, s in statements(template) if " trust" not in where and "/" not in where]
    request = Request(principal=f"<{role}.Arn>", action=action, resource=resource, context=context)
    return decide(request, resource_policy=resource_policy, identity_policy=identity_policy(template, role))


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
    assert _may(stack(OutputPrefix=prefix), "ExecutorRole", action, _arn(resource, prefix)) == "allow"


@pytest.mark.parametrize("prefix", ["", "runs/2025/"], ids=["bucket-root", "prefixed"])
@pytest.mark.parametrize(("action", "resource"), DRIVER_CALLS)
def test_only_the_driver_role_may_drain_record_commit_lock_and_quarantine(
    prefix: str, action: str, resource: str
) -> None:
    # GIVEN a decoder exploit running in an executor, with the executors' credentials
    template = stack(OutputPrefix=prefix)
    arn = _arn(resource, prefix)

    # THEN it cannot silence uploads (delete messages, plant hashes) nor touch the commit; the driver still can
    assert _may(template, "ExecutorRole", action, arn) == "implicit deny"
    assert _may(template, "JobRole", action, arn) == "allow"


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

    assert _may(template, role, "cloudwatch:PutMetricData", "*", **context) == expected


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
    bucket_policy = [s for where, s in statements(template) if where == "ImagesBucketPolicy"]
    request = Request(principal=f"<{role}.Arn>", action=action, resource=BUCKET_ARN)

    decision = decide(request, resource_policy=bucket_policy, identity_policy=identity_policy(template, role))

    assert decision == "allow"


@pytest.mark.parametrize(
    ("role", "service_account"),
    [("JobRole", "pomona"), ("ExecutorRole", "pomona-executor"), ("TriggerRole", "pomona-trigger")],
    ids=["job-driver", "job-executors", "trigger"],
)
def test_irsa_trust_is_limited_to_one_service_account_each(
    template: dict[str, Any], role: str, service_account: str
) -> None:
    ((_, trust),) = [(w, s) for w, s in statements(template) if w == f"{role} trust"]
    issuer = "oidc.eks.us-east-1.amazonaws.com/id/ABC123"

    assert trust["Principal"] == {"Federated": PARAMETERS["OidcProviderArn"]}
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert trust["Condition"] == {
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
        ((_, trust),) = [(w, s) for w, s in statements(template) if w == f"{role} trust"]
        (subject,) = [v for k, v in trust["Condition"]["StringEquals"].items() if k.endswith(":sub")]
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


# -- who may send to the queues --------------------------------------------------------------------------------


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


# -- agreement with pomona.core.resources ------------------------------------------------------------------------------


def test_bucket_matches_resources(template: dict[str, Any]) -> None:
    spec = describe()
    (bucket,) = resources(template, "AWS::S3::Bucket").values()
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}

    assert bucket["BucketName"] == spec.bucket
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert rules["expire-quarantine"]["Prefix"] == spec.quarantine_prefix
    # Both follow RetentionDays by default: test_quarantine_outlives_the_upload_bytes_it_explains.
    assert rules["expire-quarantine"]["ExpirationInDays"] == str(spec.quarantine_expiry_days)
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": str(spec.noncurrent_expiry_days)
    }


@pytest.mark.parametrize("days", ["1", "90", "3650"])
def test_quarantine_outlives_the_upload_bytes_it_explains(days: str) -> None:
    # GIVEN the bucket with this retention
    (bucket,) = resources(stack(RetentionDays=days), "AWS::S3::Bucket").values()
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}

    # WHEN a rejected upload's bytes become a noncurrent version and its quarantined copy and sidecar are written
    noncurrent = int(rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"])
    quarantine = int(rules["expire-quarantine"]["ExpirationInDays"])

    # THEN the copy and the reason stay at least as long as those bytes
    assert quarantine >= noncurrent == int(days)
    # AND the noncurrent rule covers the whole bucket, so an expired quarantined copy goes RetentionDays later
    assert not {"Prefix", "Filter"} & set(rules["expire-noncurrent-versions"])


@pytest.mark.parametrize(
    ("source", "dlq"), [("images", "ImagesDeadLetterQueue"), ("events", "IngestFailuresQueue")]
)
def test_queues_match_resources(template: dict[str, Any], source: str, dlq: str) -> None:
    spec = getattr(describe(), source)
    queues = {q["QueueName"]: q for q in resources(template, "AWS::SQS::Queue").values()}

    queue = queues[spec.name]

    assert queue["VisibilityTimeout"] == spec.visibility_timeout_s
    assert queue["MessageRetentionPeriod"] == spec.retention_s
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": f"<{dlq}.Arn>",
        "maxReceiveCount": spec.max_receive_count,
    }
    assert resources(template, "AWS::SQS::Queue")[dlq]["QueueName"] == spec.dlq_name
    assert all(q["SqsManagedSseEnabled"] for q in queues.values())


def test_events_queue_outlasts_six_function_timeouts(template: dict[str, Any]) -> None:
    # Lambda's advice for SQS event sources: a batch in flight never reappears while it is being handled.
    function = resources(template, "AWS::Lambda::Function")["IngestFunction"]
    events = resources(template, "AWS::SQS::Queue")["EventsQueue"]

    assert events["VisibilityTimeout"] >= 6 * function["Timeout"]


def _table(template: dict[str, Any], name: str) -> dict[str, Any]:
    (table,) = [t for t in resources(template, "AWS::DynamoDB::Table").values() if t["TableName"] == name]
    return table


def test_idempotency_table_matches_resources(template: dict[str, Any]) -> None:
    spec = describe().idempotency
    table = _table(template, spec.name)

    assert spec.ttl_attribute is not None
    assert table["KeySchema"] == [{"AttributeName": spec.hash_key, "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": spec.ttl_attribute, "Enabled": True}


def test_seen_table_matches_resources(template: dict[str, Any]) -> None:
    spec = describe().seen
    table = _table(template, spec.name)
    kept = template["Resources"]["SeenTable"]

    assert table["KeySchema"] == [{"AttributeName": spec.hash_key, "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": spec.hash_key, "AttributeType": "S"}]
    # Items are kept for good: no TTL, and the table outlives the stack and a replacement, recoverable in time.
    assert spec.ttl_attribute is None
    assert "TimeToLiveSpecification" not in table
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert kept["Properties"] is table
    assert (kept["DeletionPolicy"], kept["UpdateReplacePolicy"]) == ("Retain", "Retain")


# -- uploads → events queue → Lambda -------------------------------------------------------------------------------


def test_uploads_notify_the_events_queue_not_the_lambda(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["ImagesBucket"]
    notifications = bucket["Properties"]["NotificationConfiguration"]

    (notification,) = notifications["QueueConfigurations"]

    assert set(notifications) == {"QueueConfigurations"}
    assert notification["Event"] == "s3:ObjectCreated:*"
    assert notification["Filter"]["S3Key"]["Rules"] == [
        {"Name": "prefix", "Value": describe().uploads_prefix}
    ]
    assert notification["Queue"] == "<EventsQueue.Arn>"
    # S3 sends a test event when the notification is set: the queue's policy must already let it in.
    assert bucket["DependsOn"] == "EventsQueuePolicy"
    assert resources(template, "AWS::SQS::QueuePolicy")["EventsQueuePolicy"]["Queues"] == ["<EventsQueue>"]
    # Nothing invokes the ingestion function asynchronously any more.
    permissions = resources(stack(AppInvokeRoleArn=APP_ROLE), "AWS::Lambda::Permission").values()
    assert [p for p in permissions if p["FunctionName"].startswith("<IngestFunction")] == []
    assert resources(template, "AWS::Lambda::EventInvokeConfig") == {}


def test_events_queue_feeds_the_lambda_with_partial_batch_failures(template: dict[str, Any]) -> None:
    (mapping,) = resources(template, "AWS::Lambda::EventSourceMapping").values()
    function = resources(template, "AWS::Lambda::Function")["IngestFunction"]

    assert mapping["EventSourceArn"] == "<EventsQueue.Arn>"
    assert mapping["FunctionName"] == "<IngestFunction.Arn>"
    # One bad record is retried alone; the rest of its batch is deleted (pomona.ingest.handler).
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= mapping["BatchSize"] <= 10
    assert mapping["MaximumBatchingWindowInSeconds"] == 0
    # By default nothing is reserved (a new account has no room to), and IngestMaxConcurrency bounds the pollers.
    assert "ReservedConcurrentExecutions" not in function
    assert mapping["ScalingConfig"]["MaximumConcurrency"] == "10"


def test_reserved_ingest_concurrency_also_bounds_the_pollers() -> None:
    template = stack(IngestReservedConcurrency="20", IngestMaxConcurrency="50")
    (mapping,) = resources(template, "AWS::Lambda::EventSourceMapping").values()
    function = resources(template, "AWS::Lambda::Function")["IngestFunction"]

    # No more pollers than the function may run: a throttled batch spends a receive of each record.
    assert function["ReservedConcurrentExecutions"] == "20"
    assert mapping["ScalingConfig"]["MaximumConcurrency"] == "20"


def test_name_is_required_and_optional_arns_may_be_empty() -> None:
    parameters = _decoded()["Parameters"]
    optional = {"AppInvokeRoleArn", "RedriveRoleArn", "AlarmTopicArn"}

    # A bucket name is global: no default a second deployment would collide with (DEPLOY.md derives it from the
    # account id). DEPLOY.md passes the optional ARNs empty when it has none, which their patterns admit.
    assert "Default" not in parameters["Name"]
    assert re.fullmatch(parameters["Name"]["AllowedPattern"], "pomona-123456789012")
    for name in optional:
        assert parameters[name]["Default"] == ""
        assert re.fullmatch(parameters[name]["AllowedPattern"], "")


def test_outputs_name_the_settings_they_fill(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]

    assert outputs["EventsQueueUrl"]["Value"] == "<EventsQueue>"
    assert outputs["EventsDlqUrl"]["Value"] == "<IngestFailuresQueue>"
    assert outputs["SeenTableName"]["Value"] == "<SeenTable>"
    named = {
        o["Description"].split()[0]
        for o in outputs.values()
        if o.get("Description", "").startswith("POMONA_")
    }
    filled = {"POMONA_BUCKET", "POMONA_IMAGES_QUEUE_URL", "POMONA_EVENTS_QUEUE_URL", "POMONA_SEEN_TABLE"}
    assert filled <= named <= set(ENV_VARS)


def test_lambda_runs_the_image_with_pomona_settings(template: dict[str, Any]) -> None:
    function = resources(template, "AWS::Lambda::Function")["IngestFunction"]
    variables = function["Environment"]["Variables"]

    assert (function["PackageType"], function["Code"]["ImageUri"], function["Timeout"]) == (
        "Image",
        PARAMETERS["IngestImageUri"],
        30,
    )
    assert {v for v in variables if not v.startswith("POWERTOOLS_")} <= set(ENV_VARS)
    assert variables["POMONA_IMAGES_QUEUE_URL"] == "<ImagesQueue>"
    assert variables["POMONA_BUCKET"] == describe().bucket


# -- the classify Lambda and its Function URL -------------------------------------------------------------------


def _s3(template: dict[str, Any], role: str, action: str, resource: str, **context: str) -> str:
    """The decision on `role` calling S3's `action` on `resource`, with the bucket policy and the role's own."""
    bucket_policy = [s for where, s in statements(template) if where == "ImagesBucketPolicy"]
    request = Request(principal=f"<{role}.Arn>", action=action, resource=resource, context=context)
    return decide(request, resource_policy=bucket_policy, identity_policy=identity_policy(template, role))


OUTPUT_PREFIXES = pytest.mark.parametrize("prefix", ["", "runs/2025/"], ids=["bucket-root", "prefixed"])


@OUTPUT_PREFIXES
@pytest.mark.parametrize(
    "key",
    [
        "models/pca/LATEST",
        "models/pca/v3-20260101T000000Z-1a2b/classifier.npz",
        "models/pca/v3-20260101T000000Z-1a2b/metadata.json",
        "models/catalog/x.json",
        "models/catalog/Apple Red.json",
    ],
)
def test_classify_role_reads_the_committed_models_and_catalog(prefix: str, key: str) -> None:
    template = stack(OutputPrefix=prefix)

    assert _s3(template, "ClassifyRole", "s3:GetObject", f"{BUCKET_ARN}/{prefix}{key}") == "allow"


@OUTPUT_PREFIXES
@pytest.mark.parametrize(
    "key",
    [
        "uploads/Apple Red/photo.jpg",
        "quarantine/corrupt/uploads/Apple Red/photo.jpg",
        "quarantine/corrupt/uploads/Apple Red/photo.jpg.reason.json",
        "{prefix}features/batch_id=b1/part-00000.parquet",
        "{prefix}projections/batch_id=b1/part-00000.parquet",
        "{prefix}batches/b1/manifest.json",
        "{prefix}locks/featurize.json",
    ],
)
def test_classify_role_reads_nothing_but_models(prefix: str, key: str) -> None:
    template = stack(OutputPrefix=prefix)

    assert (
        _s3(template, "ClassifyRole", "s3:GetObject", f"{BUCKET_ARN}/{key.format(prefix=prefix)}")
        == "implicit deny"
    )


def test_classify_role_reads_only_its_own_output_prefixs_models() -> None:
    # Another deployment's outputs in the same bucket (at its root here) are not this one's to read.
    template = stack(OutputPrefix="runs/2025/")

    assert _s3(template, "ClassifyRole", "s3:GetObject", f"{BUCKET_ARN}/models/pca/LATEST") == "implicit deny"


@OUTPUT_PREFIXES
@pytest.mark.parametrize(
    "action",
    [
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:DeleteObjectVersion",
        "s3:PutObjectTagging",
        "s3:AbortMultipartUpload",
        "s3:GetObjectVersion",
    ],
)
@pytest.mark.parametrize("key", ["models/pca/LATEST", "models/catalog/x.json"])
def test_classify_role_may_not_write_or_delete_models(prefix: str, action: str, key: str) -> None:
    template = stack(OutputPrefix=prefix)

    assert _s3(template, "ClassifyRole", action, f"{BUCKET_ARN}/{prefix}{key}") == "implicit deny"


@OUTPUT_PREFIXES
@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        pytest.param("{prefix}models/", "allow", id="models"),
        pytest.param("{prefix}models/catalog/x.json", "allow", id="a-catalog-entry"),
        pytest.param("{prefix}models/pca/LATEST", "allow", id="latest"),
        pytest.param("uploads/", "implicit deny", id="uploads"),
        pytest.param("quarantine/", "implicit deny", id="quarantine"),
        pytest.param("{prefix}features/", "implicit deny", id="features"),
        pytest.param("", "implicit deny", id="the-whole-bucket"),
        pytest.param(None, "implicit deny", id="no-prefix"),
    ],
)
def test_classify_role_lists_only_under_models(prefix: str, listed: str | None, expected: str) -> None:
    template = stack(OutputPrefix=prefix)
    context = {} if listed is None else {"s3:prefix": listed.format(prefix=prefix)}

    assert _s3(template, "ClassifyRole", "s3:ListBucket", BUCKET_ARN, **context) == expected


def test_classify_role_has_nothing_but_models_logs_and_traces(template: dict[str, Any]) -> None:
    grants = allowed(template, "ClassifyRole")
    ((_, trust),) = [(w, s) for w, s in statements(template) if w == "ClassifyRole trust"]

    # No queue, no table, no other bucket action: the answer is computed in memory from what it reads.
    assert set(grants) == {
        "s3:GetObject",
        "s3:ListBucket",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
    }
    assert grants["logs:PutLogEvents"] == {"<ClassifyLogGroup.Arn>"}
    assert (trust["Principal"], trust["Action"]) == ({"Service": "lambda.amazonaws.com"}, "sts:AssumeRole")


@pytest.mark.parametrize("parameters", [{}, {"AppInvokeRoleArn": APP_ROLE}], ids=["default", "app-role"])
def test_function_urls_always_authenticate_with_iam(parameters: dict[str, str]) -> None:
    template = stack(**parameters)
    urls = resources(template, "AWS::Lambda::Url")
    permissions = resources(template, "AWS::Lambda::Permission").values()

    assert {name: (url["TargetFunctionArn"], url["AuthType"]) for name, url in urls.items()} == {
        "ClassifyFunctionUrl": ("<ClassifyFunction.Arn>", "AWS_IAM")
    }
    # Never a public URL, nor a permission for anyone.
    assert [p for p in permissions if p.get("FunctionUrlAuthType") == "NONE" or p["Principal"] == "*"] == []
    assert template["Outputs"]["ClassifyFunctionUrl"]["Value"] == "<ClassifyFunctionUrl.FunctionUrl>"


def _invoke(template: dict[str, Any], principal: str, action: str, **context: str) -> str:
    """The decision on `principal` calling `action` on the classify function, by the function's own policy."""
    policy = [lambda_permission_statement(p) for p in resources(template, "AWS::Lambda::Permission").values()]
    request = Request(principal=principal, action=action, resource="<ClassifyFunction.Arn>", context=context)
    return decide(request, resource_policy=policy)


@pytest.mark.parametrize(
    ("principal", "action", "context", "expected"),
    [
        pytest.param(APP_ROLE, "lambda:InvokeFunctionUrl", THROUGH_THE_URL, "allow", id="app-url"),
        # Function URLs created since October 2025 also check lambda:InvokeFunction, through the URL.
        pytest.param(APP_ROLE, "lambda:InvokeFunction", THROUGH_THE_URL, "allow", id="app-url-invoke"),
        pytest.param(APP_ROLE, "lambda:InvokeFunction", {}, "implicit deny", id="app-invoke-api"),
        pytest.param(
            APP_ROLE,
            "lambda:InvokeFunctionUrl",
            {"lambda:FunctionUrlAuthType": "NONE"},
            "implicit deny",
            id="app-unauthenticated-url",
        ),
        pytest.param(
            OPERATOR, "lambda:InvokeFunctionUrl", THROUGH_THE_URL, "implicit deny", id="another-role"
        ),
    ],
)
def test_app_role_may_call_the_classify_url_only(
    principal: str, action: str, context: dict[str, str], expected: str
) -> None:
    template = stack(AppInvokeRoleArn=APP_ROLE)

    assert _invoke(template, principal, action, **context) == expected


def test_without_app_role_the_function_grants_no_one() -> None:
    template = stack()

    assert resources(template, "AWS::Lambda::Permission") == {}
    assert _invoke(template, APP_ROLE, "lambda:InvokeFunctionUrl", **THROUGH_THE_URL) == "implicit deny"


@OUTPUT_PREFIXES
def test_classify_function_runs_its_image_with_known_settings(prefix: str) -> None:
    # GIVEN the function as deployed with this output prefix
    template = stack(OutputPrefix=prefix)
    function = resources(template, "AWS::Lambda::Function")["ClassifyFunction"]
    variables = function["Environment"]["Variables"]

    # WHEN its environment is read as the handler reads it
    settings = Settings.from_env({k: v for k, v in variables.items() if not k.startswith("POWERTOOLS_")})

    # THEN every name is a setting, and the values are this stack's bucket and prefix and the image's weights
    assert {v for v in variables if not v.startswith("POWERTOOLS_")} <= set(ENV_VARS)
    assert (settings.bucket, settings.output_prefix, settings.model_check_seconds) == (
        describe().bucket,
        prefix,
        60,
    )
    image = stage_env(ROOT / "Dockerfile.classify")
    assert (variables["POMONA_WEIGHTS"], variables["POMONA_CACHE_DIR"]) == (
        image["POMONA_WEIGHTS"],
        image["POMONA_CACHE_DIR"],
    )
    assert variables["POWERTOOLS_SERVICE_NAME"] == image["POWERTOOLS_SERVICE_NAME"] == "pomona-classify"
    assert (function["PackageType"], function["Code"]["ImageUri"], function["Role"]) == (
        "Image",
        PARAMETERS["ClassifyImageUri"],
        "<ClassifyRole.Arn>",
    )
    assert (function["Architectures"], function["Timeout"], function["MemorySize"]) == (
        ["x86_64"],
        30,
        "1024",
    )
    assert function["LoggingConfig"]["LogGroup"] == "<ClassifyLogGroup>"
    assert function["TracingConfig"] == {"Mode": "Active"}


@pytest.mark.parametrize(("reserved", "expected"), [("0", None), ("5", "5")], ids=["unreserved", "reserved"])
def test_classify_reserved_concurrency_is_optional(reserved: str, expected: str | None) -> None:
    template = stack(ClassifyReservedConcurrency=reserved)
    function = resources(template, "AWS::Lambda::Function")["ClassifyFunction"]

    assert function.get("ReservedConcurrentExecutions") == expected


def test_nothing_but_its_url_invokes_the_classify_function(template: dict[str, Any]) -> None:
    mappings = resources(template, "AWS::Lambda::EventSourceMapping").values()

    assert [m for m in mappings if m["FunctionName"].startswith("<ClassifyFunction")] == []


# -- alarms ----------------------------------------------------------------------------------------------------

# The two halves of "no healthy run while images wait": only their composite, JobStalledAlarm, notifies.
SILENT_ALARMS = {"JobRunsMissingAlarm", "ImagesWaitingAlarm"}
NOTIFYING_ALARMS = {
    "ImagesAgeAlarm",
    "ImagesDlqAlarm",
    "EventsDlqAlarm",
    "IngestErrorsAlarm",
    "IngestThrottlesAlarm",
    "Classify5xxAlarm",
    "ClassifyLatencyAlarm",
    "JobStalledAlarm",
    "JobRunFailedAlarm",
}


def _alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return resources(template, "AWS::CloudWatch::Alarm") | resources(
        template, "AWS::CloudWatch::CompositeAlarm"
    )


def _watched(metric: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    """(namespace, metric name, dimensions) of an alarm or of a MetricStat's Metric."""
    dimensions = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
    return metric["Namespace"], metric["MetricName"], dimensions


IMAGES_QUEUE = {"QueueName": "<ImagesQueue.QueueName>"}
JOB = {"Bucket": describe().bucket}  # the one dimension of the job's run metrics: POMONA_BUCKET


@pytest.mark.parametrize(
    ("name", "metric", "dimensions", "comparison", "threshold"),
    [
        pytest.param(
            "ImagesAgeAlarm",
            "AWS/SQS ApproximateAgeOfOldestMessage",
            IMAGES_QUEUE,
            "GreaterThanThreshold",
            "21600",
            id="images-oldest-message",
        ),
        pytest.param(
            "ImagesDlqAlarm",
            "AWS/SQS ApproximateNumberOfMessagesVisible",
            {"QueueName": "<ImagesDeadLetterQueue.QueueName>"},
            "GreaterThanThreshold",
            0,
            id="images-dlq",
        ),
        pytest.param(
            "EventsDlqAlarm",
            "AWS/SQS ApproximateNumberOfMessagesVisible",
            {"QueueName": "<IngestFailuresQueue.QueueName>"},
            "GreaterThanThreshold",
            0,
            id="events-dlq",
        ),
        pytest.param(
            "IngestErrorsAlarm",
            "AWS/Lambda Errors",
            {"FunctionName": "<IngestFunction>"},
            "GreaterThanThreshold",
            0,
            id="ingest-errors",
        ),
        pytest.param(
            "IngestThrottlesAlarm",
            "AWS/Lambda Throttles",
            {"FunctionName": "<IngestFunction>"},
            "GreaterThanThreshold",
            0,
            id="ingest-throttles",
        ),
        pytest.param(
            "Classify5xxAlarm",
            "AWS/Lambda Url5xxCount",
            {"FunctionName": "<ClassifyFunction>"},
            "GreaterThanThreshold",
            0,
            id="classify-5xx",
        ),
        pytest.param(
            "ClassifyLatencyAlarm",
            "AWS/Lambda Duration",
            {"FunctionName": "<ClassifyFunction>"},
            "GreaterThanThreshold",
            "3000",
            id="classify-p99",
        ),
        pytest.param(
            "JobRunsMissingAlarm",
            "Pomona RunsSucceeded",
            JOB,
            "LessThanThreshold",
            1,
            id="job-no-healthy-run",
        ),
        pytest.param(
            "JobRunFailedAlarm",
            "Pomona RunsFailed",
            JOB,
            "GreaterThanOrEqualToThreshold",
            1,
            id="job-run-failed",
        ),
    ],
)
def test_each_alarm_watches_its_resource_and_metric(
    template: dict[str, Any],
    name: str,
    metric: str,
    dimensions: dict[str, str],
    comparison: str,
    threshold: str | int,
) -> None:
    alarm = _alarms(template)[name]

    assert _watched(alarm) == (*metric.split(), dimensions)
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == (comparison, threshold)


def test_classify_latency_alarm_is_a_sustained_p99() -> None:
    alarm = _alarms(stack(ClassifyP99AlarmMs="1500"))["ClassifyLatencyAlarm"]

    assert (alarm["ExtendedStatistic"], alarm["Threshold"]) == ("p99", "1500")
    assert "Statistic" not in alarm
    # One slow request in a quiet 5 minutes is that period's p99: three periods in a row page, one does not.
    assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == 3


def test_images_age_alarm_leaves_most_of_the_retention_to_act_in(template: dict[str, Any]) -> None:
    alarm = _alarms(template)["ImagesAgeAlarm"]
    queue = resources(template, "AWS::SQS::Queue")["ImagesQueue"]
    parameter = _decoded()["Parameters"]["ImagesQueueAgeAlarmSeconds"]

    # Six hours by default: several runs late, 13 days and more before SQS drops the message.
    assert int(alarm["Threshold"]) == 6 * 3600
    assert alarm["Statistic"] == "Maximum"
    assert parameter["MaxValue"] <= queue["MessageRetentionPeriod"] // 2


@pytest.mark.parametrize(
    ("period", "missed"), [("3600", "3"), ("900", "8")], ids=["default", "quarter-hours"]
)
def test_job_stalled_alarm_is_missing_healthy_runs_while_images_wait(period: str, missed: str) -> None:
    # GIVEN the stack deployed for this run period and number of missed periods
    alarms = _alarms(stack(JobRunPeriodSeconds=period, JobMissedRunPeriods=missed))
    missing, waiting = alarms["JobRunsMissingAlarm"], alarms["ImagesWaitingAlarm"]

    # THEN no healthy run in `missed` whole periods in a row breaches, a period without any run included
    assert (missing["Statistic"], missing["Period"]) == ("Sum", period)
    assert missing["EvaluationPeriods"] == missing["DatapointsToAlarm"] == missed
    assert missing["TreatMissingData"] == "breaching"
    # AND images wait when visible or in flight (a hung run holds its messages in flight)
    (result,) = [m for m in waiting["Metrics"] if m["ReturnData"]]
    inputs = {m["Id"]: _watched(m["MetricStat"]["Metric"]) for m in waiting["Metrics"] if "MetricStat" in m}
    assert inputs == {
        "visible": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", IMAGES_QUEUE),
        "inflight": ("AWS/SQS", "ApproximateNumberOfMessagesNotVisible", IMAGES_QUEUE),
    }
    assert result["Expression"] == "visible + inflight"
    assert (waiting["ComparisonOperator"], waiting["Threshold"]) == ("GreaterThanThreshold", 0)
    # AND only both together raise the alarm that notifies: a quiet queue in backlog mode starts no run
    assert (
        alarms["JobStalledAlarm"]["AlarmRule"]
        == "ALARM(<JobRunsMissingAlarm>) AND ALARM(<ImagesWaitingAlarm>)"
    )


def test_job_alarm_window_fits_cloudwatch_for_every_allowed_period() -> None:
    parameters = _decoded()["Parameters"]
    most = parameters["JobMissedRunPeriods"]["MaxValue"]

    # CloudWatch: a period is a multiple of 60 s; an alarm looks back 1 day at most (periods under 1 h), else 7.
    for period in parameters["JobRunPeriodSeconds"]["AllowedValues"]:
        assert period % 60 == 0
        assert period * most <= (86400 if period < 3600 else 7 * 86400)


def test_job_metrics_namespace_agrees_across_job_chart_grant_and_alarms(template: dict[str, Any]) -> None:
    watched = {
        a["Namespace"] for a in _alarms(template).values() if a.get("MetricName", "").startswith("Runs")
    }
    (grant,) = [s for s in identity_policy(template, "JobRole") if s["Action"] == "cloudwatch:PutMetricData"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    assert watched == {grant["Condition"]["StringEquals"]["cloudwatch:namespace"]}
    assert watched == {Settings.from_env({}).metrics_namespace, values["config"]["POMONA_METRICS_NAMESPACE"]}


def test_alarms_notify_the_topic_when_one_is_given() -> None:
    alarms = _alarms(stack(AlarmTopicArn=TOPIC))

    actions = {name: (a.get("AlarmActions"), a.get("OKActions")) for name, a in alarms.items()}

    assert actions == {name: ([TOPIC], [TOPIC]) for name in NOTIFYING_ALARMS} | dict.fromkeys(
        SILENT_ALARMS, (None, None)
    )


def test_alarms_exist_but_notify_no_one_without_a_topic(template: dict[str, Any]) -> None:
    alarms = _alarms(template)

    assert set(alarms) == NOTIFYING_ALARMS | SILENT_ALARMS
    notifying = [
        n for n, a in alarms.items() if {"AlarmActions", "OKActions", "InsufficientDataActions"} & set(a)
    ]
    assert notifying == []


# -- the evaluator itself ------------------------------------------------------------------------------------


def test_evaluator_reads_negated_operators_as_iam_does() -> None:
    # A negated operator holds when the key is absent: S3's request has no aws:PrincipalArn, a role's no SourceArn.
    deny = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "sqs:SendMessage",
        "Resource": "q",
        "Condition": {"ArnNotEquals": {"aws:SourceArn": BUCKET_ARN}},
    }

    assert decide(Request("arn:aws:iam::1:role/x", "sqs:SendMessage", "q"), resource_policy=[deny]) == "deny"
    assert (
        decide(
            Request("s3.amazonaws.com", "sqs:SendMessage", "q", {"aws:SourceArn": BUCKET_ARN}),
            resource_policy=[deny],
        )
        == "implicit deny"
    )


def test_evaluator_refuses_operators_it_does_not_know() -> None:
    statement = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "*",
        "Resource": "*",
        "Condition": {"StringEqualsIfExists": {"aws:SourceAccount": "1"}},
    }

    with pytest.raises(ValueError, match="got 'StringEqualsIfExists'"):
        decide(Request("s3.amazonaws.com", "sqs:SendMessage", "q"), resource_policy=[statement])
