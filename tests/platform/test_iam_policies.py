"""The IAM evaluator the template's tests decide with (`iam_policies`): read as IAM reads, or refused."""

from __future__ import annotations

import pytest
from iam_policies import Request, decide, lambda_permission_statement

BUCKET_ARN = "arn:aws:s3:::pomona-images"
DENY_OTHER_SOURCES = {
    "Effect": "Deny",
    "Principal": "*",
    "Action": "sqs:SendMessage",
    "Resource": "q",
    "Condition": {"ArnNotEquals": {"aws:SourceArn": BUCKET_ARN}},
}


def test_evaluator_reads_negated_operators_as_iam_does() -> None:
    # A negated operator holds when the key is absent: S3's request has no aws:PrincipalArn, a role's no SourceArn.
    role = Request("arn:aws:iam::1:role/x", "sqs:SendMessage", "q")
    s3 = Request("s3.amazonaws.com", "sqs:SendMessage", "q", {"aws:SourceArn": BUCKET_ARN})

    assert decide(role, resource_policy=[DENY_OTHER_SOURCES]) == "deny"
    assert decide(s3, resource_policy=[DENY_OTHER_SOURCES]) == "implicit deny"


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


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        pytest.param(Request("r", "s3:GetObject", "b/k"), "allow", id="allowed"),
        pytest.param(Request("r", "s3:PutObject", "b/k"), "implicit deny", id="other-action"),
        pytest.param(Request("r", "s3:GetObject", "b/private/k"), "deny", id="explicit-deny-wins"),
    ],
)
def test_an_explicit_deny_wins_over_an_allow(request_: Request, expected: str) -> None:
    identity = [{"Effect": "Allow", "Action": "s3:Get*", "Resource": "b/*"}]
    resource = [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "b/private/*"}]

    assert decide(request_, resource_policy=resource, identity_policy=identity) == expected


def test_a_url_permission_covers_calls_through_the_url_only() -> None:
    permission = {
        "Action": "lambda:InvokeFunctionUrl",
        "FunctionName": "f",
        "Principal": "arn:aws:iam::1:role/app",
        "FunctionUrlAuthType": "AWS_IAM",
    }
    through_the_url = {"lambda:FunctionUrlAuthType": "AWS_IAM"}
    policy = [lambda_permission_statement(permission)]

    assert (
        decide(
            Request("arn:aws:iam::1:role/app", "lambda:InvokeFunctionUrl", "f", through_the_url),
            resource_policy=policy,
        )
        == "allow"
    )
    assert (
        decide(Request("arn:aws:iam::1:role/app", "lambda:InvokeFunctionUrl", "f"), resource_policy=policy)
        == "implicit deny"
    )
