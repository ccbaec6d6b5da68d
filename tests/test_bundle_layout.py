"""edgeseg.bundle_layout: the bundle's file names in one place, and which artifact a device runs from a bundle.

The engine tests use bundles where the alphabetical first engine (what a `sorted(glob("*.engine"))` picked) is
not the right one: a recorded int8 beside an fp16 engine, an fp32 engine beside int8 with nothing recorded, and
nvinfer's own engine (DeepStream writes it into the bundle, without a sidecar) sorting first.
"""

from __future__ import annotations

import json
import logging

import onnx
import pytest

from edgeseg.bundle_layout import (ENGINE_PRECEDENCE, ONNX_FILES, OV_INT8_FILE, artifact_bytes, artifact_to_run,
                                   bundle_engine, choose_engine, deepstream_onnx_name, engine_name, engine_precision,
                                   nvinfer_engine_name, onnx_name, recorded_engine_precision, sidecar_name)
from edgeseg.engine.sidecar import read_sidecar, sidecar_path
from edgeseg.errors import UsageError
from tests.engine_helpers import make_model
from tests.log_lines import captured

NVINFER_ENGINE = nvinfer_engine_name(deepstream_onnx_name("fp16"), 2)


@pytest.fixture
def layout_log():
    with captured("edgeseg.bundle_layout") as lines:
        yield lines.records


