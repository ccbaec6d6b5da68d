"""benchmarks/device_check.py up to where TensorRT is needed: the stand-in TensorRT of test_engine_bundle builds
the "engines" (recording the API calls, writing placeholder bytes and real sidecars), and a stand-in engine runner
runs the ONNX model each sidecar names with ONNX Runtime. Everything else is real: the bundles' ONNX models, CamVid
test images, ONNX Runtime FP32 as the reference, the agreement check, the demo on a clip, the JSON, and its merge
into bench's results.md and the README table. TensorRT itself runs only in the `gpu` tests, on a real device."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.bench.device_check import (DeviceCheckConfig, DeviceFacts, device_check_passed, engine_options,
                                        find_bundles, int8_route, pytest_counts, run_device_check)
from edgeseg.bench.outputs import DEVICE_CHECK_NAME, ResultsWriter, flat_row
from edgeseg.bench.readme import default_result_paths, update_readme
from edgeseg.data.palettes import CAMVID
from edgeseg.engine.sidecar import check_engine_compatibility, read_sidecar
from edgeseg.errors import UsageError
from edgeseg.runners.ort import OrtRunner
from edgeseg.target_registry import CudaDevice
from edgeseg.zoo.contract import Preprocessing
from tests.engine_helpers import make_bundle
from tests.log_lines import captured
from tests.test_engine_bundle import ORIN_LIVE, pretend_orin

REPO = Path(__file__).resolve().parent.parent
MODELS = ("segformer-b0", "deeplabv3plus-mobilenetv2", "unet-mobilenetv2")
CAMVID_32 = Preprocessing(input_size=(32, 32), classes=CAMVID.classes, palette=CAMVID.palette)
ORIN_DEVICE = DeviceFacts(tensorrt="10.3.0.30", gpu=CudaDevice("Orin", "8.7", 7.4), cuda="12.6", machine="aarch64",
                          jetson={"model": "NVIDIA Jetson Orin Nano Developer Kit", "l4t_version": "36.4.3",
                                  "jetpack": "6.2", "power_mode": None})


class StandInEngine:
    """Runs an engine the stand-in TensorRT 'built': the ONNX model its sidecar names, with ONNX Runtime. The
    sidecar is read and checked against the live GPU exactly as TensorRTRunner does."""

    backend = "trt"

    def __init__(self, path, use_cuda_graph: bool = False, device_index: int = 0):
        sidecar = read_sidecar(path)
        check_engine_compatibility(sidecar, ORIN_LIVE)
        self.onnx = Path(path).parent / sidecar["onnx"]["path"]
        self.session = OrtRunner(self.onnx, device="cpu", threads=1)
        self.preprocessing = Preprocessing.from_dict(sidecar["preprocessing"])
        self.output_kind = sidecar["output"]
        self.input_spec = self.session.input_spec

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.session = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.infer(batch)


class ConstantEngine(StandInEngine):
    """An engine that lost its weights: every pixel is the first class."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        output = self.session.infer(batch)
        constant = np.zeros_like(output)
        constant[:, 0] = 1.0
        return constant


@pytest.fixture()
def reference_bundles(tmp_path) -> Path:
    """One bundle per reference model, as 'edgeseg build' lays them out (tiny 32x32 CamVid-class models)."""
    root = tmp_path / "bundles"
    for model in MODELS:
        make_bundle(root / f"{model}-jetson-orin-nano", contract=CAMVID_32, model_name=model)
    return root


def quick_config(tmp_path, bundles: Path, data: Path, **changes) -> DeviceCheckConfig:
    settings = dict(bundles=str(bundles), data_root=str(data), images=4, warmup=1, min_runs=2, min_seconds=0.0,
                    demo_frames=5, work_dir=str(tmp_path / "work"), gpu_tests=False,
                    out=str(tmp_path / "results" / "jetson-orin-nano" / DEVICE_CHECK_NAME))
    settings.update(changes)
    return DeviceCheckConfig(**settings)


