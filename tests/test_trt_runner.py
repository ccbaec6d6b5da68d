"""The TensorRT runner's guard: an engine runs only on the GPU and TensorRT its sidecar names, and the sidecar
carries everything the runner needs (preprocessing, output kind). The engine itself runs only where TensorRT and
a CUDA GPU are (the `gpu` test)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeseg.engine.bundle import finish_for_target
from edgeseg.engine.build import compose_sidecar
from edgeseg.engine.plan import BuildPlan
from edgeseg.engine.sidecar import (EngineMismatch, check_engine_compatibility, read_sidecar, sidecar_path,
                                    summarize_inspector)
from edgeseg.errors import MissingDependency, UsageError
from edgeseg.manifest import write_json
from edgeseg.runners import open_runner
from edgeseg.runners.trt import TensorRTRunner, spec_shape
from edgeseg.target_registry import load_target, probe_cuda_device
from edgeseg.zoo.contract import Preprocessing
from tests.engine_helpers import PREPROCESSING, make_bundle

ORIN_LIVE = {"tensorrt": "10.3.0.30", "cuda": "12.6", "gpu": {"name": "Orin", "compute_capability": "8.7"}}


def sidecar_for(**changes) -> dict:
    sidecar = json.loads(json.dumps(ORIN_LIVE))
    for key, value in changes.items():
        if key in ("name", "compute_capability"):
            sidecar["gpu"][key] = value
        else:
            sidecar[key] = value
    return sidecar


def tensorrt_missing() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# check_engine_compatibility (pure)

def test_a_matching_engine_is_accepted():
    check_engine_compatibility(sidecar_for(), ORIN_LIVE)
    check_engine_compatibility(sidecar_for(tensorrt="10.3"), ORIN_LIVE)  # major.minor recorded: same release line
    check_engine_compatibility(sidecar_for(name="  orin "), ORIN_LIVE)  # spacing and case are not a GPU model


@pytest.mark.parametrize("changes, reason", [
    ({"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}, "built for compute capability 8.9"),
    ({"compute_capability": "7.2"}, "built for compute capability 7.2"),
    ({"name": "NVIDIA A10"}, "built on a NVIDIA A10 but this GPU is a Orin"),
    ({"tensorrt": "10.3.0.26"}, "built with TensorRT 10.3.0.26 but TensorRT 10.3.0.30 is installed"),
    ({"tensorrt": "8.6.2"}, "built with TensorRT 8.6.2"),
    ({"tensorrt": "10.4"}, "built with TensorRT 10.4"),
    ({"tensorrt": None}, "does not record"),
])
def test_a_mismatched_engine_is_refused_with_a_rebuild_message(changes, reason):
    with pytest.raises(EngineMismatch) as refused:
        check_engine_compatibility(sidecar_for(**changes), ORIN_LIVE, bundle="bundles/segformer-b0-orin")
    message = str(refused.value)
    assert reason in message and "\n" not in message
    assert "edgeseg engine build bundles/segformer-b0-orin" in message


# ---------------------------------------------------------------------------------------------------------------
# The sidecar an engine build writes (composed here from real files; only the engine bytes are stand-ins)

def test_sidecar_carries_the_contract_and_passes_its_own_check(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    plan = finish_for_target(bundle, load_target("jetson-orin-nano"), "int8").plan
    engine = bundle / "model.int8.engine"
    engine.write_bytes(b"serialized engine")
    sidecar = compose_sidecar(plan, bundle / plan.onnx_path, engine, bundle, ORIN_LIVE, built_by="test",
                              layers={"layers": 2, "detailed": False}, timing_cache=None, build_seconds=1.5,
                              calibration_manifest=bundle / "calibration.json", calibration_summary=None)
    write_json(sidecar_path(engine), sidecar)

    read_back = read_sidecar(engine)
    assert read_back["format"] == "edgeseg-engine" and read_back["engine"]["path"] == "model.int8.engine"
    assert Preprocessing.from_dict(read_back["preprocessing"]) == PREPROCESSING
    assert read_back["output"] == "logits" and read_back["precision"] == "int8" and read_back["model"] == "tiny-conv"
    assert read_back["onnx"]["path"] == "model.int8.onnx" and len(read_back["onnx"]["sha256"]) == 64
    assert read_back["calibration"]["manifest"] == "calibration.json"
    assert BuildPlan.from_dict(read_back["plan"]) == plan
    assert str(tmp_path) not in json.dumps({key: read_back[key] for key in ("engine", "onnx", "calibration", "plan")})
    check_engine_compatibility(read_back, ORIN_LIVE)
    with pytest.raises(EngineMismatch):
        check_engine_compatibility(read_back, sidecar_for(compute_capability="7.2", name="Xavier"))


def test_summarize_inspector():
    detailed = {"Layers": [
        {"Name": "conv", "LayerType": "CaskConvolution",
         "Outputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
        {"Name": "conv2", "LayerType": "CaskConvolution", "Outputs": [{"Format/Datatype": "Row major linear FP16"}]},
        {"Name": "{ForeignNode[...]}", "LayerType": "DLA", "Outputs": [{"Format/Datatype": "Half"}]},
        {"Name": "reformat", "LayerType": "Reformat", "Outputs": [{"Format/Datatype": "Float"}]},
        {"Name": "odd", "LayerType": "Shuffle", "Outputs": [{"Format/Datatype": "N/A due to dynamic shapes"}]},
    ], "Bindings": ["pixel_values", "logits"]}
    summary = summarize_inspector(json.dumps(detailed))
    assert summary["layers"] == 5 and summary["dla_layers"] == 1 and summary["gpu_layers"] == 4
    assert summary["precision_by_layer_type"] == {"CaskConvolution": {"fp16": 1, "int8": 1}, "DLA": {"fp16": 1},
                                                  "Reformat": {"fp32": 1}, "Shuffle": {"unknown": 1}}
    names_only = summarize_inspector(json.dumps({"Layers": ["conv + relu", "reformat"], "Bindings": []}))
    assert names_only == {"layers": 2, "detailed": False}


def test_spec_shape_names_dynamic_axes():
    assert spec_shape((1, 3, 360, 480)) == (1, 3, 360, 480)
    assert spec_shape((-1, 3, -1, -1)) == ("batch", 3, "height", "width")


# ---------------------------------------------------------------------------------------------------------------
# The runner's refusals, on this machine

def test_an_engine_without_sidecar_is_refused_before_tensorrt(tmp_path):
    engine = tmp_path / "bundle" / "model.int8.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"serialized engine from somewhere")
    for opening in (lambda: TensorRTRunner(engine), lambda: open_runner(engine), lambda: open_runner(engine.parent)):
        with pytest.raises(UsageError, match="has no sidecar model.int8.engine.json") as refused:
            opening()
        assert f"edgeseg engine build {engine.parent}" in str(refused.value)


def test_a_foreign_json_is_not_a_sidecar(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    sidecar_path(engine).write_text('{"hello": 1}\n')
    with pytest.raises(UsageError, match="not an edgeseg engine sidecar"):
        TensorRTRunner(engine)


@pytest.mark.skipif(not tensorrt_missing(), reason="TensorRT is installed here")
def test_runner_without_tensorrt_names_the_extra(tmp_path):
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"engine")
    write_json(sidecar_path(engine), {"format": "edgeseg-engine", **ORIN_LIVE,
                                      "preprocessing": PREPROCESSING.to_dict()})
    with pytest.raises(MissingDependency, match=r"edgeseg\[trt\]"):
        TensorRTRunner(engine)


# ---------------------------------------------------------------------------------------------------------------
# On a machine with TensorRT and a CUDA GPU: build the tiny model here and compare with ONNX Runtime

@pytest.mark.gpu
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_engine_built_here_matches_onnx_runtime(tmp_path, precision, tolerance):
    pytest.importorskip("tensorrt", reason="needs TensorRT (pip install 'edgeseg[trt]')")
    pytest.importorskip("pycuda.driver", reason="needs pycuda (pip install 'edgeseg[trt]')")
    pytest.importorskip("onnxruntime", reason="needs onnxruntime for the reference output")
    try:
        probe_cuda_device()
    except UsageError as exc:
        pytest.skip(f"needs a CUDA GPU: {exc}")
    from edgeseg.runners.ort import OrtRunner

    bundle = make_bundle(tmp_path / "bundle")
    result = finish_for_target(bundle, load_target("cuda"), precision)
    assert result.engine == f"model.{precision}.engine"
    engine = bundle / result.engine
    sidecar = read_sidecar(engine)
    assert sidecar["layers"].get("layers", 0) >= 1 and (bundle / "timing.cuda.cache").is_file()
    batch = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    with OrtRunner(bundle / "model.onnx", device="cpu") as reference:
        expected = reference.infer(batch)
    for use_cuda_graph in (False, True):
        with TensorRTRunner(engine, use_cuda_graph=use_cuda_graph) as runner:
            assert runner.preprocessing == PREPROCESSING and runner.output_kind == "logits"
            assert runner.input_spec.shape == (1, 3, 32, 32)
            for _ in range(2):  # the second call replays the captured graph
                np.testing.assert_allclose(runner.infer(batch), expected, atol=tolerance, rtol=tolerance)
    # a second build reuses the timing cache it saved
    again = finish_for_target(bundle, load_target("cuda"), precision)
    assert read_sidecar(bundle / again.engine)["timing_cache"]["loaded"]


@pytest.mark.skipif(not tensorrt_missing(), reason="TensorRT is installed here")
def test_engine_check_and_sidecar_commands_without_tensorrt(tmp_path, capsys):
    from edgeseg.cli import main

    engine = tmp_path / "model.int8.engine"
    engine.write_bytes(b"engine")
    write_json(sidecar_path(engine), {"format": "edgeseg-engine", "precision": "int8", "target": "jetson-orin-nano",
                                      **ORIN_LIVE})
    for args in (["engine", "check", str(engine)], ["engine", "sidecar", str(engine)]):
        with pytest.raises(SystemExit) as exited:
            main(args)
        captured = capsys.readouterr()
        errors = [line for line in captured.err.splitlines() if line.strip()]
        assert exited.value.code != 0 and len(errors) == 1, captured.err
        if args[1] == "check":  # what the engine was built for is said first
            assert "built with TensorRT 10.3.0.30 on Orin (compute capability 8.7)" in captured.out
            assert r"edgeseg[trt]" in errors[0]
        else:  # the kit's plan.json is looked for beside the engine
            assert "has no plan.json" in errors[0]
