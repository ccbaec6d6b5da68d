"""The engine stage of a bundle on a host that cannot build (no TensorRT here): a complete, relocatable
cross-build kit whose build_engine.sh runs trtexec exactly as the plan says, and `edgeseg engine build`
failing with one line that names the 'trt' extra."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import types
from pathlib import Path

import onnx
import pytest

from tests.test_cli import help_command_names, run_cli
from edgeseg.engine.build import EngineBuildError
from edgeseg.engine.bundle import (KIT_FILES, EngineOptions, build_bundle, build_options, choose_onnx,
                                   finish_for_target, load_kit_target, options_from_plan, plan_changes, read_kit_plan)
from edgeseg.engine.host import HostFacts, why_host_cannot_build
from edgeseg.engine.onnx_facts import read_onnx_facts
from edgeseg.engine.plan import BuildPlan, plan_build
from edgeseg.engine.sidecar import check_engine_compatibility
from edgeseg.errors import UsageError
from edgeseg.target_registry import CudaDevice, load_target
from edgeseg.zoo.contract import Preprocessing
from tests.engine_helpers import INPUT_NAME, PREPROCESSING, make_bundle, make_model
from tests.log_lines import captured

KIT_TARGETS = ("agx-orin", "jetson-xavier-nx", "rtx-4090")

FAKE_TRTEXEC = r"""#!/bin/sh
# Records its arguments and working directory, insists on a relative --onnx that exists from here, then
# writes the --saveEngine file, as trtexec would.
printf '%s\n' "$@" > "$FAKE_TRTEXEC_ARGS"
pwd > "$FAKE_TRTEXEC_CWD"
onnx=""; engine=""
for arg in "$@"; do
    case "$arg" in
        --onnx=*) onnx="${arg#--onnx=}" ;;
        --saveEngine=*) engine="${arg#--saveEngine=}" ;;
    esac
