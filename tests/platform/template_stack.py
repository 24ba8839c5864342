"""`deploy/template.yaml` as a deployment creates it (`stack(**parameters)`), and the IAM statements it holds.

The template is evaluated by `cfn_eval` for the parameters a deployment passes; the statements are read out of
its roles, bucket and queue policies for `iam_policies.decide`.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from cfn_eval import Template, evaluate, parameter_values, resources
from iam_policies import Request, Statement, decide
from manifests import ROOT

from pomona.core.resources import DEFAULT_NAME, describe

cfnlint_decode = pytest.importorskip("cfnlint.decode", reason="needs cfn-lint (a dev dependency)")

TEMPLATE = ROOT / "deploy" / "template.yaml"
ACCOUNT = "123456789012"
# Parameters without a default, as a deployment would pass them.
PARAMETERS = {
    "Name": DEFAULT_NAME,
    "IngestImageUri": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/pomona-lambda:1",
    "ClassifyImageUri": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/pomona-classify:1",
    "OidcProviderArn": f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/ABC123",
}
PSEUDO = {"AWS::Partition": "aws", "AWS::AccountId": ACCOUNT, "AWS::Region": "us-east-1"}
BUCKET_ARN = f"arn:aws:s3:::{describe().bucket}"
# Roles outside the stack, in its account: an operator, an administrator, and the app's (Cognito authenticated).
OPERATOR = f"arn:aws:iam::{ACCOUNT}:role/operator"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/admin"
APP_ROLE = f"arn:aws:iam::{ACCOUNT}:role/pomona-app-authenticated"
# What the roles grant on uploads and quarantine: the prefixes of `pomona.core.resources`.
UPLOADS = f"{BUCKET_ARN}/{describe().uploads_prefix}*"
QUARANTINE = f"{BUCKET_ARN}/{describe().quarantine_prefix}*"
OUTPUT_PREFIXES = pytest.mark.parametrize("prefix", ["", "runs/2025/"], ids=["bucket-root", "prefixed"])


@cache
def decoded() -> Template:
    """The template as written (functions unevaluated), parsed as CloudFormation parses it."""
    template, problems = cfnlint_decode.decode(TEMPLATE)
    assert not problems
    return template  # type: ignore[no-any-return]


def stack(**parameters: str) -> Template:
    """The template evaluated for these parameters (defaults and `PARAMETERS` otherwise)."""
    template = decoded()
    return evaluate(template, parameter_values(template, PARAMETERS | parameters) | PSEUDO)


def statements(template: Template) -> list[tuple[str, dict[str, Any]]]:
    """(where, statement) for every IAM statement: `<Role> trust`, `<Role>/<Policy>`, bucket and queue policies."""
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


def trust(template: Template, role: str) -> dict[str, Any]:
    """The one statement of `role`'s trust policy."""
    ((_, statement),) = [(w, s) for w, s in statements(template) if w == f"{role} trust"]
    return statement


def identity_policy(template: Template, role: str) -> list[Statement]:
    return [s for where, s in statements(template) if where.startswith(f"{role}/")]


def queue_policy(template: Template, queue: str) -> list[Statement]:
    """The statements of the QueuePolicy attached to `queue` (a logical id); none if it has no policy."""
    policies = [
        p for p in resources(template, "AWS::SQS::QueuePolicy").values() if f"<{queue}>" in p["Queues"]
    ]
    assert len(policies) <= 1, f"expected at most one QueuePolicy on {queue}, got {len(policies)}"
    return [s for p in policies for s in p["PolicyDocument"]["Statement"]]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allowed(template: Template, role: str) -> dict[str, set[str]]:
    """Action → the resources `role` may use it on, by its identity policy."""
    grants: dict[str, set[str]] = {}
    for statement in identity_policy(template, role):
        if statement["Effect"] == "Allow":
            for action in as_list(statement["Action"]):
                grants.setdefault(action, set()).update(as_list(statement["Resource"]))
    return grants


def may(template: Template, role: str, action: str, resource: str, **context: str) -> str:
    """The decision on `role` calling `action` on `resource`, by its identity policy and the resource policies."""
    resource_policy = [s for where, s in statements(template) if " trust" not in where and "/" not in where]
    request = Request(principal=f"<{role}.Arn>", action=action, resource=resource, context=context)
    return decide(request, resource_policy=resource_policy, identity_policy=identity_policy(template, role))
