"""A small NetworkPolicy evaluator: may this pod send to (or receive from) that peer on that port?

Enough for the chart's policies: matchLabels selectors, numeric ports, peers that are pods or addresses outside
the cluster. Anything else it does not model (matchExpressions, named ports, ipBlock, endPort) raises, so a rule
it cannot read is never taken as allowing or denying.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Manifest = Mapping[str, Any]


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}


# An address outside the cluster: an AWS endpoint, a public resolver.
OUTSIDE = None
Peer = Pod | None


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    unknown = set(selector) - {"matchLabels"}
    if unknown:
        raise ValueError(f"expected matchLabels only in a selector, got {sorted(unknown)}")
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(entry: Mapping[str, Any], peer: Peer, policy_namespace: str) -> bool:
    unknown = set(entry) - {"podSelector", "namespaceSelector"}
    if unknown:
        raise ValueError(f"expected podSelector/namespaceSelector peers, got {sorted(unknown)}")
    if peer is None:
        return False  # selectors pick pods, never outside addresses
    if "namespaceSelector" in entry:
        in_namespace = _selects(entry["namespaceSelector"], peer.namespace_labels)
    else:
        in_namespace = peer.namespace == policy_namespace
    return in_namespace and _selects(entry.get("podSelector", {}), peer.labels)


def _port_matches(ports: list[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True  # a rule without ports allows every port
    for entry in ports:
        if not isinstance(entry.get("port"), int) or "endPort" in entry:
            raise ValueError(f"expected numeric ports without endPort, got {entry}")
    return any(e["port"] == port and e.get("protocol", "TCP") == protocol for e in ports)


def _applies(policy: Manifest, pod: Pod) -> bool:
    return pod.namespace == policy["metadata"]["namespace"] and _selects(
        policy["spec"]["podSelector"], pod.labels
    )


def _allowed(
    policies: list[Manifest], pod: Pod, peer: Peer, port: int, protocol: str, direction: str
) -> bool:
    rules_key, peers_key, kind = {
        "egress": ("egress", "to", "Egress"),
        "ingress": ("ingress", "from", "Ingress"),
    }[direction]
    isolating = [p for p in policies if _applies(p, pod) and kind in p["spec"].get("policyTypes", [])]
    if not isolating:
        return True  # a pod no policy isolates in this direction is open
    return any(
        _port_matches(rule.get("ports"), port, protocol)
        and (
            peers_key not in rule
            or any(_peer_matches(e, peer, p["metadata"]["namespace"]) for e in rule[peers_key])
        )
        for p in isolating
        for rule in p["spec"].get(rules_key) or []
    )


def may_connect(
    manifests: Sequence[Manifest], source: Peer, target: Peer, port: int, protocol: str = "TCP"
) -> bool:
    """Whether `source` may open a connection to `target` on `port` under the NetworkPolicies among `manifests`:
    the source's egress and the target's ingress must both allow it."""
    policies = [m for m in manifests if m["kind"] == "NetworkPolicy"]
    egress_ok = source is None or _allowed(policies, source, target, port, protocol, "egress")
    ingress_ok = target is None or _allowed(policies, target, source, port, protocol, "ingress")
    return egress_ok and ingress_ok