@pytest.fixture()
def on_an_orin(monkeypatch):
    calls = pretend_orin(monkeypatch)
    monkeypatch.setattr("edgeseg.runners.trt.TensorRTRunner", StandInEngine)
    return calls


@pytest.mark.camvid
def test_device_check_with_the_stand_in(tmp_path, reference_bundles, real_data, on_an_orin):
    cfg = quick_config(tmp_path, reference_bundles, real_data)
    report = run_device_check(cfg, device=ORIN_DEVICE)

    written = json.loads(Path(cfg.out).read_text())
    assert written == json.loads(json.dumps(report)) and written["complete"] and written["passed"], written
    assert written["schema"] == 1 and written["format"] == "edgeseg-device-check"
    assert written["device"]["gpu"] == {"name": "Orin", "compute_capability": "8.7", "memory_gb": 7.4}
    assert written["device"]["tensorrt"] == "10.3.0.30" and written["device"]["jetson"]["jetpack"] == "6.2"
    assert written["suite"]["int8_route"] == "qdq" and written["suite"]["eval_limit"] == 4

    ids = [row["id"] for row in written["rows"]]
    assert ids == [f"{model}/{precision}/{backend}/32x32" for model in MODELS
                   for precision, backend in (("fp32", "ort-cpu"), ("fp16", "trt"), ("int8", "trt"))]
    for row in written["rows"]:
        assert row["status"] == "ok", row
        flat = flat_row(row)  # the bench row shape: every column bench's CSV and tables read
        assert flat["latency_p50_ms"] > 0 and flat["e2e_p50_ms"] > 0 and flat["fps_batch_1"] > 0
        assert 0 <= flat["miou"] <= 1 and row["accuracy"]["images"] == 4
    trt_rows = [row for row in written["rows"] if row["backend"] == "trt"]
    for row in trt_rows:
        assert row["engine"]["strongly_typed"] is True and row["engine"]["tensorrt"] == "10.3.0.30"
        expected_onnx = "model.int8.onnx" if row["precision"] == "int8" else "model.fp16.onnx"
        assert row["engine"]["onnx"] == expected_onnx
        assert row["accuracy"]["reference"] == row["id"].replace(f"/{row['precision']}/trt/", "/fp32/ort-cpu/")
        assert row["check"]["passed"] and row["check"]["value"] == row["accuracy"]["pixel_agreement"]
        assert row["check"]["threshold"] == {"fp16": 0.99, "int8": 0.97}[row["precision"]]
        assert not Path(row["artifact"]["path"]).is_absolute()
    # the FP16 "engine" runs the same weights as the reference: every pixel agrees; INT8 Q/DQ nearly every one
    assert all(row["accuracy"]["pixel_agreement"] == 1.0 for row in trt_rows if row["precision"] == "fp16")
    assert len(written["checks"]) == 6 and all(check["passed"] for check in written["checks"])

    # the engines were built by the engine code into copies of the bundles, which stay untouched
    engine = tmp_path / "work" / "segformer-b0-jetson-orin-nano" / "model.int8.engine"
    assert engine.read_bytes() == b"ENGINE-BYTES"
    assert not list(reference_bundles.rglob("*.engine"))
    assert ("create_network", 1 << 2) in on_an_orin  # STRONGLY_TYPED

    demo = written["demo"]
    assert demo["status"] == "ok" and demo["frames"] == 5 and demo["backend"] == "trt"
    assert demo["engine"] == "segformer-b0-jetson-orin-nano/model.int8.engine" and demo["saved"] == "demo.mp4"
    assert (tmp_path / "work" / "demo.mp4").stat().st_size > 0
    assert written["gpu_tests"] == {"ran": False, "reason": "--no-gpu-tests"}
    assert str(tmp_path) not in json.dumps({key: written[key] for key in ("rows", "demo", "checks")})


