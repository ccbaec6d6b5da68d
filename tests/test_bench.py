"""`edgeseg bench` on generated CamVid with a random fcn-resnet18 at 48x64: the rows run in their own processes,
results are written in every format, rows that cannot run are isolated, gates fail after writing, bad suites
fail before any row, and the README table is generated between its markers."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeseg.bench.harness import PlannedRow, gate_violations, plan_rows, planned_unsupported
from edgeseg.bench.outputs import ResultsWriter
from edgeseg.bench.suite import ModelSpec, Suite, load_suite
from edgeseg.cli import main
from edgeseg.zoo.registry import list_models
from edgeseg.zoo.weights import bundled_weights
from tests.conftest import REPO, make_camvid
from tests.test_cli import assert_one_line_error, run_cli

TINY_SUITE = """
name = "tiny"
precisions = ["fp32", "int8"]
backends = ["torch", "ort-cpu", "ov-cpu", "ort-cuda", "trt"]
sizes = ["48x64"]
eval_limit = 2
batch = 2
warmup = 1
min_runs = 3
min_seconds = 0.02
calib_count = 4
calib_strategy = "random"

[[models]]
name = "fcn-resnet18"
weights = "random"
"""
MODEL = "fcn-resnet18"
BACKENDS = ("torch", "ort-cpu", "ov-cpu", "ort-cuda", "trt")
ROW_IDS = [f"{MODEL}/{p}/{b}/48x64" for b in BACKENDS for p in ("fp32", "int8")]


def cli_captured(args) -> tuple[int, str, str]:
    """The console entry point with its output captured (module fixtures cannot use capsys)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exit_info:
            code = 0 if exit_info.code is None else exit_info.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One run of the tiny suite through the CLI, with a gate that a random model must fail."""
    root = tmp_path_factory.mktemp("bench")
    data = make_camvid(root / "data")
    suite = root / "tiny.toml"
    suite.write_text(TINY_SUITE)
    results = root / "results"
    code, out, err = cli_captured(["bench", "--suite", str(suite), "--data-root", str(data), "--out", str(results),
                                   "--cache-dir", str(root / "cache"), "--threads", "1", "--machine", "test box",
                                   "--fail-under-miou", "0.99"])
    report = json.loads((results / "results.json").read_text())
    rows = {row["id"]: row for row in report["rows"]}
    return SimpleNamespace(root=root, data=data, suite=suite, results=results, cache=root / "cache", code=code,
                           out=out, err=err, report=report, rows=rows)


@pytest.mark.slow
def test_tiny_suite_writes_json_csv_markdown_and_plots(bench_run):
    report = bench_run.report
    assert report["schema"] == 1 and report["complete"] is True
    assert list(bench_run.rows) == ROW_IDS  # torch (the reference) first; one row per configuration
    # progress on stderr: what the cache made, then one line per row; the results (table, files) on stdout
    assert f"export {MODEL} at 48x64 to ONNX" in bench_run.err and f"int8 graph of {MODEL}" in bench_run.err
    assert f"[1/{len(ROW_IDS)}] " in bench_run.err and "[1/" not in bench_run.out
    assert f"wrote {bench_run.results / 'results.json'}" in bench_run.out
    env = report["env"]
    for key in ("cpu_model", "cpu_cores", "threads", "versions", "gpu", "jetson", "machine_name"):
        assert key in env, key
    assert env["threads"] == 1 and env["machine_name"] == "test-box" and "onnxruntime" in env["versions"]
    for row_id in (f"{MODEL}/fp32/torch/48x64", f"{MODEL}/fp32/ort-cpu/48x64", f"{MODEL}/int8/ort-cpu/48x64"):
        row = bench_run.rows[row_id]
        assert row["status"] == "ok", row
        for section in ("latency_ms", "e2e_latency_ms"):
            stats = row[section]
            assert stats["runs"] >= 3 and 0 < stats["p50_ms"] <= stats["p99_ms"]
            assert {"mean_ms", "p90_ms", "std_ms"} <= set(stats)
        assert row["throughput_fps"]["batch_1"] > 0 and row["artifact"]["mb"] > 0
        assert row["params_m"] > 1 and row["gflops"] > 0
    # torch takes any batch; the static batch-1 ONNX says why it reports batch 1 only
    assert bench_run.rows[f"{MODEL}/fp32/torch/48x64"]["throughput_fps"]["batch_2"] > 0
    assert "static batch" in bench_run.rows[f"{MODEL}/int8/ort-cpu/48x64"]["throughput_note"]

    with open(bench_run.results / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["id"] for row in table] == ROW_IDS
    assert float(table[0]["latency_p50_ms"]) > 0 and table[1]["status"] == "unsupported"
    markdown = (bench_run.results / "results.md").read_text()
    assert "| model | precision | backend |" in markdown and "unsupported" in markdown
    for name in ("latency_vs_miou.png", "per_class_iou_change.png"):
        assert (bench_run.results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.slow
def test_rows_that_cannot_run_are_isolated(bench_run):
    torch_int8 = bench_run.rows[f"{MODEL}/int8/torch/48x64"]
    assert torch_int8["status"] == "unsupported" and "FP32 only" in torch_int8["reason"]
    for precision in ("fp32", "int8"):
        cuda = bench_run.rows[f"{MODEL}/{precision}/ort-cuda/48x64"]
        assert cuda["status"] == "unsupported" and "onnxruntime-gpu" in cuda["reason"]
        trt = bench_run.rows[f"{MODEL}/{precision}/trt/48x64"]
        assert trt["status"] == "unsupported" and "TensorRT" in trt["reason"]
        assert bench_run.rows[f"{MODEL}/{precision}/ort-cpu/48x64"]["status"] == "ok"


@pytest.mark.slow
def test_openvino_rows_run_the_onnx_and_the_nncf_int8_with_f32_set(bench_run):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    reference_id = f"{MODEL}/fp32/torch/48x64"
    for precision, suffix in (("fp32", ".onnx"), ("int8", ".xml")):
        row = bench_run.rows[f"{MODEL}/{precision}/ov-cpu/48x64"]
        assert row["status"] == "ok", row
        assert row["runtime"]["backend"] == "ov-cpu" and row["runtime"]["inference_precision"] == "f32"
        assert row["artifact"]["path"].endswith(suffix) and row["accuracy"]["reference"] == reference_id
        assert row["latency_ms"]["p50_ms"] > 0
        # FCN ends by upsampling its logits: the runner's exact split of that resize ran, and is recorded
        assert [rewrite.split(":")[0] for rewrite in row["runtime"]["openvino_rewrites"]] == ["split-output-resize"]
    assert bench_run.rows[f"{MODEL}/fp32/ov-cpu/48x64"]["accuracy"]["pixel_agreement"] > 0.99
    artifact = bench_run.rows[f"{MODEL}/int8/ov-cpu/48x64"]["artifact"]
    assert artifact["path"].endswith("model.int8.ov.xml")
    ir = Path(artifact["path"]).expanduser()  # an IR's size is its graph and its weights
    assert artifact["mb"] == (ir.stat().st_size + ir.with_suffix(".bin").stat().st_size) / 1e6


@pytest.mark.slow
def test_accuracy_is_compared_with_the_fp32_torch_predictions(bench_run):
    reference_id = f"{MODEL}/fp32/torch/48x64"
    reference = bench_run.rows[reference_id]["accuracy"]
    assert reference["reference"] == reference_id and reference["miou_drop"] == 0.0
    fp32 = bench_run.rows[f"{MODEL}/fp32/ort-cpu/48x64"]["accuracy"]
    assert fp32["reference"] == reference_id and abs(fp32["miou_drop"]) < 1e-6
    assert fp32["pixel_agreement"] > 0.99  # the export's parity check guarantees this
    int8 = bench_run.rows[f"{MODEL}/int8/ort-cpu/48x64"]["accuracy"]
    assert 0 <= int8["agreement_miou"] <= 1 and 0 < int8["pixel_agreement"] <= 1
    assert set(int8["per_class_iou_change"]) == set(reference["per_class_iou"])
    assert int8["images"] == 2


@pytest.mark.slow
def test_peak_rss_is_measured_in_a_fresh_process_per_row(bench_run):
    measured = [row for row in bench_run.rows.values() if row["status"] == "ok"]
    pids = [row["runtime"]["pid"] for row in measured]
    assert len(set(pids)) == len(measured) and os.getpid() not in pids
    for row in measured:
        assert row["memory"]["peak_rss_mb"] > row["memory"]["baseline_rss_mb"] > 0
    # An ONNX Runtime row never carries torch: it would, had it run in the torch row's process.
    torch_rss = bench_run.rows[f"{MODEL}/fp32/torch/48x64"]["memory"]["peak_rss_mb"]
    assert bench_run.rows[f"{MODEL}/int8/ort-cpu/48x64"]["memory"]["peak_rss_mb"] < torch_rss


@pytest.mark.slow
def test_failed_gate_exits_non_zero_after_writing_and_names_the_rows(bench_run):
    assert bench_run.code == 1
    last = [line for line in bench_run.err.splitlines() if line.strip()][-1]
    assert last.startswith("edgeseg: error: gate failed: mIoU under 0.99:")
    for precision in ("fp32", "int8"):
        assert f"{MODEL}/{precision}/ort-cpu/48x64" in last
    assert "ort-cuda" not in last  # unsupported rows are not judged
    assert bench_run.report["complete"] is True


@pytest.mark.slow
def test_cached_onnx_prebuilt_model_and_passing_gates(bench_run, tmp_path, capsys):
    """A second run reuses the cached ONNX files, benchmarks a prebuilt .onnx against its zoo model's reference,
    adds the torch reference row the backends left out, and passes its gates."""
    int8 = next(bench_run.cache.glob(f"{MODEL}-48x64-*/model.int8.onnx"))
    suite = tmp_path / "prebuilt.toml"
    suite.write_text(TINY_SUITE.replace('backends = ["torch", "ort-cpu", "ov-cpu", "ort-cuda", "trt"]',
                                        'backends = ["ort-cpu"]')
                     + f'\n[[models]]\npath = "{int8}"\nlabel = "prebuilt"\nreference = "{MODEL}"\n')
    code, out, err = run_cli(["bench", "--suite", str(suite), "--data-root", str(bench_run.data), "--out",
                              str(tmp_path / "results"), "--cache-dir", str(bench_run.cache), "--threads", "1",
                              "--no-plots", "--max-miou-drop", "100", "--fail-under-miou", "0"], capsys)
    assert code == 0, err
    assert "[1/" in err  # the run's progress is here, and no ONNX file was made: every one came from the cache
    assert f"export {MODEL}" not in err and f"int8 graph of {MODEL}" not in err
    rows = {row["id"]: row for row in json.loads((tmp_path / "results" / "results.json").read_text())["rows"]}
    assert rows[f"{MODEL}/fp32/torch/48x64"]["role"] == "reference"
    assert rows["prebuilt/fp32/ort-cpu/48x64"]["status"] == "unsupported"
    prebuilt = rows["prebuilt/int8/ort-cpu/48x64"]
    zoo_int8 = rows[f"{MODEL}/int8/ort-cpu/48x64"]
    assert prebuilt["accuracy"]["reference"] == f"{MODEL}/fp32/torch/48x64"
    # the same file against the same reference: the same predictions, the same agreement
    assert prebuilt["accuracy"]["agreement_miou"] == pytest.approx(zoo_int8["accuracy"]["agreement_miou"])
    assert prebuilt["accuracy"]["miou"] == pytest.approx(zoo_int8["accuracy"]["miou"])


def test_gate_violations_name_rows():
    def row(row_id, status="ok", miou=0.7, drop=0.2):
        return {"id": row_id, "status": status, "accuracy": {"miou": miou, "miou_drop": drop}}

    rows = [row("a/fp32/torch"), row("a/int8/ort-cpu", drop=1.7), row("a/fp16/ort-cuda", status="unsupported"),
            row("b/int8/ort-cpu", status="error")]
    messages = gate_violations(rows, max_miou_drop=1.0, fail_under_miou=0.5)
    assert any("a/int8/ort-cpu (+1.70)" in message for message in messages)
    assert any("b/int8/ort-cpu" in message and "could not be checked" in message for message in messages)
    assert not any("a/fp32/torch" in message or "ort-cuda" in message for message in messages)
    assert gate_violations(rows, None, None) == []


@pytest.mark.parametrize("change, pattern", [
    (("precisions = [", "precison = ["), "unknown key 'precison'; did you mean 'precisions'?"),
    (('name = "fcn-resnet18"', 'name = "fcn-resnet81"'), "unknown model 'fcn-resnet81'"),
    (('"trt"]', '"tensorrt"]'), "unknown backend 'tensorrt'"),
    (('"int8"]', '"int4"]'), "unknown precision 'int4'; did you mean 'int8'?"),
    (('weights = "random"', 'weights = "random"\nlable = "x"'), "unknown key 'lable'; did you mean 'label'?"),
])
def test_bad_suite_fails_before_any_row(tmp_path, tiny_camvid, capsys, change, pattern):
    suite = tmp_path / "bad.toml"
    suite.write_text(TINY_SUITE.replace(*change))
    code, _, err = run_cli(["bench", "--suite", str(suite), "--data-root", str(tiny_camvid),
                            "--out", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache")], capsys)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "results").exists()


def test_bad_options_and_missing_data_fail_before_any_row(tmp_path, tiny_camvid, capsys):
    out = ["--out", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache")]
    code, _, err = run_cli(["bench", "--models", MODEL, "--weights", "random", "--backends", "ort-gpu",
                            "--data-root", str(tiny_camvid), *out], capsys)
    assert_one_line_error(code, err, "unknown backend 'ort-gpu'; did you mean 'ort-cpu' or 'ort-cuda'")
    code, _, err = run_cli(["bench", "--models", MODEL, "--weights", "random", "--data-root",
                            str(tmp_path / "absent"), *out], capsys)
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_cli(["bench", "--models", MODEL, "--fail-under-miou", "65", *out], capsys)
    assert_one_line_error(code, err, "give mIoU as a fraction")
    unbundled = next(entry.name for entry in list_models() if bundled_weights(entry.name) is None)
    code, _, err = run_cli(["bench", "--models", unbundled, "--data-root", str(tiny_camvid), *out], capsys)
    assert_one_line_error(code, err, "no bundled CamVid checkpoint")
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_planning_marks_rows_that_cannot_run_and_adds_the_reference(bench_run):
    suite = Suite(name="t", models=(ModelSpec(MODEL, zoo_name=MODEL, weights="random"),),
                  precisions=("fp32", "fp16"), backends=("ort-cpu", "torch"), sizes=((48, 64),))
    rows = plan_rows(suite)
    assert [row.id for row in rows][:2] == [f"{MODEL}/fp32/torch/48x64", f"{MODEL}/fp16/torch/48x64"]
    assert "FP32 only" in planned_unsupported(rows[1])
    without_torch = plan_rows(Suite(name="t", models=suite.models, backends=("ort-cpu",), sizes=((48, 64),)))
    assert without_torch[0].backend == "torch" and without_torch[0].role == "reference"
    int8 = next(bench_run.cache.glob(f"{MODEL}-48x64-*/model.int8.onnx"))
    prebuilt = ModelSpec("prebuilt", path=str(int8))
    assert "is an int8 model" in planned_unsupported(PlannedRow(prebuilt, "fp32", "ort-cpu", (48, 64)))
    assert planned_unsupported(PlannedRow(prebuilt, "int8", "ort-cpu", (48, 64))) is None
    assert "without a torch model" in planned_unsupported(PlannedRow(prebuilt, "fp32", "torch", (48, 64)))


def test_cpu_suite_file():
    suite = load_suite("cpu")
    # The suite benchmarks every bundled CamVid reference.
    assert [model.label for model in suite.models] == ["segformer-b0", "deeplabv3plus-mobilenetv2", "unet-mobilenetv2"]
    assert suite.precisions == ("fp32", "int8") and suite.optional_precisions == ("fp16", "bf16")
    assert suite.backends == ("torch", "ort-cpu", "ov-cpu") and suite.sizes == ((360, 480),)
    assert (suite.dataset, suite.split) == ("camvid", "test")
    rows = plan_rows(suite, with_optional=True)
    assert {row.precision for row in rows if row.optional} == {"fp16", "bf16"}
    assert len(rows) == 3 * 3 * 4
    # bf16 is OpenVINO's; ONNX Runtime and torch rows of it are reported unsupported, as is OpenVINO fp16
    runnable = {(row.backend, row.precision) for row in rows if planned_unsupported(row) is None}
    assert runnable == {("torch", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "fp16"), ("ort-cpu", "int8"),
                        ("ov-cpu", "fp32"), ("ov-cpu", "bf16"), ("ov-cpu", "int8")}


@pytest.mark.slow
def test_results_are_written_after_each_row(bench_run, tmp_path):
    writer = ResultsWriter(tmp_path, {"warnings": []}, {"name": "t"})
    writer.add({"id": "m/fp32/torch/48x64", "model": "m", "precision": "fp32", "backend": "torch", "size": [48, 64],
                "status": "error", "reason": "boom"})
    assert not (tmp_path / "results.json").exists()  # nothing measured yet: no results file
    measured = next(row for row in bench_run.report["rows"] if row["status"] == "ok")
    writer.add(measured)
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["schema"] == 1 and report["complete"] is False and len(report["rows"]) == 2
    assert "Incomplete run" in (tmp_path / "results.md").read_text()
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 3
    writer.finish()
    assert json.loads((tmp_path / "results.json").read_text())["complete"] is True


@pytest.mark.slow
def test_readme_table_is_generated_between_markers(bench_run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nbefore\n\n<!-- bench-table:start -->\nold table\n<!-- bench-table:end -->\n\nafter\n")
    script = [sys.executable, str(REPO / "benchmarks" / "render_readme_table.py"),
              str(bench_run.results / "results.json"), "--readme", str(readme)]
    result = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = readme.read_text()
    head, rest = text.split("<!-- bench-table:start -->\n")
    table, tail = rest.split("<!-- bench-table:end -->")
    assert head == "# title\n\nbefore\n\n" and tail == "\n\nafter\n" and "old table" not in table
    assert "| fcn-resnet18 | int8 | ort-cpu | 48x64 |" in table and "test-box" in table
    assert "do not edit by hand" in table and "Not measured:" in table
    assert subprocess.run([*script, "--check"], capture_output=True, timeout=120).returncode == 0
    readme.write_text("# no markers\n")
    broken = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert broken.returncode == 2 and "bench-table:start" in broken.stderr


def test_artifact_paths_are_recorded_without_this_machines_folders(tmp_path, monkeypatch):
    """Committed results must not name the folder edgeseg was checked out in, nor the user's home."""
    import edgeseg
    from edgeseg.bench.harness import _file_record

    bundled = Path(edgeseg.__file__).resolve().parent / "weights" / "segformer-b0.safetensors"
    assert _file_record(bundled)["path"] == "edgeseg/weights/segformer-b0.safetensors"
    monkeypatch.setenv("HOME", str(tmp_path))
    cached = tmp_path / ".cache" / "edgeseg" / "model.onnx"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"0")
    assert _file_record(cached)["path"] == "~/.cache/edgeseg/model.onnx"


