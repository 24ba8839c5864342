"""The featurization job the chart renders: its schedule, image, Spark settings, pods and settings."""

from __future__ import annotations

import pytest
from cron import is_valid_cron
from manifests import (
    SPARK_KINDS,
    Render,
    application_spec,
    by_kind,
    chart_metadata,
    chart_values,
    one,
)

from pomona.core.settings import ENV_VARS, Settings

DEFAULTS, CI = chart_values(), chart_values("values-ci.yaml")
# The node label of the one platform the Spark image is built for.
AMD64 = {"kubernetes.io/arch": "amd64"}


GIB = 1024**3


def _bytes(size: str) -> int:
    """A Spark size with its unit (512m, 2g) in bytes."""
    return int(size[:-1]) * 1024 ** "kmgt".index(size[-1].lower()) * 1024


@pytest.mark.parametrize("cron", [None, "0 * * * *"], ids=["default", "hourly"])
def test_schedule_runs_the_values_cron_one_run_at_a_time(render: Render, cron: str | None) -> None:
    spec = one(render(set={"schedule.cron": cron} if cron else {}), "ScheduledSparkApplication")["spec"]

    assert spec["schedule"] == (cron or chart_values()["schedule"]["cron"])
    assert is_valid_cron(spec["schedule"])
    assert (spec["suspend"], spec["concurrencyPolicy"]) == (False, "Forbid")
    assert spec["successfulRunHistoryLimit"] >= 1
    assert spec["failedRunHistoryLimit"] >= 1


def test_application_spec_runs_the_python_job(render: Render) -> None:
    spec = application_spec(render())

    assert {k: spec[k] for k in ("type", "mode", "pythonVersion", "mainApplicationFile")} == {
        "type": "Python",
        "mode": "cluster",
        "pythonVersion": "3",
        "mainApplicationFile": "local:///opt/pomona/spark/main.py",
    }
    assert spec["restartPolicy"] == {"type": "Never"}
    # With no tag given, the chart runs the image of its own appVersion.
    assert spec["image"] == f"{chart_values()['image']['repository']}:{chart_metadata()['appVersion']}"


def test_spark_conf_reuses_python_workers_and_merges_user_conf(render: Render) -> None:
    conf = application_spec(render("values-ci.yaml"))["sparkConf"]

    assert conf["spark.python.worker.reuse"] == "true"
    assert conf["spark.authenticate"] == "true"  # Spark makes the per-application secret on Kubernetes
    assert conf["spark.dynamicAllocation.shuffleTracking.enabled"] == "true"
    assert (
        conf["spark.dynamicAllocation.executorIdleTimeout"]
        == DEFAULTS["dynamicAllocation"]["executorIdleTimeout"]
    )
    assert conf["spark.sql.shuffle.partitions"] == CI["spark"]["conf"]["spark.sql.shuffle.partitions"]
    assert all(isinstance(v, str) for v in conf.values())


def test_dynamic_allocation_bounds_come_from_values(render: Render) -> None:
    spec = application_spec(render("values-ci.yaml"))
    given = DEFAULTS["dynamicAllocation"] | CI["dynamicAllocation"]

    # Everything but the idle timeout, which is Spark's own (spark.dynamicAllocation.executorIdleTimeout).
    assert spec["dynamicAllocation"] == {k: v for k, v in given.items() if k != "executorIdleTimeout"}
    assert spec["dynamicAllocation"]["enabled"] is True
    assert "instances" not in spec["executor"]


def test_fixed_executors_when_dynamic_allocation_is_off(render: Render) -> None:
    spec = application_spec(render(set={"dynamicAllocation.enabled": "false"}))

    assert spec["dynamicAllocation"] == {"enabled": False}
    assert spec["executor"]["instances"] == DEFAULTS["executor"]["instances"]


def test_executor_is_sized_for_litert_workers(render: Render) -> None:
    executor = application_spec(render())["executor"]

    # A Python worker per core at ~1 GB each lives in the overhead, beside ~1 GB of the JVM's own native memory.
    assert _bytes(executor["memoryOverhead"]) >= (executor["cores"] + 1) * GIB


