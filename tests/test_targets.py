"""Deployment targets: every built-in file loads with the right facts; bad files fail with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgeseg
from edgeseg.engine import host
from edgeseg.engine.host import parse_nvidia_smi
from edgeseg.errors import UsageError
from edgeseg.target.loading import list_targets, load_target, load_target_file
from edgeseg.target.schema import CudaDevice, target_from_device

TARGET_DIR = Path(edgeseg.__file__).parent / "targets"
BUILTIN_FILES = sorted(TARGET_DIR.glob("*.toml"))
EXPECTED = {"jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx", "jetson-agx-xavier",
            "rtx-3090", "rtx-4090", "a100", "h100", "l4", "cuda", "cpu"}

# name: (compute capability, DLA cores, fp8, sparsity, default TensorRT)
FACTS = {
    "jetson-orin-nano": ("8.7", 0, False, True, "10.3"),
    "jetson-orin-nx": ("8.7", 2, False, True, "10.3"),
    "jetson-agx-orin": ("8.7", 2, False, True, "10.3"),
    "jetson-xavier-nx": ("7.2", 2, False, False, "8.5"),
    "jetson-agx-xavier": ("7.2", 2, False, False, "8.5"),
    "rtx-3090": ("8.6", 0, False, True, "10.16"),
    "rtx-4090": ("8.9", 0, True, True, "10.16"),
    "a100": ("8.0", 0, False, True, "10.16"),
    "h100": ("9.0", 0, True, True, "10.16"),
    "l4": ("8.9", 0, True, True, "10.16"),
}

ORIN_NANO = TARGET_DIR / "jetson-orin-nano.toml"


def test_the_built_in_targets_are_exactly_the_documented_ones():
    assert {path.stem for path in BUILTIN_FILES} == EXPECTED
    assert {target.name for target in list_targets()} == EXPECTED


@pytest.mark.parametrize("path", BUILTIN_FILES, ids=lambda p: p.stem)
def test_every_target_file_loads(path):
    target = load_target_file(path)
    assert target.name == path.stem
    assert target.source == str(path)
    assert "fp32" in target.precisions or target.from_device
    height, width = target.input_size
    assert height >= 32 and width >= 32


@pytest.mark.parametrize("name", sorted(FACTS))
def test_hardware_facts(name):
    capability, dla, fp8, sparsity, trt = FACTS[name]
    target = load_target(name)
    assert target.compute_capability == capability
    assert target.dla_cores == dla
    assert target.supports("fp8") is fp8
    assert target.sparsity is sparsity
    assert target.default_tensorrt == trt
    assert {"fp32", "fp16", "int8"} <= set(target.precisions)
    assert target.gpu_memory_gb > 0 and target.default_workspace_mb > 0


def test_jetpack_ships_the_right_tensorrt():
    orin = load_target("jetson-agx-orin")
    assert orin.tensorrt_for_jetpack("6.1") == orin.tensorrt_for_jetpack("6.2") == "10.3"
    assert orin.tensorrt_for_jetpack("5.1") == "8.5"
    xavier = load_target("jetson-xavier-nx")
    assert xavier.tensorrt_for_jetpack("5.1") == "8.5"
    with pytest.raises(UsageError, match="no JetPack 6.1"):
        xavier.tensorrt_for_jetpack("6.1")  # JetPack 6 dropped Xavier


def test_power_modes_are_listed_for_jetsons_only():
    nano = {mode.name: mode.watts for mode in load_target("jetson-orin-nano").power_modes}
    assert nano == {"MAXN_SUPER": None, "25W": 25, "15W": 15, "7W": 7}
    agx = {mode.name for mode in load_target("jetson-agx-orin").power_modes}
    assert agx == {"MAXN", "50W", "30W", "15W"}
    assert any("10W" in mode.name for mode in load_target("jetson-xavier-nx").power_modes)
    assert any(mode.name == "MAXN" for mode in load_target("jetson-agx-xavier").power_modes)
    for target in list_targets():
        assert bool(target.power_modes) == (target.kind == "jetson")


def test_an_alias_resolves_and_says_so_and_jetson_orin_is_the_family():
    target = load_target("agx-orin")
    assert target.name == "jetson-agx-orin"
    assert target.resolved_from == "agx-orin"
    assert load_target("jetson-agx-orin").resolved_from is None
    family = load_target("jetson-orin")  # not silently the AGX: the module is resolved on the device
    assert family.name == "jetson-orin" and family.family == "jetson-orin"
    assert "resolved on the device" in family.resolved_from
    assert load_target("Jetson-Orin-Nano").name == "jetson-orin-nano"


def test_unknown_name_lists_close_matches():
    with pytest.raises(UsageError, match="unknown target 'jetson-orin-nan'.*jetson-orin-nano"):
        load_target("jetson-orin-nan")
    with pytest.raises(UsageError, match="choose one of: .*rtx-3090"):
        load_target("quantum-annealer")


def test_a_path_to_a_toml_file_is_a_target(tmp_path):
    path = tmp_path / "jetson-orin-nano.toml"
    path.write_text(ORIN_NANO.read_text())
    assert load_target(str(path)).source == str(path)
    assert load_target(path).name == "jetson-orin-nano"
    with pytest.raises(UsageError, match="does not exist"):
        load_target(tmp_path / "missing.toml")


def _write(tmp_path, text: str, name: str = "jetson-orin-nano") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _replace(old: str, new: str) -> str:
    text = ORIN_NANO.read_text()
    assert old in text
    return text.replace(old, new, 1)


def test_unknown_key_names_the_file_and_the_key(tmp_path):
    path = _write(tmp_path, _replace("dla_cores = 0", "dla_cores = 0\ndla_corse = 1"))
    with pytest.raises(UsageError, match=r"jetson-orin-nano\.toml: unknown key 'dla_corse'; did you mean 'dla_cores'"):
        load_target_file(path)
    path = _write(tmp_path, ORIN_NANO.read_text() + '\n[[power_modes]]\nname = "5W"\nvolts = 5\n')
    with pytest.raises(UsageError, match=r"unknown key 'power_modes\[4\]\.volts'"):
        load_target_file(path)


@pytest.mark.parametrize("old, new, message", [
    ("dla_cores = 0", 'dla_cores = "0"', "'dla_cores' must be a whole number"),
    ("dla_cores = 0", "dla_cores = true", "'dla_cores' must be a whole number"),
    ("sparsity = true", "sparsity = 1", "'sparsity' must be true or false"),
    ("gpu_memory_gb = 8", "gpu_memory_gb = true", "'gpu_memory_gb' must be a number"),
    ('compute_capability = "8.7"', "compute_capability = 8.7", "'compute_capability' must be a string"),
    ('kind = "jetson"', 'kind = "fpga"', "'kind' must be one of jetson, gpu, cpu"),
    ('precisions = ["fp32", "fp16", "int8"]', 'precisions = ["fp32", "bf17"]', "unknown precision 'bf17'"),
    ('precisions = ["fp32", "fp16", "int8"]', 'precisions = "fp16"', "'precisions' must be a list of strings"),
    ('default_input = "360x480"', 'default_input = "360*480"', "'default_input' must be"),
    ('default_tensorrt = "10.3"', 'default_tensorrt = "10.x"', "'default_tensorrt' must be a version"),
    ('default_tensorrt = "10.3"', 'default_tensorrt = "10.16"', "not in tensorrt_versions"),
    ('aliases = ["orin-nano", "jetson-orin-nano-super"]', 'aliases = ["Orin Nano"]', "not a usable target name"),
])
def test_wrong_values_are_refused_with_the_key_named(tmp_path, old, new, message):
    with pytest.raises(UsageError, match=message):
        load_target_file(_write(tmp_path, _replace(old, new)))


def test_structural_mistakes_are_refused(tmp_path):
    with pytest.raises(UsageError, match="missing required key 'compute_capability'"):
        load_target_file(_write(tmp_path, _replace('compute_capability = "8.7"\n', "")))
    with pytest.raises(UsageError, match="does not match the file name"):
        load_target_file(_write(tmp_path, ORIN_NANO.read_text(), name="orin"))
    with pytest.raises(UsageError, match="not valid TOML"):
        load_target_file(_write(tmp_path, "name = "))
    cpu_with_dla = (TARGET_DIR / "cpu.toml").read_text() + "dla_cores = 1\n"
    with pytest.raises(UsageError, match="'dla_cores' does not apply to a cpu target"):
        load_target_file(_write(tmp_path, cpu_with_dla, name="cpu"))
    cuda_with_capability = (TARGET_DIR / "cuda.toml").read_text() + 'compute_capability = "8.6"\n'
    with pytest.raises(UsageError, match="read from the device"):
        load_target_file(_write(tmp_path, cuda_with_capability, name="cuda"))


def test_cpu_target_builds_no_engine():
    cpu = load_target("cpu")
    assert cpu.kind == "cpu" and not cpu.builds_engines
    assert cpu.compute_capability is None and cpu.default_tensorrt is None
    assert load_target("onnxruntime").name == "cpu"


def test_cuda_is_listed_without_probing_and_resolved_from_the_device(monkeypatch):
    calls = []

    def probe():
        calls.append(1)
        return CudaDevice("NVIDIA GeForce RTX 3090", "8.6", 23.7)

    monkeypatch.setattr(host, "probe_cuda_device", probe)
    monkeypatch.setattr(host, "installed_tensorrt", lambda: "10.8")
    listed = {target.name: target for target in list_targets()}
    assert listed["cuda"].compute_capability is None and not calls
    cuda = load_target("cuda")
    assert calls == [1]
    assert (cuda.compute_capability, cuda.gpu_memory_gb, cuda.default_tensorrt) == ("8.6", 23.7, "10.8")
    assert cuda.precisions == ("fp32", "fp16", "int8") and cuda.sparsity and cuda.dla_cores == 0
    assert "RTX 3090" in cuda.resolved_from and "RTX 3090" in cuda.description


def test_cuda_without_a_device_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(host, "_probe_pycuda", lambda: None)
    monkeypatch.setattr(host, "_probe_nvidia_smi", lambda: None)
    with pytest.raises(UsageError, match="no CUDA device is visible"):
        load_target("cuda")


def test_device_capabilities_follow_the_compute_capability():
    template = load_target_file(TARGET_DIR / "cuda.toml")
    ada = target_from_device(template, CudaDevice("NVIDIA L4", "8.9", 22.5))
    assert ada.supports("fp8") and ada.sparsity
    assert ada.default_tensorrt == template.default_tensorrt  # no TensorRT installed: the file's default
    turing = target_from_device(template, CudaDevice("Tesla T4", "7.5", 15.0), tensorrt="8.6")
    assert turing.precisions == ("fp32", "fp16", "int8") and not turing.sparsity
    assert turing.default_tensorrt == "8.6"


def test_nvidia_smi_output_is_parsed():
    device = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 9.0, 81559\nNVIDIA H100 80GB HBM3, 9.0, 81559\n")
    assert device == CudaDevice("NVIDIA H100 80GB HBM3", "9.0", pytest.approx(81559 / 1024))
    assert parse_nvidia_smi("") is None
    assert parse_nvidia_smi("Failed to initialize NVML: Driver/library version mismatch") is None


def test_repo_root_targets_is_the_package_data():
    root = Path(__file__).resolve().parents[1] / "targets"
    if not root.exists():
        pytest.skip("no repo-root targets/ (installed package)")
    assert root.resolve() == TARGET_DIR.resolve()


def test_targets_command_lists_every_target():
    from typer.testing import CliRunner

    from edgeseg.cli import app

    result = CliRunner().invoke(app, ["targets"])
    assert result.exit_code == 0, result.output
    for name in EXPECTED:
        assert name in result.output
    assert "MAXN_SUPER" in result.output and "jetson-orin" in result.output


def test_the_pure_plan_imports_nothing_that_probes_the_host():
    """engine.plan and the target schema must stay pure: the probes (nvidia-smi, TensorRT's metadata) and the
    TOML loading live elsewhere, so a plan is tested, and made, without touching the machine."""
    import subprocess
    import sys

    code = ("import sys, edgeseg.engine.plan; "
            "print(sorted(m for m in ('edgeseg.engine.host', 'edgeseg.target.loading', 'subprocess', 'tomllib') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_old_module_still_exports_the_moved_names():
    from edgeseg import target_registry
    from edgeseg.target import loading, schema

    assert target_registry.load_target is loading.load_target and target_registry.Target is schema.Target
    assert target_registry.probe_cuda_device is host.probe_cuda_device
