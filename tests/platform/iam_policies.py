"""A small IAM policy evaluator, enough to read the template's policies as data: explicit Deny, then Allow.

It knows the condition operators the template uses and fails on any other, so a policy it cannot read is never
taken as allowing or denying. Not modelled: NotAction/NotPrincipal/NotResource, policy variables, permission
boundaries, SCPs, sessions; none of them appear in the template. Lambda permissions are read as the statements
Lambda writes for them (`lambda_permission_statement`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

Statement = Mapping[str, Any]
Decision = Literal["allow", "deny", "implicit deny"]


@dataclass(frozen=True)
class Request:
    """One API call: who makes it (a role ARN, or a service such as `s3.amazonaws.com`), what, on what."""

    principal: str
    action: str
    resource: str
    # Condition keys present in the request; aws:PrincipalArn is filled in for a role.
    context: Mapping[str, str] = field(default_factory=dict)

    def keys(self) -> dict[str, str]:
        base = {"aws:SecureTransport": "true"}
        if self.principal.startswith("arn:") or self.principal.startswith("<"):
            base["aws:PrincipalArn"] = self.principal
        return base | dict(self.context)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _matches_principal(principal: Any, who: str) -> bool:
    if principal == "*":
        return True
    return any(who in _list(principal.get(kind, [])) for kind in ("AWS", "Service"))


def _holds(operator: str, key: str, expected: Any, keys: Mapping[str, str]) -> bool:
    value = keys.get(key)
    wanted = [str(v) for v in _list(expected)]
    negated = "Not" in operator
    base = operator.replace("Not", "")
    if base in {"StringEquals", "ArnEquals"}:
        found = value is not None and value in wanted
    elif base in {"StringLike", "ArnLike"}:
        found = value is not None and any(fnmatchcase(value, w) for w in wanted)
    elif operator == "Bool":
        found = value is not None and value.lower() in {w.lower() for w in wanted}
    else:
        raise ValueError(f"expected a condition operator this evaluator knows, got {operator!r}")
    # A negated operator holds when the key is absent, as IAM evaluates it.
    return not found if negated else found


def applies(statement: Statement, request: Request, *, identity: bool) -> bool:
    """Whether `statement` covers `request`; identity statements have no Principal (they are the caller's)."""
    if not identity and not _matches_principal(statement["Principal"], request.principal):
        return False
    if not any(fnmatchcase(request.action, a) for a in _list(statement["Action"])):
        return False
    if not any(fnmatchcase(request.resource, r) for r in _list(statement["Resource"])):
        return False
    keys = request.keys()
    return all(
        _holds(operator, key, expected, keys)
        for operator, block in statement.get("Condition", {}).items()
        for key, expected in block.items()
    )


def lambda_permission_statement(permission: Mapping[str, Any]) -> dict[str, Any]:
    """An `AWS::Lambda::Permission`'s properties as the statement Lambda adds to the function's resource-based policy:
    `FunctionUrlAuthType` becomes a `lambda:FunctionUrlAuthType` condition and `InvokedViaFunctionUrl` a
    `lambda:InvokedViaFunctionUrl` one, so only requests through a function URL (of that auth type) match."""
    principal = permission["Principal"]
    condition: dict[str, dict[str, str]] = {}
    if "FunctionUrlAuthType" in permission:
        condition["StringEquals"] = {"lambda:FunctionUrlAuthType": permission["FunctionUrlAuthType"]}
    if permission.get("InvokedViaFunctionUrl") in {True, "true"}:
        condition["Bool"] = {"lambda:InvokedViaFunctionUrl": "true"}
    if "SourceAccount" in permission:
        condition.setdefault("StringEquals", {})["aws:SourceAccount"] = permission["SourceAccount"]
    if "SourceArn" in permission:
        condition["ArnLike"] = {"aws:SourceArn": permission["SourceArn"]}
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": "*"
        if principal == "*"
        else {"Service" if principal.endswith(".amazonaws.com") else "AWS": principal},
        "Action": permission["Action"],
        "Resource": permission["FunctionName"],
    }
    return statement | ({"Condition": condition} if condition else {})


def decide(
    request: Request, *, resource_policy: Iterable[Statement], identity_policy: Iterable[Statement] = ()
) -> Decision:
    """Same-account evaluation: an explicit Deny anywhere wins, else an Allow in either policy allows."""
    scoped = [(s, False) for s in resource_policy] + [(s, True) for s in identity_policy]
    relevant = [s for s, identity in scoped if applies(s, request, identity=identity)]
    if any(s["Effect"] == "Deny" for s in relevant):
        return "deny"
    return "allow" if any(s["Effect"] == "Allow" for s in relevant) else "implicit deny"