@pytest.mark.parametrize("kind", sorted(SPARK_KINDS))
def test_runs_bound_driver_results_and_read_the_config_map(render: Render, kind: str) -> None:
    # GIVEN the one-off SparkApplication and the schedule's template, rendered with the default values
    manifests = render(set={"oneOff.enabled": "true"})
    app = one(manifests, kind)
    spec = app["spec"] if kind == "SparkApplication" else app["spec"]["template"]
    config = one(manifests, "ConfigMap")

    # THEN what one action may collect on the driver is set (a batch of 50,000 brings ~75 MB of projections and
    # O(1) PCA states of 13 MB), and takes at most half the driver's heap
    conf = spec["sparkConf"]
    assert 0 < _bytes(conf["spark.driver.maxResultSize"]) <= _bytes(spec["driver"]["memory"]) // 2
    # AND the driver and executors read their settings (the dedupe index, the PCA retention...) from the ConfigMap
    for role in ("driver", "executor"):
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in spec[role]["envFrom"]


def test_driver_result_size_can_be_raised_through_spark_conf(render: Render) -> None:
    conf = application_spec(render(set={"spark.conf.spark\\.driver\\.maxResultSize": "1g"}))["sparkConf"]

    assert conf["spark.driver.maxResultSize"] == "1g"


@pytest.mark.parametrize("role", ["driver", "executor"])
def test_pods_run_as_spark_user_with_read_only_root(render: Render, role: str) -> None:
    spec = application_spec(render())
    pod = spec[role]

    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 185,
        "runAsGroup": 185,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["podSecurityContext"]["runAsNonRoot"] is True
    # Every writable path is an emptyDir the spec declares.
    mounts = {m["mountPath"]: m["name"] for m in pod["volumeMounts"]}
    assert mounts == {"/tmp": "tmp", "/var/data/spark-local-dir-1": "spark-local-dir-1"}
    assert {v["name"] for v in spec["volumes"] if "emptyDir" in v} == set(mounts.values())


@pytest.mark.parametrize("role", ["driver", "executor"])
def test_pods_read_settings_from_the_config_map(render: Render, role: str) -> None:
    manifests = render("values-kind.yaml")

    env_from = application_spec(manifests)[role]["envFrom"]

    config_map = one(manifests, "ConfigMap")
    assert env_from == [
        {"configMapRef": {"name": config_map["metadata"]["name"]}},
        {"secretRef": {"name": "moto-credentials"}},
    ]
    assert config_map["data"]["AWS_ENDPOINT_URL"] == "http://moto.pomona.svc:5000"
    assert set(config_map["data"]) <= set(ENV_VARS)


def test_liveness_settings_reach_the_config_map(render: Render) -> None:
    # GIVEN the defaults, and a release with a shorter deadline
    defaults = one(render(), "ConfigMap")["data"]
    shorter = one(render(set={"config.POMONA_RUN_DEADLINE_SECONDS": "1800"}), "ConfigMap")["data"]

    # THEN the driver and executors read the deadline, the stall limit and the metrics namespace from it
    assert {"POMONA_RUN_DEADLINE_SECONDS", "POMONA_STALL_SECONDS", "POMONA_METRICS_NAMESPACE"} <= set(
        defaults
    )
    assert shorter["POMONA_RUN_DEADLINE_SECONDS"] == "1800"
    assert Settings.from_env(shorter).run_deadline_s == 1800


def test_config_map_leaves_out_empty_settings(render: Render) -> None:
    data = one(render(), "ConfigMap")["data"]

    assert data == {name: str(value) for name, value in DEFAULTS["config"].items() if value != ""}
    assert "POMONA_IMAGES_QUEUE_URL" not in data