@pytest.mark.camvid
def test_a_failed_agreement_fails_the_check(tmp_path, reference_bundles, real_data, on_an_orin, monkeypatch):
    monkeypatch.setattr("edgeseg.runners.trt.TensorRTRunner", ConstantEngine)
    cfg = quick_config(tmp_path, reference_bundles, real_data, models=("segformer-b0",), precisions=("int8",))
    report = run_device_check(cfg, device=ORIN_DEVICE)
    (check,) = report["checks"]
    assert check["precision"] == "int8" and not check["passed"] and check["value"] < 0.97
    assert not report["passed"] and json.loads(Path(cfg.out).read_text())["passed"] is False


@pytest.mark.camvid
def test_a_failed_build_is_an_error_row_and_the_rest_runs(tmp_path, reference_bundles, real_data, monkeypatch):
    pretend_orin(monkeypatch, parse_errors=("In node 0 (parseGraph): INVALID_NODE: Unsupported op",))
    monkeypatch.setattr("edgeseg.runners.trt.TensorRTRunner", StandInEngine)
    cfg = quick_config(tmp_path, reference_bundles, real_data, models=("unet-mobilenetv2",))
    report = run_device_check(cfg, device=ORIN_DEVICE)
    statuses = {row["id"]: row["status"] for row in report["rows"]}
    assert statuses == {"unet-mobilenetv2/fp32/ort-cpu/32x32": "ok", "unet-mobilenetv2/fp16/trt/32x32": "error",
                        "unet-mobilenetv2/int8/trt/32x32": "error"}
    assert "cannot parse model.fp16.onnx" in report["rows"][1]["reason"]
    assert report["demo"]["status"] == "error" and not report["passed"]


class CrashingEngine(StandInEngine):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("[executionContext.cpp::enqueueV3] Error Code 1: Cuda Runtime (illegal memory access)")


@pytest.mark.camvid
def test_a_crashing_engine_is_an_error_row_with_its_type(tmp_path, reference_bundles, real_data, on_an_orin,
                                                         monkeypatch):
    monkeypatch.setattr("edgeseg.runners.trt.TensorRTRunner", CrashingEngine)
    cfg = quick_config(tmp_path, reference_bundles, real_data, models=("segformer-b0",), precisions=("fp16",))
    report = run_device_check(cfg, device=ORIN_DEVICE)
    row = report["rows"][1]
    assert row["status"] == "error" and row["reason"].startswith("RuntimeError: [executionContext.cpp::enqueueV3]")
    assert report["demo"]["status"] == "error" and report["complete"] and not report["passed"]


@pytest.mark.camvid
def test_bench_reports_and_the_readme_merge_the_device_check(tmp_path, reference_bundles, real_data, on_an_orin):
    cfg = quick_config(tmp_path, reference_bundles, real_data, models=("segformer-b0",))
    report = run_device_check(cfg, device=ORIN_DEVICE)
    machine_dir = Path(cfg.out).parent

    # a README table from the device check alone (a machine that ran no bench)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- bench-table:start -->\n<!-- bench-table:end -->\n")
    assert default_result_paths(tmp_path / "results") == [Path(cfg.out)]
    update_readme(readme, default_result_paths(tmp_path / "results"))
    alone = readme.read_text()
    assert "| segformer-b0 | int8 | trt | 32x32 |" in alone and "| segformer-b0 | fp32 | ort-cpu | 32x32 |" in alone

    # a bench run in the same folder: its own rows first, the device check's after (the same id stays the bench's)
    bench_row = {**report["rows"][0], "accuracy": {**report["rows"][0]["accuracy"], "images": 233}}
    writer = ResultsWriter(machine_dir, report["env"], {"name": "jetson", "dataset": "camvid", "split": "test"})
    writer.add(bench_row)
    writer.finish()
    markdown = (machine_dir / "results.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| segformer-b0 ")]
    assert [line.split(" | ")[1:3] for line in table] == [["fp32", "ort-cpu"], ["fp16", "trt"], ["int8", "trt"]]
    assert "With the device check of" in markdown and "passed; TensorRT 10.3.0.30 on Orin" in markdown
    assert "`segformer-b0/int8/trt/32x32`: from the device check" in markdown
    assert json.loads((machine_dir / "results.json").read_text())["rows"] == [bench_row]  # the record stays the bench's

    (machine_dir / DEVICE_CHECK_NAME).write_text('{"schema": 1')  # broken: the bench still writes its report
    writer.flush()
    assert "> warning: not merged: " in (machine_dir / "results.md").read_text()
    Path(cfg.out).write_text(json.dumps(report))

    assert default_result_paths(tmp_path / "results") == [machine_dir / "results.json"]
    update_readme(readme, default_result_paths(tmp_path / "results"))
    merged = readme.read_text()
    assert "results.json + device-check.json" in merged
    assert merged.count("| segformer-b0 | fp32 | ort-cpu |") == 1 and "| segformer-b0 | int8 | trt | 32x32 |" in merged


