"""Helpers for the chart: its values files, running helm, picking manifests by kind, checking Spark kinds against
the CRDs."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "pomona"
CRDS = ROOT.parent / "shared" / "k8s" / "crds"
CRD_FILES = {
    "SparkApplication": "sparkoperator.k8s.io_sparkapplications.yaml",
    "ScheduledSparkApplication": "sparkoperator.k8s.io_scheduledsparkapplications.yaml",
}
SPARK_KINDS = frozenset(CRD_FILES)

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


class HelmError(AssertionError):
    """helm exited non-zero; the message holds what it printed."""


def run_helm(helm: Path, *args: str) -> str:
    result = subprocess.run([str(helm), *args], capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise HelmError(result.stderr.strip() or result.stdout.strip())
    return result.stdout


@cache
def _values_file(name: str) -> str:
    return (CHART / name).read_text()


def chart_values(name: str = "values.yaml") -> dict[str, Any]:
    """A values file of the chart, as written (a fresh copy each call)."""
    return yaml.safe_load(_values_file(name))  # type: ignore[no-any-return]


def chart_metadata() -> dict[str, Any]:
    """The chart's Chart.yaml."""
    return yaml.safe_load(_values_file("Chart.yaml"))  # type: ignore[no-any-return]


def application_spec(manifests: list[Manifest]) -> Manifest:
    """The SparkApplication spec every run is made from: the ScheduledSparkApplication's template."""
    return one(manifests, "ScheduledSparkApplication")["spec"]["template"]  # type: ignore[no-any-return]


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str) -> Manifest:
    found = by_kind(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _closed(schema: Any) -> Any:
    """The schema with unknown fields rejected wherever the CRD lists properties and does not preserve unknowns."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        closed.setdefault("additionalProperties", False)
    return closed


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    """A validator for `kind` from the Spark Operator v2.5.2 CRD (v1beta2), unknown fields rejected."""
    path = CRDS / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"needs {path} (the shared/ folder beside the repository), which is absent here")
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta2"]
    schema = _closed(version["schema"]["openAPIV3Schema"])
    # The CRD leaves metadata (ObjectMeta) to the API server; an object is all it asks.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def crd_errors(manifest: Manifest) -> list[str]:
    """Every way `manifest` breaks its CRD's schema, one readable line each (empty when valid)."""
    errors = crd_validator(manifest["kind"]).iter_errors(manifest)
    return sorted(f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
