"""Target families: 'jetson-orin' resolves the module on the device. Resolution is checked on /proc/device-tree
strings in the boards' form, in Python (edgeseg engine build) and in the kit's build_engine.sh, which must agree."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edgeseg.engine.bundle import KitWritten, finish_for_target, load_kit_target, read_kit_plan
from edgeseg.engine.plan import BuildOptions, plan_build
from edgeseg.errors import UsageError
from edgeseg.target_family import DeviceFacts, read_device_facts, resolve_module
from edgeseg.target_registry import load_family, load_target
from tests.engine_helpers import make_bundle
from tests.log_lines import captured
from tests.test_engine_bundle import fake_trtexec, no_tensorrt  # noqa: F401 (fixture)

# (model, compatible as the device tree stores it, MemTotal kB) -> rule id, in the form the boards' reference
# device trees (L4T 35 and 36) report them; written for these tests, not captured on a board.
DEVICES = {
    "agx-orin-64gb": ("NVIDIA Jetson AGX Orin Developer Kit",
                      "nvidia,p3737-0000+p3701-0005\0nvidia,p3737-0000\0nvidia,p3701-0005\0nvidia,tegra234\0",
                      64311796, "jetson-agx-orin"),
    "agx-orin-32gb": ("NVIDIA Jetson AGX Orin Developer Kit",
                      "nvidia,p3737-0000+p3701-0000\0nvidia,p3737-0000\0nvidia,p3701-0000\0nvidia,tegra234\0",
                      31268864, "jetson-agx-orin-32gb"),
    "orin-nx-16gb": ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
                     "nvidia,p3768-0000+p3767-0000\0nvidia,p3767-0000\0nvidia,tegra234\0", 15757312, "jetson-orin-nx"),
    "orin-nx-8gb": ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
                    "nvidia,p3768-0000+p3767-0001\0nvidia,p3767-0001\0nvidia,tegra234\0", 7659704,
                    "jetson-orin-nx-8gb"),
    "orin-nano-devkit": ("NVIDIA Jetson Orin Nano Developer Kit",
                         "nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0", 7802880,
                         "jetson-orin-nano"),
    "orin-nano-super": ("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
                        "nvidia,p3768-0000+p3767-0005-super\0nvidia,p3767-0005\0nvidia,tegra234\0", 7802880,
                        "jetson-orin-nano"),
    "orin-nano-4gb": ("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit",
                      "nvidia,p3768-0000+p3767-0004\0nvidia,p3767-0004\0nvidia,tegra234\0", 3555432,
                      "jetson-orin-nano-4gb"),
    # a third-party carrier with its own model string: the module part number still says Orin NX 16GB
    "recomputer-j4012": ("reComputer J4012", "nvidia,p3509-0000+p3767-0000\0nvidia,p3767-0000\0nvidia,tegra234\0",
                         15757312, "jetson-orin-nx"),
}
XAVIERS = {
    "xavier-nx": ("NVIDIA Jetson Xavier NX Developer Kit", "nvidia,p3509-0000+p3668-0000\0nvidia,p3668-0000\0"
                  "nvidia,tegra194\0", 7964036, "jetson-xavier-nx"),
    "agx-xavier": ("Jetson-AGX", "nvidia,p2972-0000\0nvidia,galen\0nvidia,tegra194\0", 32528128, "jetson-agx-xavier"),
}
WORKSPACE = {"jetson-agx-orin": 4096, "jetson-agx-orin-32gb": 4096, "jetson-orin-nx": 2048, "jetson-orin-nx-8gb": 1024,
             "jetson-orin-nano": 1024, "jetson-orin-nano-4gb": 512}


def fake_proc(root: Path, model: str, compatible: str, mem_kb: int) -> Path:
    (root / "device-tree").mkdir(parents=True)
    (root / "device-tree" / "model").write_bytes(model.encode() + b"\0")  # the device tree NUL-terminates
    (root / "device-tree" / "compatible").write_bytes(compatible.encode())
    (root / "meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree:         1234 kB\n")
    return root


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_orin_modules_resolve_from_reference_device_trees(tmp_path, device):
    model, compatible, mem_kb, expected = DEVICES[device]
    facts = read_device_facts(fake_proc(tmp_path / "proc", model, compatible, mem_kb))
    assert facts.model == model and facts.memory_gb == pytest.approx(mem_kb / 2**20)
    assert resolve_module(load_family("jetson-orin"), facts).id == expected


@pytest.mark.parametrize("device", sorted(XAVIERS))
def test_xavier_modules_resolve_and_are_not_orins(tmp_path, device):
    model, compatible, mem_kb, expected = XAVIERS[device]
    facts = read_device_facts(fake_proc(tmp_path / "proc", model, compatible, mem_kb))
    assert resolve_module(load_family("jetson-xavier"), facts).id == expected
    with pytest.raises(UsageError, match=f"model '{model}'.*matches no module of jetson-orin.*EDGESEG_MODULE"):
        resolve_module(load_family("jetson-orin"), facts)


def test_memory_variant_needs_the_memory():
    family = load_family("jetson-orin")
    no_memory = DeviceFacts("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", None, None)
    assert resolve_module(family, no_memory).id == "jetson-orin-nx"  # the bound cannot hold without a size
    assert resolve_module(family, no_memory, forced="jetson-orin-nx-8gb").id == "jetson-orin-nx-8gb"
    with pytest.raises(UsageError, match="EDGESEG_MODULE=orin-nano is not a module of jetson-orin"):
        resolve_module(family, no_memory, forced="orin-nano")


def test_the_host_plans_only_what_every_module_shares():
    family = load_target("jetson-orin")
    assert family.kind == "jetson" and family.compute_capability == "8.7" and family.dla_cores == 0
    assert family.default_workspace_mb == 512 and family.gpu_memory_gb == 4  # the smallest module: fits everywhere
    assert family.precisions == ("fp32", "fp16", "int8") and "resolved on the device" in family.resolved_from
    with pytest.raises(UsageError, match="jetson-orin is a family.*DLA core is chosen on the device"):
        plan_build(family, "model.onnx", BuildOptions(precision="fp16", dla_core=0), "10.3")


@pytest.fixture()
def family_kit(tmp_path, no_tensorrt) -> tuple[Path, KitWritten]:  # noqa: F811
    bundle = make_bundle(tmp_path / "bundle")
    lines: list[str] = []
    with captured("edgeseg.engine", lines.append):
        result = finish_for_target(bundle, load_target("jetson-orin"), "int8")
    assert any("resolves the module on the device" in line for line in lines)
    return bundle, result


def test_family_kit_carries_each_module_plan(family_kit):
    bundle, result = family_kit
    assert result.family["resolved"] == "on the device"
    assert {rule: entry["workspace_mb"] for rule, entry in result.family["modules"].items()} == WORKSPACE
    modules = json.loads((bundle / "modules.json").read_text())
    assert modules["jetson-orin-nx-8gb"]["dla_cores"] == 1 and modules["jetson-orin-nano"]["dla_cores"] == 0
    assert modules["jetson-orin-nano"]["power_modes"] == ["MAXN_SUPER", "25W", "15W", "7W"]
    assert sorted(path.name for path in (bundle / "targets").iterdir()) == [
        "jetson-agx-orin.toml", "jetson-orin-nano.toml", "jetson-orin-nx.toml"]
    readme = (bundle / "README.md").read_text()
    assert "jetson-orin is a family: the module is resolved on the device" in readme
    assert "| `jetson-orin-nx-8gb` | jetson-orin-nx | 1024 | 1 |" in readme
    assert (bundle / "nvinfer_config.txt").is_file()


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_build_engine_sh_resolves_the_module_like_python(tmp_path, family_kit, device, monkeypatch):
    bundle, _ = family_kit
    model, compatible, mem_kb, expected = DEVICES[device]
    proc = fake_proc(tmp_path / "proc", model, compatible, mem_kb)
    _, env = fake_trtexec(tmp_path)
    done = subprocess.run(["bash", str(bundle / "build_engine.sh")], env={**env, "EDGESEG_PROC": str(proc)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert f"module {expected}" in done.stdout
    args = (tmp_path / "trtexec-args.txt").read_text().splitlines()
    assert f"--memPoolSize=workspace:{WORKSPACE[expected]}M" in args

    # edgeseg engine build resolves the same module, with its overrides
    monkeypatch.setenv("EDGESEG_PROC", str(proc))
    target = load_kit_target(bundle, read_kit_plan(bundle))
    assert target.resolved_from.endswith(f"as {expected}") and "resolved on this device" in target.resolved_from
    assert target.default_workspace_mb == WORKSPACE[expected]


def test_build_engine_sh_refuses_an_unknown_device(tmp_path, family_kit):
    bundle, _ = family_kit
    proc = fake_proc(tmp_path / "proc", *XAVIERS["xavier-nx"][:3])
    _, env = fake_trtexec(tmp_path)
    done = subprocess.run(["bash", str(bundle / "build_engine.sh")], env={**env, "EDGESEG_PROC": str(proc)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "matches no module of jetson-orin" in done.stderr
    assert not (tmp_path / "trtexec-args.txt").exists()
    forced = subprocess.run(["bash", str(bundle / "build_engine.sh")],
                            env={**env, "EDGESEG_PROC": str(proc), "EDGESEG_MODULE": "jetson-orin-nano"},
                            capture_output=True, text=True, timeout=60, check=False)
    assert forced.returncode == 0 and "module jetson-orin-nano" in forced.stdout


def test_dla_is_refused_on_a_resolved_orin_nano(tmp_path, family_kit, monkeypatch):
    bundle, _ = family_kit
    monkeypatch.setenv("EDGESEG_PROC", str(fake_proc(tmp_path / "proc", *DEVICES["orin-nano-devkit"][:3])))
    nano = load_kit_target(bundle, read_kit_plan(bundle))
    assert nano.name == "jetson-orin-nano" and nano.dla_cores == 0
    with pytest.raises(UsageError, match="target jetson-orin-nano has no DLA \\(jetson-orin resolved on this device"):
        plan_build(nano, "model.int8.onnx", BuildOptions(precision="int8", onnx_has_qdq=True,
                                                         onnx_precision="int8-qdq", dla_core=0), "10.3")
    monkeypatch.setenv("EDGESEG_MODULE", "jetson-orin-nx-8gb")
    nx8 = load_kit_target(bundle, read_kit_plan(bundle))
    assert nx8.dla_cores == 1
    with pytest.raises(UsageError, match="DLA core 1 does not exist on jetson-orin-nx"):
        plan_build(nx8, "model.int8.onnx", BuildOptions(precision="fp16", onnx_precision="fp16", dla_core=1), "10.3")


def test_host_report_says_the_module_is_resolved_on_the_device(tmp_path, family_kit):
    from edgeseg.report import write_reports

    bundle, result = family_kit
    measured = {"dataset": "camvid/test", "images": 1, "backend": "ort-cpu", "threads": 1,
                "latency_method": "interleaved", "precisions": {}}
    write_reports(bundle, "tiny-conv", "jetson-orin", measured, {"checks": {}, "engine": result.to_dict()})
    report = (bundle / "report.md").read_text()
    assert "Module: jetson-orin is a family; the module is resolved on the device" in report
    assert "jetson-orin-nano-4gb (workspace 512 MiB, 0 DLA)" in report
    assert "DeepStream: nvinfer_config.txt runs model.fp16.deepstream.onnx" in report


def test_agx_orin_32gb_has_its_own_power_modes(family_kit):
    bundle, _ = family_kit
    modules = json.loads((bundle / "modules.json").read_text())
    assert modules["jetson-agx-orin-32gb"]["power_modes"] == ["MAXN", "40W", "30W", "15W"]
    assert modules["jetson-agx-orin"]["power_modes"] == ["MAXN", "50W", "30W", "15W"]


# ---------------------------------------------------------------------------------------------------------------
# On the device (a stand-in TensorRT, as in test_engine_bundle): the module's plan is applied

def test_engine_build_applies_the_resolved_modules_plan(tmp_path, family_kit, monkeypatch):
    from edgeseg.engine.bundle import build_bundle
    from tests.test_engine_bundle import pretend_orin

    bundle, _ = family_kit
    monkeypatch.setenv("EDGESEG_PROC", str(fake_proc(tmp_path / "proc", *DEVICES["orin-nx-8gb"][:3])))
    calls = pretend_orin(monkeypatch)
    lines: list[str] = []
    with captured("edgeseg.engine", lines.append):
        result = build_bundle(bundle)
    assert result.plan.target == "jetson-orin-nx" and result.plan.workspace_mb == 1024
    assert ("set_memory_pool_limit", "WORKSPACE", 1024 << 20) in calls
    assert any("resolved on this device" in line and "as jetson-orin-nx-8gb" in line and "power modes" in line
               for line in lines), lines

    # the Orin NX 8GB has one DLA core: core 1 is refused, core 0 is built
    with pytest.raises(UsageError, match="DLA core 1 does not exist on jetson-orin-nx"):
        with captured("edgeseg.engine", lines.append):
            build_bundle(bundle, precision="fp16", dla_core=1)

    monkeypatch.setenv("EDGESEG_PROC", str(fake_proc(tmp_path / "nano", *DEVICES["orin-nano-devkit"][:3])))
    with pytest.raises(UsageError, match="target jetson-orin-nano has no DLA"):
        with captured("edgeseg.engine", lines.append):
            build_bundle(bundle, precision="fp16", dla_core=0)


def test_edgeseg_build_on_the_device_itself_resolves_the_module(tmp_path, monkeypatch):
    from tests.test_engine_bundle import pretend_orin

    bundle = make_bundle(tmp_path / "bundle")
    monkeypatch.setenv("EDGESEG_PROC", str(fake_proc(tmp_path / "proc", *DEVICES["agx-orin-64gb"][:3])))
    pretend_orin(monkeypatch)
    lines: list[str] = []
    with captured("edgeseg.engine", lines.append):
        result = finish_for_target(bundle, load_target("jetson-orin"), "int8")
    assert result.engine == "model.int8.engine" and result.plan.target == "jetson-agx-orin"
    assert result.plan.workspace_mb == 4096 and "as jetson-agx-orin" in result.plan.resolved_from
    assert not (bundle / "modules.json").exists()  # built here: no kit
    assert "## DeepStream" in (bundle / "README.md").read_text()


def test_dla_build_reports_the_placement(tmp_path, family_kit, monkeypatch):
    from edgeseg.engine.bundle import build_bundle
    from tests.test_engine_bundle import pretend_orin

    bundle, _ = family_kit
    report = (Path(__file__).parent / "fixtures" / "trt_dla_placement.log").read_text().splitlines()
    messages = [line.split("[TRT] ", 1)[1] for line in report]  # as the ILogger receives them
    monkeypatch.setenv("EDGESEG_PROC", str(fake_proc(tmp_path / "proc", *DEVICES["orin-nx-8gb"][:3])))
    calls = pretend_orin(monkeypatch, build_messages=messages)
    lines: list[str] = []
    with captured("edgeseg.engine", lines.append):
        build_bundle(bundle, precision="fp16", dla_core=0)
    assert ("config.DLA_core", 0) in calls
    assert "DLA placement: 2 subgraph(s) on DLA core 0, 4 layer(s) on the GPU" in lines
    assert "  GPU: SOFTMAX /segformer/encoder/block.0.0/attention/self/Softmax" in lines
    sidecar = json.loads((bundle / "model.fp16.engine.json").read_text())
    assert len(sidecar["layers"]["placement"]["dla_subgraphs"]) == 2 and sidecar["dla_core"] == 0
