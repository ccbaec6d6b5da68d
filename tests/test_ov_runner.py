"""The OpenVINO runner (ov-cpu) on small real ONNX models made here: same outputs as ONNX Runtime, the precision
hint set and recorded (never OpenVINO's silent bf16 default), bundles opened on their default CPU variant."""

import json

import numpy as np
import onnx
import pytest

from edgeseg.errors import UsageError
from edgeseg.runners import open_runner
from edgeseg.runners.ort import OrtRunner
from tests.engine_helpers import make_model

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed")

from edgeseg.runners.ov import OvRunner, bf16_available  # noqa: E402


@pytest.fixture()
def tiny_onnx(tmp_path):
    def save(precision="fp32", name=None, **kwargs):
        path = tmp_path / (name or f"tiny.{precision}.onnx")
        onnx.save(make_model(precision, **kwargs), str(path))
        return path

    return save


def batch(seed=0):
    return np.random.default_rng(seed).normal(size=(1, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_matches_onnx_runtime_on_the_same_file(tiny_onnx, precision):
    path = tiny_onnx(precision)
    with OvRunner(path, threads=1) as ov_runner, OrtRunner(path, device="cpu", threads=1) as ort_runner:
        assert ov_runner.backend == "ov-cpu" and ov_runner.inference_precision == "f32"
        # what ran, read back from the compiled model
        assert ov_runner.compile_properties["INFERENCE_PRECISION_HINT"] == "f32"
        assert ov_runner.compile_properties["PERFORMANCE_HINT"] == "LATENCY"
        assert ov_runner.compile_properties["INFERENCE_NUM_THREADS"] == "1"
        assert ov_runner.input_spec.shape == (1, 3, 32, 32) and ov_runner.input_spec.dtype == "float32"
        assert ov_runner.preprocessing == ort_runner.preprocessing and ov_runner.output_kind == "logits"
        for seed in range(3):
            ours, reference = ov_runner.infer(batch(seed)), ort_runner.infer(batch(seed))
            assert ours.shape == reference.shape == (1, 2, 32, 32)
            # int8: OpenVINO and ONNX Runtime may round a requantized value differently by one step
            np.testing.assert_allclose(ours, reference, atol=1e-4 if precision == "fp32" else 0.06)


def test_output_is_not_overwritten_by_the_next_inference(tiny_onnx):
    with OvRunner(tiny_onnx(), threads=1) as runner:
        first = runner.infer(batch(0))
        kept = first.copy()
        runner.infer(batch(1))
        np.testing.assert_array_equal(first, kept)


def test_fp32_hint_is_set_explicitly_even_where_openvino_would_pick_bf16(tiny_onnx):
    path = tiny_onnx()
    runner = OvRunner(path, threads=1)  # the default hint is f32, whatever the CPU
    assert runner.inference_precision == "f32"
    if bf16_available():
        bf16 = OvRunner(path, threads=1, precision_hint="bf16")
        assert bf16.inference_precision == "bf16"
        # bf16 keeps ~3 significant digits: close to, but not the same as, f32
        assert np.abs(bf16.infer(batch()) - runner.infer(batch())).max() < 0.05
    else:
        with pytest.raises(UsageError, match="no bf16"):
            OvRunner(path, precision_hint="bf16")
    with pytest.raises(UsageError, match="precision hint"):
        OvRunner(path, precision_hint="fp16")


def test_model_without_metadata_or_broken_file_is_refused(tiny_onnx, tmp_path):
    with pytest.raises(UsageError, match="no edgeseg preprocessing"):
        OvRunner(tiny_onnx(preprocessing=False, name="bare.onnx"))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(UsageError, match="cannot be loaded by OpenVINO"):
        OvRunner(broken)


def test_open_runner_picks_openvino_for_ov_cpu_and_ir(tiny_onnx, tmp_path):
    path = tiny_onnx()
    with open_runner(path, device="cpu", backend="ov-cpu") as runner:
        assert runner.backend == "ov-cpu"
    with open_runner(path, device="cpu") as runner:
        assert runner.backend == "ort-cpu"
    ir = tmp_path / "tiny.xml"
    ov.save_model(ov.Core().read_model(str(path)), str(ir))
    with open_runner(ir) as runner:  # the IR keeps the ONNX metadata
        assert runner.backend == "ov-cpu" and runner.preprocessing.input_size == (32, 32)
    with pytest.raises(UsageError, match="is an OpenVINO IR"):
        open_runner(ir, backend="ort-cpu")
    with pytest.raises(UsageError, match="unknown backend"):
        open_runner(path, backend="openvino")
    with pytest.raises(UsageError, match="runs on the CPU"):
        open_runner(path, device="cuda", backend="ov-cpu")


def test_bundle_opens_its_default_variant_or_the_fastest_of_a_backend(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for precision, name in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        onnx.save(make_model(precision), str(bundle / name))

    def row(backend, precision, file, ms, drop, hint=None, peer=False):
        return {"backend": backend, "precision": precision, "file": file, "quantizer": None, "hint": hint,
                "peer": peer, "name": f"{backend}/{precision}{hint or ''}", "latency_p50_ms": ms, "miou_drop": drop}

    rows = [row("ort-cpu", "fp32", "model.onnx", 10.0, 0.0), row("ort-cpu", "int8", "model.int8.onnx", 5.0, 0.2),
            row("ov-cpu", "fp32", "model.onnx", 9.0, 0.0, "f32"),
            row("ov-cpu", "int8", "model.int8.onnx", 3.0, 2.0, "f32")]  # fastest, but over the budget
    report = {"rows": rows, "default": rows[1], "max_miou_drop": 1.0}
    (bundle / "report.json").write_text(json.dumps(report))
    with open_runner(bundle, device="auto") as runner:  # no engine: the default CPU variant
        assert runner.backend == "ort-cpu" and runner.path.name == "model.int8.onnx"
    with open_runner(bundle, backend="ov-cpu") as runner:  # fastest OpenVINO row within the budget
        assert runner.backend == "ov-cpu" and runner.path.name == "model.onnx" and runner.inference_precision == "f32"
    report["default"] = rows[2]
    (bundle / "report.json").write_text(json.dumps(report))
    with open_runner(bundle) as runner:
        assert runner.backend == "ov-cpu"
    with open_runner(bundle, backend="ort-cpu") as runner:
        assert runner.backend == "ort-cpu" and runner.path.name == "model.int8.onnx"


def test_demo_runs_on_openvino_and_bench_cli_accepts_ov_cpu(tiny_onnx, tmp_path, capsys):
    from edgeseg.demo.app import DemoConfig, run_demo
    from tests.conftest import write_noise_images
    from tests.test_cli import assert_one_line_error, run_cli

    frames = write_noise_images(tmp_path / "frames", 3, (40, 50, 3))
    out = tmp_path / "demo.mp4"
    summary = run_demo(DemoConfig(model=str(tiny_onnx()), source=str(frames), show=False, save=str(out),
                                  backend="ov-cpu", threads=1))
    assert summary["backend"] == "ov-cpu" and summary["frames"] == 3 and out.stat().st_size > 0
    code, _, err = run_cli(["demo", "-m", str(tiny_onnx()), "--source", str(frames), "--no-show",
                            "--backend", "openvino"], capsys)
    assert_one_line_error(code, err, "unknown backend 'openvino'")


def test_missing_openvino_names_the_extra(tiny_onnx, monkeypatch):
    from edgeseg.errors import MissingDependency

    path = tiny_onnx()
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # what an install without the extra sees
    with pytest.raises(MissingDependency, match=r"edgeseg\[openvino\]"):
        OvRunner(path)
    from edgeseg.cpu_variants import openvino_available

    assert not openvino_available()


def test_bench_runs_a_bundles_default_openvino_variant(tmp_path):
    from edgeseg.bench.artifacts import bundle_file

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for precision, name in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        onnx.save(make_model(precision), str(bundle / name))
    assert bundle_file(bundle, "int8", "ov-cpu") is None  # no NNCF IR, no report naming another file
    assert bundle_file(bundle, "fp32", "ov-cpu") == bundle / "model.onnx"
    default = {"backend": "ov-cpu", "precision": "int8", "file": "model.int8.onnx", "quantizer": "edgeseg",
               "hint": "bf16", "peer": False}
    (bundle / "report.json").write_text(json.dumps({"default": default}))
    assert bundle_file(bundle, "int8", "ov-cpu") == bundle / "model.int8.onnx"
    assert bundle_file(bundle, "int8", "ort-cpu") == bundle / "model.int8.onnx"


def test_openvino_runner_never_imports_torch(tiny_onnx):
    import subprocess
    import sys

    code = ("import sys, numpy as np; from edgeseg.runners import open_runner\n"
            f"r = open_runner({str(tiny_onnx())!r}, backend='ov-cpu', threads=1)\n"
            "r.infer(np.zeros((1, 3, 32, 32), np.float32))\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_a_variant_openvino_cannot_open_is_left_out_in_a_child_process(tiny_onnx, tmp_path, caplog):
    """Each OpenVINO variant is first compiled and run once in a child process: one that fails (here a broken file;
    for Hugging Face's Sapiens2 INT8 graph a segfault, tests/test_byom_hf_architectures.py) is left out with why,
    and the others go on to be measured."""
    import shutil

    from edgeseg.cpu_variants import CpuVariant, openvino_survivors

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(tiny_onnx(), bundle / "model.onnx")
    (bundle / "model.int8.onnx").write_bytes(b"not an onnx graph")
    elsewhere = tmp_path / "peers" / "peer.onnx"  # a peer's file lives outside the bundle, given by absolute path
    elsewhere.parent.mkdir()
    shutil.copy(tiny_onnx(), elsewhere)
    variants = [CpuVariant("ort-cpu", "fp32", "model.onnx"), CpuVariant("ov-cpu", "fp32", "model.onnx", hint="f32"),
                CpuVariant("ov-cpu", "int8", "model.int8.onnx", "edgeseg", "f32"),
                CpuVariant("ov-cpu", "int8", str(elsewhere.resolve()), "nncf-defaults", "f32", peer=True)]
    with caplog.at_level("WARNING", logger="edgeseg.cpu_variants"):
        kept, left_out = openvino_survivors(bundle, variants, threads=1)
    assert [variant.name for variant in kept] == [variants[0].name, variants[1].name, variants[3].name]
    assert len(left_out) == 1 and left_out[0]["name"] == variants[2].name
    assert left_out[0]["why"].startswith("failed: ") and "cannot be loaded by OpenVINO" in left_out[0]["why"]
    assert f"left out {variants[2].name}: OpenVINO failed" in caplog.text
