"""The chart's NetworkPolicy: the run's pods reach each other on Spark's ports, DNS and HTTPS, nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from manifests import (
    Render,
    application_spec,
    by_kind,
    chart_values,
    one,
)
from network_policies import OUTSIDE, Pod, may_connect


def _pods(manifests: list[dict[str, Any]]) -> tuple[Pod, Pod]:
    """The run's driver and one executor, labelled as the operator labels them from the spec."""
    spec = application_spec(manifests)
    driver = Pod("pomona", {**spec["driver"]["labels"], "spark-role": "driver"})
    executor = Pod("pomona", {**spec["executor"]["labels"], "spark-role": "executor"})
    return driver, executor


# Spark's ports as values.yaml fixes them.
DRIVER_PORT, BLOCK_MANAGER_PORT = (chart_values()["spark"]["ports"][p] for p in ("driver", "blockManager"))
KUBE_DNS = Pod("kube-system", {"k8s-app": "kube-dns"})
NEIGHBOUR = Pod("pomona", {"app": "moto"})


def test_network_policy_is_on_by_default_and_selects_the_spark_pods(render: Render) -> None:
    manifests = render()
    spec = application_spec(manifests)

    policy = one(manifests, "NetworkPolicy")

    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert (
        policy["spec"]["podSelector"]["matchLabels"] == spec["driver"]["labels"] == spec["executor"]["labels"]
    )


def test_network_policy_opens_the_ports_spark_is_told_to_use(render: Render) -> None:
    manifests = render(set={"spark.ports.driver": "17078", "spark.ports.blockManager": "17079"})
    conf = application_spec(manifests)["sparkConf"]
    driver, executor = _pods(manifests)

    assert (
        conf["spark.driver.port"],
        conf["spark.blockManager.port"],
        conf["spark.driver.blockManager.port"],
    ) == (
        "17078",
        "17079",
        "17079",
    )
    assert may_connect(manifests, executor, driver, 17078)
    assert may_connect(manifests, executor, driver, 17079)
    assert may_connect(manifests, driver, executor, 17079)  # task results, broadcast pieces
    assert may_connect(manifests, executor, executor, 17079)  # shuffle blocks, without a shuffle service
    assert not may_connect(manifests, executor, driver, DRIVER_PORT)


@pytest.mark.parametrize(
    ("source", "target", "port", "protocol", "allowed"),
    [
        pytest.param("executor", "driver", DRIVER_PORT, "TCP", True, id="executor-registers-with-driver"),
        pytest.param("driver", "executor", BLOCK_MANAGER_PORT, "TCP", True, id="driver-fetches-results"),
        pytest.param("executor", "executor", BLOCK_MANAGER_PORT, "TCP", True, id="shuffle-between-executors"),
        pytest.param("executor", "driver", 4040, "TCP", False, id="driver-ui-closed"),
        pytest.param("driver", KUBE_DNS, 53, "UDP", True, id="dns-udp"),
        pytest.param("driver", KUBE_DNS, 53, "TCP", True, id="dns-tcp"),
        pytest.param("executor", OUTSIDE, 443, "TCP", True, id="https-to-aws"),
        pytest.param("executor", OUTSIDE, 80, "TCP", False, id="no-plain-http-out"),
        pytest.param("executor", OUTSIDE, 53, "UDP", False, id="no-outside-resolver"),
        pytest.param("executor", NEIGHBOUR, 5000, "TCP", False, id="no-other-pods"),
        pytest.param(NEIGHBOUR, "driver", DRIVER_PORT, "TCP", False, id="no-one-else-reaches-the-driver"),
        pytest.param(
            NEIGHBOUR, "executor", BLOCK_MANAGER_PORT, "TCP", False, id="no-one-else-reaches-executors"
        ),
        pytest.param(OUTSIDE, "driver", DRIVER_PORT, "TCP", False, id="nothing-from-outside"),
    ],
)
def test_network_policy_allows_the_run_dns_and_https_only(
    render: Render,
    source: str | Pod | None,
    target: str | Pod | None,
    port: int,
    protocol: str,
    allowed: bool,
) -> None:
    manifests = render()
    pods = dict(zip(("driver", "executor"), _pods(manifests), strict=True))

    def peer(p: str | Pod | None) -> Pod | None:
        return pods[p] if isinstance(p, str) else p

    assert may_connect(manifests, peer(source), peer(target), port, protocol) is allowed


def test_network_policy_isolates_runs_of_other_releases(render: Render) -> None:
    manifests = render()
    driver, executor = _pods(manifests)
    stranger = Pod("pomona", {**executor.labels, "app.kubernetes.io/instance": "other"})

    assert not may_connect(manifests, stranger, driver, DRIVER_PORT)
    assert not may_connect(manifests, driver, stranger, BLOCK_MANAGER_PORT)


def test_network_policy_rules_are_never_wider_than_a_port(render: Render) -> None:
    # Every rule names its ports; one without peers (anywhere) names HTTPS alone; no peer selects everything.
    spec = one(render(), "NetworkPolicy")["spec"]

    rules = spec["ingress"] + spec["egress"]

    assert all(rule.get("ports") for rule in rules)
    anywhere = [rule["ports"] for rule in spec["egress"] if "to" not in rule]
    assert anywhere == [[{"protocol": "TCP", "port": 443}]]
    assert all("from" in rule for rule in spec["ingress"])
    peers = [peer for rule in rules for peer in rule.get("to", []) + rule.get("from", [])]
    assert all(peer.get("podSelector", {}).get("matchLabels") for peer in peers)


def test_kind_values_let_the_job_reach_moto_and_the_api_server(render: Render) -> None:
    manifests = render("values-kind.yaml")
    driver, executor = _pods(manifests)
    moto = Pod("pomona", {"app": "moto"})

    assert may_connect(manifests, executor, moto, 5000)
    assert may_connect(manifests, driver, OUTSIDE, 6443)  # kind's API server behind the kubernetes Service
    assert not may_connect(
        manifests, executor, Pod("pomona", {"app": "ingest"}), 5000
    )  # moto's port, not moto


def test_network_policy_can_be_turned_off(render: Render) -> None:
    assert by_kind(render(set={"networkPolicy.enabled": "false"}), "NetworkPolicy") == []