def make_bundle(folder, engines=(), recorded=None, where="engine", onnx_precisions=("fp32",), extra=()):
    """A bundle folder: ONNX files, engines with their sidecars, and the engine precision recorded in
    manifest.json (`where`: the built engine's name, or only the engine_precision setting) or report.json."""
    folder.mkdir()
    for precision in onnx_precisions:
        onnx.save(make_model(precision), str(folder / ONNX_FILES[precision]))
    for precision in engines:
        (folder / engine_name(precision)).write_bytes(b"not a real plan: " + precision.encode())
        (folder / sidecar_name(engine_name(precision))).write_text(
            json.dumps({"format": "edgeseg-engine", "precision": precision}))
    for name in extra:
        (folder / name).write_bytes(b"nvinfer's engine, no sidecar")
    if recorded is not None:
        if where == "report":
            (folder / "report.json").write_text(json.dumps({"engine": {"engine": engine_name(recorded)}}))
        else:
            manifest = {"stage": "build", "settings": {"engine_precision": recorded},
                        "engine": {"engine": engine_name(recorded) if where == "engine" else None}}
            (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_the_names_of_a_bundle():
    assert [onnx_name(p) for p in ("fp32", "fp16", "int8")] == ["model.onnx", "model.fp16.onnx", "model.int8.onnx"]
    assert onnx_name("int8", "trt") == "model.int8-trt.onnx"
    with pytest.raises(ValueError):
        onnx_name("fp16", "trt")
    assert engine_name("int8") == "model.int8.engine" and sidecar_name("model.int8.engine") == "model.int8.engine.json"
    assert [engine_precision(n) for n in ("model.fp16.engine", NVINFER_ENGINE, "model.int8.onnx")] == ["fp16", None,
                                                                                                      None]
    assert NVINFER_ENGINE == "model.fp16.deepstream.onnx_b1_gpu0_fp16.engine"
    assert ENGINE_PRECEDENCE == ("int8", "fp16", "fp32")


@pytest.mark.parametrize("names, recorded, chosen", [
    (["model.fp16.engine", "model.int8.engine"], "int8", "model.int8.engine"),  # alphabetical: fp16
    (["model.fp16.engine", "model.int8.engine"], "fp16", "model.fp16.engine"),
    (["model.fp32.engine", "model.int8.engine"], None, "model.int8.engine"),  # alphabetical: fp32
    (["model.fp32.engine", "model.fp16.engine"], None, "model.fp16.engine"),  # alphabetical: fp16 too; precedence
    ([NVINFER_ENGINE, "model.fp16.engine", "model.int8.engine"], None, "model.int8.engine"),  # alphabetical: nvinfer
    ([NVINFER_ENGINE, "model.fp16.engine"], "int8", "model.fp16.engine"),  # recorded one absent: precedence
])
def test_choose_engine_is_not_alphabetical(names, recorded, chosen):
    choice = choose_engine(names, recorded)
    assert choice.name == chosen
    assert NVINFER_ENGINE not in choice.present
    assert choice.recorded_missing == (recorded is not None and recorded != choice.precision)


def test_no_edgeseg_engine_is_no_choice():
    assert choose_engine([NVINFER_ENGINE, "model.onnx"], "int8") is None


@pytest.mark.parametrize("where", ["engine", "setting", "report"])
def test_the_recorded_precision_is_read_from_manifest_or_report(tmp_path, where):
    bundle = make_bundle(tmp_path / "b", engines=("fp16", "int8"), recorded="fp16", where=where)
    assert recorded_engine_precision(bundle) == "fp16"
    assert bundle_engine(bundle) == bundle / "model.fp16.engine"


def test_a_bundle_with_two_engines_runs_the_recorded_one_and_says_so(tmp_path, layout_log):
    bundle = make_bundle(tmp_path / "b", engines=("fp16", "int8"), recorded="int8", extra=(NVINFER_ENGINE,))
    assert sorted(p.name for p in bundle.glob("*.engine"))[0] == NVINFER_ENGINE  # what the old glob ran
    chosen = artifact_to_run(bundle)
    assert (chosen.path, chosen.backend) == (bundle / "model.int8.engine", "trt")
    assert read_sidecar(chosen.path)["precision"] == "int8"  # the chosen engine's own sidecar
    assert sidecar_path(chosen.path) == bundle / "model.int8.engine.json"
    [record] = layout_log
    assert record.levelno == logging.INFO
    assert record.getMessage() == (f"{bundle} holds model.int8.engine, model.fp16.engine: running model.int8.engine, "
                                   "by the bundle's recorded engine precision (int8); give the .engine file to run "
                                   "another")


def test_a_missing_recorded_engine_is_a_warning_naming_the_one_run(tmp_path, layout_log):
    bundle = make_bundle(tmp_path / "b", engines=("fp32", "fp16"), recorded="int8")
    chosen = artifact_to_run(bundle)
    assert chosen.path == bundle / "model.fp16.engine"
    assert read_sidecar(chosen.path)["precision"] == "fp16"
    [record] = layout_log
    assert record.levelno == logging.WARNING and "the recorded int8 engine is not there" in record.getMessage()


def test_one_engine_is_run_without_a_word(tmp_path, layout_log):
    bundle = make_bundle(tmp_path / "b", engines=("fp16",), recorded="fp16")
    assert artifact_to_run(bundle).path == bundle / "model.fp16.engine"
    assert layout_log == []


def test_the_cpu_runs_the_onnx_models_by_the_same_precedence(tmp_path):
    bundle = make_bundle(tmp_path / "b", engines=("int8",), onnx_precisions=("fp32", "fp16", "int8"))
    assert artifact_to_run(bundle, device="cpu").path == bundle / "model.int8.onnx"  # no report: precedence
    (bundle / "model.int8.onnx").unlink()
    assert artifact_to_run(bundle, device="cpu").path == bundle / "model.fp16.onnx"
    with pytest.raises(UsageError, match="holds no TensorRT engine"):
        artifact_to_run(make_bundle(tmp_path / "c"), backend="trt")
    with pytest.raises(UsageError, match="holds no model.onnx or engine"):
        artifact_to_run(make_bundle(tmp_path / "d", onnx_precisions=()), device="cpu")


def test_the_contract_of_a_bundle_comes_from_its_fp32_graph(tmp_path):
    """`edgeseg card show BUNDLE` / `calib --model BUNDLE` read the contract of model.onnx (a bundle's default
    CPU variant may be an OpenVINO IR, which carries none)."""
    from edgeseg.model_source import contract_of, resolve_source

    bundle = make_bundle(tmp_path / "b", engines=("int8",), recorded="int8")
    preprocessing, output, origin = contract_of(resolve_source(str(bundle)))
    assert preprocessing.input_size == (32, 32) and output == "logits"
    assert origin == f"the metadata of {bundle / 'model.onnx'}"


def test_an_openvino_ir_is_sized_with_its_weights(tmp_path):
    """The size column of bench and of a CPU bundle's rows: an IR's .xml is the graph, its .bin the weights."""
    from edgeseg.cpu_variants import file_size_mb

    graph, weights, onnx_file = tmp_path / OV_INT8_FILE, tmp_path / "model.int8.ov.bin", tmp_path / ONNX_FILES["int8"]
    graph.write_bytes(b"x" * 1_000)
    assert artifact_bytes(graph) == 1_000  # weights not (yet) there: the graph alone
    weights.write_bytes(b"w" * 2_500_000)
    onnx_file.write_bytes(b"o" * 300)
    (tmp_path / "model.int8.bin").write_bytes(b"not the ONNX model's")
    assert artifact_bytes(graph) == 2_501_000 and file_size_mb(graph) == 2.501
    assert artifact_bytes(onnx_file) == 300
