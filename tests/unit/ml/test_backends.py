"""The backend registry and what each backend says of precisions, before any model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from pomona.core.errors import SettingsError
from pomona.core.outputs import Lineage
from pomona.ml.backends import BACKENDS, choose_model, get_backend
from pomona.ml.backends import openvino as openvino_backend
from pomona.ml.featurizer import make_featurizer


def test_registry_holds_every_backend() -> None:
    assert sorted(BACKENDS) == ["litert", "openvino", "tensorflow"]
    assert get_backend("openvino").best_batch >= 1


@pytest.mark.parametrize("backend", ["litert", "tensorflow"])
def test_float32_backends_refuse_bf16_before_loading_anything(backend: str, tmp_path: Path) -> None:
    # WHEN bf16 is asked of a float32-only backend, with weights that would fail to load
    with pytest.raises(
        SettingsError,
        match=rf"POMONA_PRECISION: expected f32, the one precision backend '{backend}' runs, got 'bf16' "
        r"\(bf16 runs on POMONA_BACKEND=openvino\)",
    ):
        make_featurizer(str(tmp_path / "nowhere.weights.h5"), backend=backend, precision="bf16")


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_refuses_an_unknown_precision(backend: str) -> None:
    with pytest.raises(
        SettingsError, match=r"POMONA_PRECISION: expected one of \['f32', 'bf16'\], got 'int8'"
    ):
        get_backend(backend).check("int8")


def test_openvino_refuses_bf16_on_a_cpu_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a CPU whose OpenVINO capabilities have no BF16 (an AVX2-only Xeon, say)
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda: ["FP32", "INT8", "EXPORT_IMPORT"])
    monkeypatch.setattr(openvino_backend, "cpu_name", lambda: "Intel(R) Xeon(R) Platinum 8175M")

    # THEN f32 is fine, and bf16 is refused saying what the CPU lacks and what to do
    get_backend("openvino").check("f32")
    with pytest.raises(
        SettingsError,
        match=r"expected a CPU with bf16 arithmetic \(AVX-512 BF16 or AMX\) for bf16, got 'Intel\(R\) Xeon\(R\) "
        r"Platinum 8175M' whose OpenVINO capabilities are \['EXPORT_IMPORT', 'FP32', 'INT8'\]: run with "
        r"POMONA_PRECISION=f32",
    ):
        get_backend("openvino").check("bf16")


def test_auto_gives_a_new_lineage_litert_f32_and_bf16_only_when_asked_for() -> None:
    assert choose_model("auto", "auto") == ("litert", "f32")
    assert choose_model("openvino", "auto") == ("openvino", "f32")
    # bf16 asked for explicitly stays asked for: the backend's check then refuses it where it cannot run, saying why
    assert choose_model("openvino", "bf16") == ("openvino", "bf16")


@pytest.mark.parametrize(
    ("lineage", "expected"),
    [
        (Lineage(weights_id="w", backend="litert", precision="f32"), ("litert", "f32")),
        (Lineage(weights_id="w", backend="openvino", precision="bf16"), ("openvino", "bf16")),
        (Lineage(weights_id="w", backend="tensorflow", precision="f32"), ("tensorflow", "f32")),
    ],
)
def test_auto_keeps_the_committed_lineage(lineage: Lineage, expected: tuple[str, str]) -> None:
    assert choose_model("auto", "auto", lineage=lineage) == expected
    # an explicit value is kept as given: the job's lineage check refuses a mismatch before receiving anything
    assert choose_model("litert", "auto", lineage=lineage) == ("litert", expected[1])