def test_placement_is_per_role(render: Render) -> None:
    spec = application_spec(render("values-ci.yaml"))

    # A release's labels add to the default arch label.
    assert spec["driver"]["nodeSelector"] == {"eks.amazonaws.com/capacityType": "ON_DEMAND", **AMD64}
    assert spec["executor"]["nodeSelector"] == {"eks.amazonaws.com/capacityType": "SPOT", **AMD64}
    assert spec["executor"]["tolerations"][0]["key"] == "spot"
    assert "tolerations" not in spec["driver"]


def test_a_digest_pins_the_image_every_pod_runs(render: Render) -> None:
    # GIVEN a release deployed by digest (DEPLOY.md), tag and digest both set, in backlog mode
    digest = "sha256:" + "ab" * 32
    manifests = render(set={"image.tag": "v1", "image.digest": digest, "trigger.mode": "backlog"})
    spec = application_spec(manifests)
    cron = one(manifests, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]

    # THEN the runs and the trigger run that exact image, whatever the tag now points to
    pinned = f"{DEFAULTS['image']['repository']}@{digest}"
    assert spec["image"] == pinned
    assert {c["image"] for c in cron["containers"]} == {pinned}


def test_every_pod_of_the_image_runs_on_amd64_nodes_by_default(render: Render) -> None:
    # GIVEN the defaults, in both trigger modes: the driver, the executors, and the trigger's CronJob
    spec = application_spec(render())
    cron = one(render(set={"trigger.mode": "backlog"}), "CronJob")["spec"]["jobTemplate"]["spec"]["template"]

    # THEN each selects x86_64 nodes, the only platform the image is built for (an arm64 node would fail it
    # with `exec format error`)
    assert spec["driver"]["nodeSelector"] == AMD64
    assert spec["executor"]["nodeSelector"] == AMD64
    assert cron["spec"]["nodeSelector"] == AMD64


def test_one_off_application_uses_the_scheduled_spec(render: Render) -> None:
    manifests = render(set={"oneOff.enabled": "true"})

    one_off = one(manifests, "SparkApplication")

    assert one_off["spec"] == application_spec(manifests)
    assert one_off["metadata"]["name"] == "pomona-once"


def test_no_one_off_application_by_default(render: Render) -> None:
    assert by_kind(render(), "SparkApplication") == []


def test_monitoring_uses_the_prometheus_servlet_and_a_pod_monitor(render: Render) -> None:
    manifests = render("values-ci.yaml")

    conf = application_spec(manifests)["sparkConf"]
    monitor = one(manifests, "PodMonitor")

    assert conf["spark.ui.prometheus.enabled"] == "true"
    assert (
        conf["spark.metrics.conf.*.sink.prometheusServlet.class"]
        == "org.apache.spark.metrics.sink.PrometheusServlet"
    )
    assert [e["path"] for e in monitor["spec"]["podMetricsEndpoints"]] == [
        "/metrics/driver/prometheus/",
        "/metrics/executors/prometheus/",
    ]
    assert monitor["spec"]["selector"]["matchLabels"]["spark-role"] == "driver"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_jmx_exporter_uses_the_operator_monitoring_block(render: Render) -> None:
    manifests = render("values-ci.yaml", set={"monitoring.prometheus.jmxExporterJar": "/opt/jmx/agent.jar"})

    spec = application_spec(manifests)

    assert spec["monitoring"] == {
        "exposeDriverMetrics": True,
        "exposeExecutorMetrics": True,
        "prometheus": {"jmxExporterJar": "/opt/jmx/agent.jar", "port": 8090},
    }
    assert "spark.ui.prometheus.enabled" not in spec["sparkConf"]
    assert [e["port"] for e in one(manifests, "PodMonitor")["spec"]["podMetricsEndpoints"]] == [
        "jmx-exporter"
    ]


def test_no_optional_resources_by_default(render: Render) -> None:
    kinds = {m["kind"] for m in render()}

    assert kinds == {
        "ServiceAccount",
        "ConfigMap",
        "Role",
        "RoleBinding",
        "ScheduledSparkApplication",
        "NetworkPolicy",
    }