def test_cached_files_are_remade_when_the_code_that_made_them_changes(tmp_path, monkeypatch):
    """The bench cache once served DeepLabV3+ ONNX files exported before its padding changed (zoo/smp.py): the key
    now hashes edgeseg's source, so a changed module gives a new cache folder."""
    import shutil

    from edgeseg.bench import artifacts

    copies = {}
    for name in ("as-is", "changed"):
        copies[name] = tmp_path / name / "edgeseg"
        shutil.copytree(artifacts.PACKAGE_DIR, copies[name], ignore=shutil.ignore_patterns("__pycache__", "weights"))
    smp = copies["changed"] / "zoo" / "smp.py"
    smp.write_text(smp.read_text().replace("multiple=model.encoder.output_stride", "multiple=32"))
    assert artifacts.code_fingerprint(copies["as-is"]) == artifacts.code_fingerprint(artifacts.PACKAGE_DIR)
    assert artifacts.code_fingerprint(copies["changed"]) != artifacts.code_fingerprint(artifacts.PACKAGE_DIR)

    suite = SimpleNamespace(dynamic_batch=False, dataset="camvid", calib_count=8, calib_strategy="random",
                            calib_split="train", quant_method="minmax", quant_max_miou_drop=1.0)
    weights = artifacts.ResolvedWeights("w.safetensors", "ab" * 32, "w.safetensors")
    model = SimpleNamespace(zoo_name="deeplabv3plus-mobilenetv2")
    keys = {}
    for name, package in copies.items():
        monkeypatch.setattr(artifacts, "PACKAGE_DIR", package)
        keys[name] = artifacts.cache_key(model, weights, (360, 480), suite)
    assert keys["as-is"] != keys["changed"] and keys["as-is"].startswith("deeplabv3plus-mobilenetv2-360x480-")