done
case "$onnx" in /*) echo "fake trtexec: absolute --onnx $onnx" >&2; exit 2 ;; esac
[ -f "$onnx" ] || { echo "fake trtexec: no $onnx in $(pwd)" >&2; exit 3; }
printf 'engine built from %s\n' "$onnx" > "$engine"
"""


@pytest.fixture()
def bundle(tmp_path) -> Path:
    return make_bundle(tmp_path / "made-here" / "bundle")


@pytest.fixture()
def no_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return
    pytest.skip("TensorRT is installed here; these tests are about a host that cannot build")


def fake_trtexec(tmp_path: Path) -> tuple[Path, dict]:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    tool = bin_dir / "trtexec"
    tool.write_text(FAKE_TRTEXEC)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "FAKE_TRTEXEC_ARGS": str(tmp_path / "trtexec-args.txt"),
           "FAKE_TRTEXEC_CWD": str(tmp_path / "trtexec-cwd.txt")}
    return bin_dir, env


def assert_no_absolute_paths(bundle: Path, *roots: Path) -> None:
    for name in ("plan.json", "build_engine.sh", "README.md"):
        text = (bundle / name).read_text()
        for root in (bundle, *roots):
            assert str(root) not in text, f"{name} names {root}"
    plan = json.loads((bundle / "plan.json").read_text())
    for key in ("onnx_path", "timing_cache", "calibration_cache"):
        assert not str(plan[key] or "").startswith("/"), (key, plan[key])


# ---------------------------------------------------------------------------------------------------------------
# The kit

@pytest.mark.parametrize("target_name", KIT_TARGETS)
def test_kit_is_complete_and_matches_the_plan(bundle, target_name, no_tensorrt):
    target = load_target(target_name)
    lines: list[str] = []
    with captured("edgeseg.engine", lines.append):
        result = finish_for_target(bundle, target, "int8")

    assert result.engine is None
    assert "tensorrt is not installed" in result.reason
    assert sum(result.reason in line for line in lines) == 1, lines  # said once, on one line
    for name in KIT_FILES:
        assert (bundle / name).is_file(), name
    assert os.access(bundle / "build_engine.sh", os.X_OK)

    plan = BuildPlan.from_dict(json.loads((bundle / "plan.json").read_text()))
    assert plan == result.plan
    # the JSON 'edgeseg build' writes into report.json: the same keys, in the same order, as before the dataclass
    assert list(result.to_dict()) == ["engine", "reason", "plan", "trtexec", "kit", "deepstream"]
    assert result.to_dict()["plan"] == plan.to_dict() and result.to_dict()["kit"] == list(KIT_FILES)
    assert plan.target == target.name and plan.onnx_path == "model.int8.onnx" and plan.onnx_has_qdq
    assert plan.calibrator is None  # Q/DQ is kept on every TensorRT, 8.5 included
    assert plan.tensorrt_version == target.default_tensorrt
    assert plan.opt_shape == (1, 3, 32, 32) and plan.input_name == INPUT_NAME  # the ONNX's fixed input
    trtexec_line = " ".join(plan.to_trtexec("model.int8.engine"))
    assert result.trtexec == trtexec_line
    script_lines = (bundle / "build_engine.sh").read_text().splitlines()
    assert trtexec_line in script_lines
    assert 'cd "$(dirname "$0")"' in script_lines
    assert any("edgeseg engine build ." in line for line in script_lines)
    readme = (bundle / "README.md").read_text()
    for needed in (target.name, f"TensorRT {plan.tensorrt_version}", "edgeseg engine build .", "./build_engine.sh",
                   trtexec_line, "model.int8.engine"):
        assert needed in readme, needed
    kit_target = load_kit_target(bundle, plan)
    assert (kit_target.name, kit_target.compute_capability) == (target.name, target.compute_capability)
    assert_no_absolute_paths(bundle, Path.cwd())


def test_xavier_kit_plans_tensorrt_8_5_and_jetpack_5(bundle, no_tensorrt):
    result = finish_for_target(bundle, load_target("jetson-xavier-nx"), "int8")
    plan = result.plan
    assert plan.tensorrt_version == "8.5" and plan.network_flags == ("EXPLICIT_BATCH",)
    assert plan.builder_flags == ("INT8",) and plan.builder_optimization_level is None
    assert "JetPack 5.1" in (bundle / "README.md").read_text()


@pytest.mark.parametrize("precision, onnx_name", [("fp32", "model.onnx"), ("fp16", "model.fp16.onnx")])
def test_precision_picks_its_onnx(bundle, precision, onnx_name, no_tensorrt):
    result = finish_for_target(bundle, load_target("jetson-orin-nano"), precision)
    assert result.plan.onnx_path == onnx_name
    assert result.plan.engine_precision == precision  # never changed silently
    assert f"--saveEngine=model.{precision}.engine" in result.trtexec


def test_bundle_moved_elsewhere_still_builds_with_trtexec(tmp_path, bundle, no_tensorrt):
    result = finish_for_target(bundle, load_target("agx-orin"), "int8")
    moved = tmp_path / "somewhere" / "else" / "copied-bundle"
    moved.parent.mkdir(parents=True)
    shutil.move(str(bundle), str(moved))
    assert not bundle.exists()
    _, env = fake_trtexec(tmp_path)

    done = subprocess.run(["bash", str(moved / "build_engine.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (moved / "model.int8.engine").read_text() == "engine built from model.int8.onnx\n"
    recorded = (tmp_path / "trtexec-args.txt").read_text().splitlines()
    assert ["trtexec", *recorded] == result.plan.to_trtexec("model.int8.engine")
    assert Path((tmp_path / "trtexec-cwd.txt").read_text().strip()).resolve() == moved.resolve()
    assert "edgeseg engine sidecar model.int8.engine" in done.stdout  # how to make the engine runnable
    assert_no_absolute_paths(moved, bundle)


def test_script_says_so_when_trtexec_is_missing(tmp_path, bundle, no_tensorrt):
    finish_for_target(bundle, load_target("rtx-4090"), "fp16")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if shutil.which("trtexec", path=env["PATH"] + ":/usr/src/tensorrt/bin"):
        pytest.skip("a real trtexec is installed here")
    done = subprocess.run(["bash", str(bundle / "build_engine.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 127 and "trtexec not found" in done.stderr
    assert not (bundle / "model.fp16.engine").exists()


def test_legacy_calibrator_on_tensorrt_8(tmp_path, bundle, no_tensorrt):
    result = finish_for_target(bundle, load_target("jetson-xavier-nx"), "int8", EngineOptions(legacy_calibrator=True))
    plan = result.plan
    assert plan.onnx_path == "model.onnx" and plan.calibrator == "entropy2"
    assert plan.calibration_cache == "model.calibration.cache" and plan.engine_precision == "int8"
    assert "--calib=model.calibration.cache" in result.trtexec
    readme = (bundle / "README.md").read_text()
    assert "calibration.json" in readme and "--data-root" in readme

    # trtexec cannot calibrate: without the cache the script stops before it, with it the build runs
    _, env = fake_trtexec(tmp_path)
    script = ["bash", str(bundle / "build_engine.sh")]
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "model.calibration.cache is missing" in done.stderr
    assert not (tmp_path / "trtexec-args.txt").exists()
    (bundle / "model.calibration.cache").write_bytes(b"TRT-8502-EntropyCalibration2\n")
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (bundle / "model.int8.engine").is_file()


def test_chosen_onnx_without_qdq_calibrates_in_tensorrt(bundle, no_tensorrt):
    result = finish_for_target(bundle, load_target("jetson-xavier-nx"), "int8", EngineOptions(onnx="model.onnx"))
    assert result.plan.calibrator == "entropy2" and result.plan.onnx_path == "model.onnx"


def test_int8_without_the_int8_onnx_says_what_to_do(tmp_path, no_tensorrt):
    bundle = make_bundle(tmp_path / "bundle", with_int8=False)
    with pytest.raises(UsageError, match="edgeseg quantize.*legacy_calibrator"):
        finish_for_target(bundle, load_target("jetson-orin-nano"), "int8")


def test_refusals(bundle, tmp_path, no_tensorrt):
    orin = load_target("jetson-orin-nano")
    with pytest.raises(UsageError, match="unknown engine option 'dla'"):
        finish_for_target(bundle, orin, "int8", {"dla": 0})  # options by name (a dict) are checked
    with pytest.raises(UsageError, match="unknown engine option 'dla'"):
        EngineOptions.from_dict({"dla": 0, "dla_core": 0})
    with pytest.raises(UsageError, match="relative"):
        finish_for_target(bundle, orin, "int8", {"timing_cache": str(tmp_path / "timing.cache")})
    with pytest.raises(UsageError, match="not 'fp8'"):
        finish_for_target(bundle, load_target("rtx-4090"), "fp8")
    with pytest.raises(UsageError, match="fixed input 1x3x32x32"):
        finish_for_target(bundle, orin, "int8", {"shape": "64x64"})
    with pytest.raises(UsageError, match="already carries Q/DQ"):
        finish_for_target(bundle, orin, "int8", {"legacy_calibrator": True, "onnx": "model.int8.onnx"})
    with pytest.raises(UsageError, match="has no DLA"):  # the plan's refusals come through unchanged
        finish_for_target(bundle, orin, "int8", {"dla_core": 0})
    with pytest.raises(UsageError, match="does not exist"):
        finish_for_target(tmp_path / "absent", orin, "int8")
    assert not (bundle / "plan.json").exists()  # nothing was written by a refused request


def test_onnx_without_preprocessing_is_refused(tmp_path, bundle):
    onnx.save(make_model("fp16", preprocessing=False), str(bundle / "model.fp16.onnx"))
    with pytest.raises(UsageError, match="no edgeseg preprocessing metadata"):
        choose_onnx(bundle, "fp16")


def test_dynamic_onnx_is_planned_at_the_models_input_size(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    onnx.save(make_model("fp16", dynamic=True), str(bundle / "model.fp16.onnx"))
    target = load_target("rtx-4090")
    choice = choose_onnx(bundle, "fp16")
    assert not choice.facts.static_input
    plan = plan_build(target, choice.name, build_options("fp16", choice, target, EngineOptions()), "10.16")
    assert plan.opt_shape == (1, 3, *PREPROCESSING.input_size)  # the contract's size, not the target's default
    plan = plan_build(target, choice.name, build_options("fp16", choice, target, EngineOptions(shape="64x96")), "10.16")
    assert plan.opt_shape == (1, 3, 64, 96)


# ---------------------------------------------------------------------------------------------------------------
# Planning again on the device

@pytest.mark.parametrize("target_name, precision, options", [
    ("jetson-orin-nano", "int8", {}),
    ("jetson-xavier-nx", "int8", {"legacy_calibrator": True}),
    ("jetson-agx-orin", "fp16", {"dla_core": 1, "workspace_mb": 2048, "tensorrt": "8.6"}),
    ("rtx-4090", "fp16", {"sparse_weights": True, "timing_cache": None}),
])
def test_options_from_plan_give_the_same_plan(bundle, target_name, precision, options, no_tensorrt):
    target = load_target(target_name)
    plan = finish_for_target(bundle, target, precision, options).plan
    again = plan_build(target, plan.onnx_path, options_from_plan(plan), plan.tensorrt_version)
    assert again == plan
    assert read_kit_plan(bundle) == plan


def test_plan_changes_for_another_tensorrt(bundle, no_tensorrt):
    target = load_target("jetson-orin-nano")
    planned = finish_for_target(bundle, target, "fp16").plan
    on_jetpack_5 = plan_build(target, planned.onnx_path, options_from_plan(planned), "8.5")
    changed = {field for field, _, _ in plan_changes(planned, on_jetpack_5)}
    assert {"strongly_typed", "network_flags", "builder_flags", "builder_optimization_level"} <= changed


# ---------------------------------------------------------------------------------------------------------------
# Can this host build? (pure)

ORIN = CudaDevice("Orin", "8.7", 7.4)
RTX_4090 = CudaDevice("NVIDIA GeForce RTX 4090", "8.9", 23.6)


@pytest.mark.parametrize("host, target_name, expected", [
    (HostFacts(None, None, None, "x86_64"), "rtx-4090", "tensorrt is not installed here"),
    (HostFacts(None, "tensorrt cannot be imported here (OSError: libnvinfer)", RTX_4090, "x86_64"), "rtx-4090",
     "tensorrt cannot be imported here"),
    (HostFacts("10.16.0.5", None, None, "x86_64"), "rtx-4090", "no CUDA GPU is visible here"),
    (HostFacts("10.16.0.5", None, RTX_4090, "x86_64"), "jetson-orin-nano", "is a Jetson board and this host is x86_64"),
    (HostFacts("10.3.0.30", None, ORIN, "aarch64"), "jetson-xavier-nx", "compute capability 8.7) is not a"),
    (HostFacts("10.16.0.5", None, RTX_4090, "x86_64"), "a100", "is not a a100"),
    (HostFacts("10.3.0.30", None, ORIN, "aarch64"), "jetson-orin-nano", None),
    (HostFacts("10.3.0.30", None, ORIN, "aarch64"), "jetson-agx-orin", None),
    (HostFacts("10.16.0.5", None, RTX_4090, "x86_64"), "rtx-4090", None),
])
def test_why_host_cannot_build(host, target_name, expected):
    reason = why_host_cannot_build(load_target(target_name), host)
    if expected is None:
        assert reason is None
    else:
        assert expected in reason and "\n" not in reason


# ---------------------------------------------------------------------------------------------------------------
# ONNX facts without the onnx package

@pytest.mark.parametrize("precision, dynamic", [("fp32", False), ("int8", False), ("fp16", True)])
def test_onnx_facts_agree_with_onnx(tmp_path, precision, dynamic):
    model = make_model(precision, dynamic=dynamic)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    facts = read_onnx_facts(path)
    assert facts.metadata == {prop.key: prop.value for prop in model.metadata_props}
    assert facts.op_types == {node.op_type for node in model.graph.node}
    assert facts.has_qdq == (precision == "int8")
    assert facts.onnx_precision == {"fp32": "fp32", "int8": "int8-qdq", "fp16": "fp16"}[precision]
    graph_input = model.graph.input[0]
    assert facts.input_name == graph_input.name and facts.input_dtype == "float32"
    expected = tuple(dim.dim_value if dim.HasField("dim_value") else dim.dim_param
                     for dim in graph_input.type.tensor_type.shape.dim)
    assert facts.input_shape == expected and facts.static_input == (not dynamic)
    assert Preprocessing.from_dict(facts.preprocessing) == PREPROCESSING


def test_onnx_facts_refuse_what_is_not_onnx(tmp_path):
    for name, content in (("empty.onnx", b""), ("text.onnx", b"this is not a model\n"),
                          ("random.onnx", os.urandom(4096))):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UsageError, match="not a valid ONNX model"):
            read_onnx_facts(tmp_path / name)
    with pytest.raises(UsageError, match="does not exist"):
        read_onnx_facts(tmp_path / "absent.onnx")


# ---------------------------------------------------------------------------------------------------------------
# The CLI

def test_engine_build_without_tensorrt_is_one_line_naming_the_extra(bundle, capsys, no_tensorrt):
    finish_for_target(bundle, load_target("jetson-orin"), "int8")
    code, _, err = run_cli(["engine", "build", str(bundle)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1, err
    assert lines[0].startswith("edgeseg: error:") and "edgeseg[trt]" in lines[0]


def test_engine_build_of_an_unprepared_folder(bundle, capsys):
    code, _, err = run_cli(["engine", "build", str(bundle)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "has no plan.json" in lines[0], err


def test_engine_commands_are_listed(capsys):
    code, out, _ = run_cli(["engine", "--help"], capsys)
    assert code == 0
    assert help_command_names(out) == ["build", "check", "sidecar"], out


# ---------------------------------------------------------------------------------------------------------------
# Building here and on the device, with a stand-in for TensorRT (the real one cannot be installed on this host;
# the `gpu` test in test_trt_runner.py builds with the real one). It records the API calls the builder makes.

class _Enum:
    def __init__(self, name: str, value: int):
        self.name, self.value = name, value

    def __int__(self):
        return self.value

    def __repr__(self):
        return self.name


class _Namespace:
    def __init__(self, *names: str):
        for value, name in enumerate(names):
            setattr(self, name, _Enum(name, value))


def fake_tensorrt(calls: list, version: str = "10.3.0.30", parse_errors=(), engine_bytes=b"ENGINE-BYTES",
                  input_shape=(1, 3, 32, 32), build_messages=()):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class ILogger:
        Severity = _Namespace("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")

        def __init__(self):
            pass

    class Layer:
        pass

    class Network:
        num_inputs, num_layers = 1, 2

        def get_input(self, index):
            return types.SimpleNamespace(name=INPUT_NAME, shape=input_shape)

        def get_layer(self, index):
            return Layer()

    class Config:
        def __init__(self):
            self.int8_calibrator = None

        def __setattr__(self, name, value):
            if name != "int8_calibrator" or value is not None:
                calls.append(("config." + name, value))
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool.name, size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag.name))

        def can_run_on_DLA(self, layer):
            return True

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))

        def create_timing_cache(self, blob):
            calls.append(("create_timing_cache", bytes(blob)))
            return types.SimpleNamespace(serialize=lambda: b"TIMINGS:" + bytes(blob))

        def set_timing_cache(self, cache, ignore_mismatch):
            self._cache = cache
            return True

        def get_timing_cache(self):
            return self._cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            for message in build_messages:  # INFO lines the real builder prints (e.g. the DLA placement)
                self.logger.log(ILogger.Severity.INFO, message)
            if engine_bytes is None:
                self.logger.log(ILogger.Severity.ERROR, "no implementation obeys reformatting-free rules")
            return engine_bytes

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = len(parse_errors)

        def parse_from_file(self, path):
            calls.append(("parse_from_file", Path(path).name))
            return not parse_errors

        def get_error(self, index):
            return parse_errors[index]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            inspector = types.SimpleNamespace(get_engine_information=lambda fmt: json.dumps({"Layers": [
                {"Name": "conv", "LayerType": "CaskConvolution", "Outputs": [{"Format/Datatype": "Int8"}]}]}))
            return types.SimpleNamespace(create_engine_inspector=lambda: inspector)

    trt.ILogger, trt.Builder, trt.OnnxParser, trt.Runtime = ILogger, Builder, OnnxParser, Runtime
    trt.NetworkDefinitionCreationFlag = _Namespace("EXPLICIT_BATCH", "EXPLICIT_PRECISION", "STRONGLY_TYPED")
    trt.MemoryPoolType = _Namespace("WORKSPACE")
    trt.BuilderFlag = _Namespace("FP16", "INT8", "DEBUG", "GPU_FALLBACK", "SPARSE_WEIGHTS")
    trt.ProfilingVerbosity = _Namespace("LAYER_NAMES_ONLY", "NONE", "DETAILED")
    trt.DeviceType = _Namespace("GPU", "DLA")
    trt.LayerInformationFormat = _Namespace("ONELINE", "JSON")
    return trt


ORIN_HOST = HostFacts("10.3.0.30", None, ORIN, "aarch64")
ORIN_LIVE = {"tensorrt": "10.3.0.30", "cuda": "12.6", "gpu": {"name": "Orin", "compute_capability": "8.7"}}


def pretend_orin(monkeypatch, **fake_options) -> list:
    """This process as a Jetson Orin with TensorRT 10.3: the stand-in TensorRT, the host facts, the live GPU.
    Returns the list the stand-in records its calls in."""
    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls, **fake_options))
    monkeypatch.setattr("edgeseg.engine.bundle.probe_host", lambda: ORIN_HOST)
    monkeypatch.setattr("edgeseg.engine.build.live_environment", lambda: dict(ORIN_LIVE))
    return calls


@pytest.fixture()
def on_an_orin(monkeypatch):
    return pretend_orin(monkeypatch)


def test_finish_builds_here_when_this_host_is_the_target(bundle, on_an_orin):
    lines: list[str] = []
    with captured("edgeseg.engine", lines.append):
        result = finish_for_target(bundle, load_target("jetson-orin-nano"), "int8")
    assert result.engine == "model.int8.engine" and result.tensorrt == "10.3.0.30"
    assert list(result.to_dict()) == ["engine", "sidecar", "plan", "tensorrt", "build_seconds", "deepstream"]
    assert (bundle / "model.int8.engine").read_bytes() == b"ENGINE-BYTES"  # raw: nothing added
    assert not (bundle / "plan.json").exists()  # no kit: the engine is here
    plan = result.plan
    assert plan.tensorrt_version == "10.3.0.30"  # the installed TensorRT, not the target's default
    calls = on_an_orin
    assert ("create_network", 1 << 2) in calls  # STRONGLY_TYPED
    assert ("parse_from_file", "model.int8.onnx") in calls
    assert ("set_memory_pool_limit", "WORKSPACE", plan.workspace_mb << 20) in calls
    assert ("config.builder_optimization_level", 3) in calls
    assert [call[1] for call in calls if call[0] == "set_flag"] == list(plan.builder_flags)
    assert ("add_optimization_profile",) not in calls  # a fixed input needs no profile
    assert ("create_timing_cache", b"") in calls
    assert (bundle / "timing.jetson-orin-nano.cache").read_bytes() == b"TIMINGS:"

    sidecar = json.loads((bundle / "model.int8.engine.json").read_text())
    assert sidecar["gpu"] == ORIN_LIVE["gpu"] and sidecar["tensorrt"] == "10.3.0.30"
    assert sidecar["layers"]["precision_by_layer_type"] == {"CaskConvolution": {"int8": 1}}
    assert sidecar["timing_cache"] == {"path": "timing.jetson-orin-nano.cache", "loaded": False, "saved": True}
    assert Preprocessing.from_dict(sidecar["preprocessing"]) == PREPROCESSING

    # a second build starts from the saved timing cache
    on_an_orin.clear()
    with captured("edgeseg.engine", lines.append):
        finish_for_target(bundle, load_target("jetson-orin-nano"), "int8")
    assert ("create_timing_cache", b"TIMINGS:") in on_an_orin
    assert json.loads((bundle / "model.int8.engine.json").read_text())["timing_cache"]["loaded"] is True


def test_engine_build_on_the_device_plans_again_for_its_tensorrt(tmp_path, monkeypatch, no_tensorrt):
    bundle = make_bundle(tmp_path / "bundle")
    target = load_target("jetson-orin-nano")
    kit = finish_for_target(bundle, target, "fp16", {"tensorrt": "8.6"})  # planned for JetPack 6.0
    assert kit.engine is None and kit.plan.network_flags == ("EXPLICIT_BATCH",)

    calls = pretend_orin(monkeypatch)
    lines: list[str] = []
    with captured("edgeseg.engine", lines.append):
        result = build_bundle(bundle)
    assert result.engine == "model.fp16.engine" and (bundle / "model.fp16.engine.json").is_file()
    assert any("planned for TensorRT 8.6; this device has 10.3.0.30" in line for line in lines), lines
    assert any(line.startswith("plan change: network_flags") for line in lines), lines
    assert ("create_network", 1 << 2) in calls  # strongly typed on TensorRT 10 from the fp16 graph

    # and the runner's check accepts what was built, here
    check_engine_compatibility(json.loads((bundle / "model.fp16.engine.json").read_text()), ORIN_LIVE)


def test_engine_build_refuses_another_board(tmp_path, monkeypatch, no_tensorrt):
    bundle = make_bundle(tmp_path / "bundle")
    finish_for_target(bundle, load_target("jetson-xavier-nx"), "int8")
    pretend_orin(monkeypatch)
    with pytest.raises(UsageError, match="cannot build the jetson-xavier-nx engine here: .*is not a jetson-xavier-nx"):
        build_bundle(bundle)


def test_parser_errors_are_one_line_each(bundle, monkeypatch):
    errors = ("In node 3 (parseGraph): INVALID_NODE:\n  Unsupported op 'Foo'", "second problem")
    pretend_orin(monkeypatch, parse_errors=errors)
    lines: list[str] = []
    with pytest.raises(EngineBuildError, match="cannot parse model.fp16.onnx \\(2 errors\\); first: In node 3"):
        with captured("edgeseg.engine", lines.append):
            finish_for_target(bundle, load_target("jetson-orin-nano"), "fp16")
    parser_lines = [line for line in lines if line.startswith("ONNX parser:")]
    assert parser_lines == ["ONNX parser: In node 3 (parseGraph): INVALID_NODE: Unsupported op 'Foo'",
                            "ONNX parser: second problem"]
    assert not (bundle / "model.fp16.engine").exists()


def test_a_failed_build_says_why_and_writes_nothing(bundle, monkeypatch):
    pretend_orin(monkeypatch, engine_bytes=None)
    (bundle / "model.int8.engine.json").write_text('{"stale": true}\n')
    with pytest.raises(EngineBuildError, match="could not build the int8 engine for jetson-orin-nano: no impl"):
        finish_for_target(bundle, load_target("jetson-orin-nano"), "int8")
    assert not (bundle / "model.int8.engine").exists() and not (bundle / "model.int8.engine.json").exists()