def test_missing_bundles_are_one_line_naming_the_host_command(tmp_path, reference_bundles):
    with pytest.raises(UsageError, match="no bundle for fcn-resnet18 .*'edgeseg build --model fcn-resnet18 --target"):
        find_bundles(reference_bundles, ("segformer-b0", "fcn-resnet18"))
    (reference_bundles / "unet-mobilenetv2-jetson-orin-nano" / "calibration.json").unlink()
    with pytest.raises(UsageError, match="lacks calibration.json"):
        find_bundles(reference_bundles, MODELS)
    found = find_bundles(reference_bundles, ("segformer-b0",))
    assert found == {"segformer-b0": reference_bundles / "segformer-b0-jetson-orin-nano"}


def test_the_script_without_tensorrt_says_what_is_missing(tmp_path, reference_bundles):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device_check.py"), "--bundles",
                           str(reference_bundles), "--out", str(tmp_path / "out.json")], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 3 and len(errors) == 1, done.stderr
    assert errors[0].startswith("device_check: error: the device check needs TensorRT")
    assert "edgeseg doctor" in errors[0]
    assert not (tmp_path / "out.json").exists()
    helped = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device_check.py"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert "edgeseg build --model segformer-b0 --target" in helped.stdout and "--bundles" in helped.stdout


def test_int8_route_and_engine_options(tmp_path):
    assert int8_route("auto", "10.3.0.30") == "qdq" and int8_route("auto", "8.6.2") == "calibrator"
    assert int8_route("calibrator", "10.3") == "calibrator" and int8_route("qdq", "8.5") == "qdq"
    assert engine_options("int8", "calibrator", tmp_path) == {"legacy_calibrator": True, "data_root": str(tmp_path)}
    assert engine_options("int8", "qdq", tmp_path) == {} and engine_options("fp16", "calibrator", tmp_path) == {}
    with pytest.raises(UsageError, match="--int8 'fast'"):
        DeviceCheckConfig(bundles="b", int8="fast")
    with pytest.raises(UsageError, match="not fp32"):
        DeviceCheckConfig(bundles="b", precisions=("fp32",))


def test_the_gpu_tests_are_the_files_with_gpu_marks():
    from edgeseg.bench.device_check import checkout_tests, gpu_test_files

    assert checkout_tests() == REPO / "tests"
    files = gpu_test_files(REPO / "tests")
    assert REPO / "tests" / "test_trt_runner.py" in files
    assert REPO / "tests" / "test_train.py" not in files  # it imports torch, which the device may lack


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here: they run")
def test_the_gpu_tests_run_here_and_skip_saying_why():
    from edgeseg.bench.device_check import run_gpu_tests

    with captured("edgeseg.bench.device_check") as said:
        result = run_gpu_tests()
    assert result["ran"] and result["exit_code"] == 0, result
    assert result["skipped"] >= 1 and result["passed"] == 0 and result["failed"] == 0  # no TensorRT here
    command = result["command"].split()
    assert command[:7] == ["python", "-m", "pytest", "-m", "gpu", "-q", "-rs"] and "tests/test_trt_runner.py" in command
    assert any("needs TensorRT" in line for line in result["skip_reasons"])
    assert said.lines and said.lines[0].startswith("gpu tests: ")


