"""The CloudFormation template: cfn-lint, least-privilege IAM, and the names and settings of `pomona.core.resources`."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from manifests import ROOT

from pomona.core.resources import describe
from pomona.core.settings import ENV_VARS

cfnlint_api = pytest.importorskip("cfnlint.api", reason="needs cfn-lint (a dev dependency)")
cfnlint_decode = pytest.importorskip("cfnlint.decode", reason="needs cfn-lint (a dev dependency)")

TEMPLATE = ROOT / "deploy" / "template.yaml"
# Parameters without a default, as a deployment would pass them.
PARAMETERS = {
    "IngestImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/pomona-lambda:1",
    "OidcProviderArn": "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/ABC123",
}
PSEUDO = {"AWS::Partition": "aws", "AWS::AccountId": "123456789012", "AWS::Region": "us-east-1"}
# Actions AWS offers no resource-level permissions for, so `Resource: "*"` is the only way to grant them.
RESOURCE_STAR_ONLY = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, problems = cfnlint_decode.decode(TEMPLATE)
    assert not problems
    return resolve(decoded, decoded)  # type: ignore[no-any-return]


def resolve(node: Any, template: dict[str, Any], names: dict[str, str] | None = None) -> Any:
    """Intrinsic functions evaluated with default parameters; resources become `<Logical>` / `<Logical>.<Attr>`."""
    if names is None:
        names = (
            {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()} | PARAMETERS | PSEUDO
        )
    if isinstance(node, list):
        return [resolve(n, template, names) for n in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Ref"}:
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
    return {k: resolve(v, template, names) for k, v in node.items()}


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in template["Resources"].items() if r["Type"] == kind}


def statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, statement) for every IAM statement: role policies, trust policies and bucket policies."""
    found = []
    for name, role in resources(template, "AWS::IAM::Role").items():
        trust = role["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        found += [(f"{name} trust", s) for s in trust["Statement"]]
        for policy in role.get("Policies", []):
            found += [(f"{name}/{policy['PolicyName']}", s) for s in policy["PolicyDocument"]["Statement"]]
    for name, policy in resources(template, "AWS::S3::BucketPolicy").items():
        found += [(name, s) for s in policy["PolicyDocument"]["Statement"]]
    return found


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allowed(template: dict[str, Any], role: str) -> dict[str, set[str]]:
    """Action → the resources `role` may use it on."""
    grants: dict[str, set[str]] = {}
    for where, statement in statements(template):
        if where.startswith(f"{role}/") and statement["Effect"] == "Allow":
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
    ((_, deny),) = [(w, s) for w, s in statements(template) if s["Effect"] == "Deny"]

    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == ["<ImagesBucket.Arn>", "<ImagesBucket.Arn>/*"]


def test_lambda_role_is_scoped_to_prefixes_queue_and_table(template: dict[str, Any]) -> None:
    bucket = f"arn:aws:s3:::{describe().bucket}"
    grants = allowed(template, "IngestRole")

    assert grants["s3:GetObjectVersion"] == {f"{bucket}/uploads/*"}
    assert grants["s3:DeleteObject"] == {f"{bucket}/uploads/*"}
    assert grants["s3:PutObject"] == {f"{bucket}/quarantine/*"}
    assert grants["sqs:SendMessage"] == {"<ImagesQueue.Arn>", "<IngestFailuresQueue.Arn>"}
    assert {a for a in grants if a.startswith("dynamodb:")} == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    }
    assert all(grants[a] == {"<IdempotencyTable.Arn>"} for a in grants if a.startswith("dynamodb:"))
    assert grants["logs:PutLogEvents"] == {"<IngestLogGroup.Arn>"}


def test_job_role_reads_uploads_and_writes_only_outputs_and_quarantine(template: dict[str, Any]) -> None:
    bucket = f"arn:aws:s3:::{describe().bucket}"
    grants = allowed(template, "JobRole")

    assert grants["s3:GetObjectVersion"] == {f"{bucket}/uploads/*"}
    assert grants["s3:PutObject"] == {
        f"{bucket}/{prefix}/*"
        for prefix in ("features", "projections", "models", "batches", "locks", "quarantine")
    }
    assert f"{bucket}/uploads/*" not in grants["s3:DeleteObject"]
    assert {a for a in grants if a.startswith("sqs:")} == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
    }
    assert all(grants[a] == {"<ImagesQueue.Arn>"} for a in grants if a.startswith("sqs:"))


def test_bucket_listing_is_limited_by_prefix(template: dict[str, Any]) -> None:
    listing = [
        s
        for where, s in statements(template)
        if s["Effect"] == "Allow" and {"s3:ListBucket", "s3:ListBucketVersions"} & set(_list(s["Action"]))
    ]

    assert len(listing) == 2
    assert all(s["Condition"]["StringLike"]["s3:prefix"] for s in listing)


@pytest.mark.parametrize(
    ("role", "service_account"),
    [("JobRole", "pomona"), ("TriggerRole", "pomona-trigger")],
    ids=["job", "trigger"],
)
def test_irsa_trust_is_limited_to_one_service_account(
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


def test_trigger_role_only_reads_queue_depth(template: dict[str, Any]) -> None:
    assert allowed(template, "TriggerRole") == {"sqs:GetQueueAttributes": {"<ImagesQueue.Arn>"}}


# -- agreement with pomona.core.resources ------------------------------------------------------------------------------


def test_bucket_matches_resources(template: dict[str, Any]) -> None:
    spec = describe()
    (bucket,) = resources(template, "AWS::S3::Bucket").values()
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}

    assert bucket["BucketName"] == spec.bucket
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert (rules["expire-quarantine"]["Prefix"], rules["expire-quarantine"]["ExpirationInDays"]) == (
        spec.quarantine_prefix,
        spec.quarantine_expiry_days,
    )
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": spec.noncurrent_expiry_days
    }


def test_images_queue_matches_resources(template: dict[str, Any]) -> None:
    spec = describe().images
    queues = {q["QueueName"]: q for q in resources(template, "AWS::SQS::Queue").values()}

    images = queues[spec.name]

    assert images["VisibilityTimeout"] == spec.visibility_timeout_s
    assert images["MessageRetentionPeriod"] == spec.retention_s
    assert images["RedrivePolicy"] == {
        "deadLetterTargetArn": "<ImagesDeadLetterQueue.Arn>",
        "maxReceiveCount": spec.max_receive_count,
    }
    assert spec.dlq_name in queues
    assert all(q["SqsManagedSseEnabled"] for q in queues.values())


def test_failed_ingestions_go_to_the_events_dead_letter_queue(template: dict[str, Any]) -> None:
    # On AWS, S3 invokes the Lambda directly; the events queue exists locally only, its DLQ name is reused here.
    (config,) = resources(template, "AWS::Lambda::EventInvokeConfig").values()
    failures = resources(template, "AWS::SQS::Queue")["IngestFailuresQueue"]

    assert config["DestinationConfig"] == {"OnFailure": {"Destination": "<IngestFailuresQueue.Arn>"}}
    assert failures["QueueName"] == describe().events.dlq_name


def test_idempotency_table_matches_resources(template: dict[str, Any]) -> None:
    spec = describe().idempotency
    (table,) = resources(template, "AWS::DynamoDB::Table").values()

    assert table["TableName"] == spec.name
    assert table["KeySchema"] == [{"AttributeName": spec.hash_key, "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": spec.ttl_attribute, "Enabled": True}


def test_uploads_notify_the_lambda(template: dict[str, Any]) -> None:
    (bucket,) = resources(template, "AWS::S3::Bucket").values()
    (permission,) = resources(template, "AWS::Lambda::Permission").values()

    (notification,) = bucket["NotificationConfiguration"]["LambdaConfigurations"]

    assert notification["Filter"]["S3Key"]["Rules"] == [
        {"Name": "prefix", "Value": describe().uploads_prefix}
    ]
    assert notification["Function"] == "<IngestFunction.Arn>"
    assert (permission["Principal"], permission["SourceArn"]) == (
        "s3.amazonaws.com",
        f"arn:aws:s3:::{describe().bucket}",
    )
    # The permission must exist before S3 accepts the notification.
    assert template["Resources"]["ImagesBucket"]["DependsOn"] == "IngestInvokePermission"


def test_lambda_runs_the_image_with_pomona_settings(template: dict[str, Any]) -> None:
    (function,) = resources(template, "AWS::Lambda::Function").values()
    variables = function["Environment"]["Variables"]

    assert (function["PackageType"], function["Code"]["ImageUri"], function["Timeout"]) == (
        "Image",
        PARAMETERS["IngestImageUri"],
        30,
    )
    assert function["ReservedConcurrentExecutions"] == "10"
    assert {v for v in variables if not v.startswith("POWERTOOLS_")} <= set(ENV_VARS)
    assert variables["POMONA_IMAGES_QUEUE_URL"] == "<ImagesQueue>"
    assert variables["POMONA_BUCKET"] == describe().bucket