def test_pytest_counts_and_the_verdict():
    assert pytest_counts("....\n2 passed, 1 skipped, 40 deselected in 3.12s\n") == {
        "summary": "2 passed, 1 skipped, 40 deselected in 3.12s", "passed": 2, "failed": 0, "skipped": 1,
        "errors": 0, "deselected": 40}
    assert pytest_counts("===== 1 failed, 1 error in 0.5s =====")["errors"] == 1
    assert pytest_counts("no tests ran") == {"summary": None}
    good = {"rows": [{"status": "ok"}], "checks": [{"passed": True}], "demo": {"status": "ok"},
            "gpu_tests": {"ran": True, "exit_code": 0, "failed": 0}}
    assert device_check_passed(good)
    assert not device_check_passed({**good, "gpu_tests": {"ran": True, "exit_code": 1, "failed": 1}})
    assert not device_check_passed({**good, "checks": [{"passed": True}, {"passed": False}]})
    assert not device_check_passed({**good, "demo": {"status": "error"}})
    assert device_check_passed({**good, "gpu_tests": {"ran": False, "reason": "--no-gpu-tests"}})


def test_the_device_side_of_the_check_imports_no_torch():
    """Everything the device check and the doctor load on the device, imported in a fresh process."""
    script = """
import sys
import edgeseg.bench.device_check, edgeseg.doctor, edgeseg.demo.app, edgeseg.evaluate, edgeseg.metrics
import edgeseg.engine.bundle, edgeseg.engine.build, edgeseg.engine.calibrator, edgeseg.bench.compare
import edgeseg.bench.env, edgeseg.bench.readme, edgeseg.runners.ort, edgeseg.runners.trt, edgeseg.data.transforms
loaded = sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'torchvision', 'transformers'))
print('loaded', loaded)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "loaded []" in done.stdout


def test_probe_device_reads_the_host_probes(monkeypatch):
    from edgeseg.bench.device_check import probe_device
    from edgeseg.engine.host import HostFacts

    orin = CudaDevice("Orin", "8.7", 7.4)
    monkeypatch.setattr("edgeseg.engine.host.probe_host", lambda: HostFacts("10.3.0.30", None, orin, "aarch64"))
    monkeypatch.setattr("edgeseg.engine.host.cuda_driver_version", lambda: "12.6")
    monkeypatch.setattr("edgeseg.bench.env.jetson_info", lambda: {
        "model": "NVIDIA Jetson Orin Nano Developer Kit", "power_mode": "NV Power Mode: 15W 0",
        "l4t": "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64"})
    monkeypatch.setattr("edgeseg.doctor.installed_jetpack", lambda: None)
    device = probe_device()
    assert device.to_dict() == {"tensorrt": "10.3.0.30", "cuda": "12.6", "machine": "aarch64",
                                "gpu": {"name": "Orin", "compute_capability": "8.7", "memory_gb": 7.4},
                                "jetson": {"model": "NVIDIA Jetson Orin Nano Developer Kit",
                                           "power_mode": "NV Power Mode: 15W 0", "l4t": device.jetson["l4t"],
                                           "l4t_version": "36.4.3", "jetpack": "6.2"}}
    monkeypatch.setattr("edgeseg.engine.host.probe_host", lambda: HostFacts("10.3.0.30", None, None, "x86_64"))
    with pytest.raises(UsageError, match="needs a CUDA GPU"):
        probe_device()
