"""`edgeseg build` on generated data: a complete bundle, a readable report, and no half-built bundle when it
is interrupted."""

import importlib.util
import json

import pytest

from edgeseg.build import BuildConfig, BuildResult, build
from edgeseg.errors import UsageError
from tests.log_lines import captured


@pytest.fixture
def build_lines():
    """What edgeseg.build logs: its "[n/steps]" stage lines and each stage's indented lines."""
    with captured("edgeseg.build") as lines:
        yield lines


def tiny_build_config(data_root, out_dir, **overrides):
    settings = dict(model="fcn-resnet18", target="cpu", weights="random", out_dir=str(out_dir), size=(48, 64),
                    data_root=str(data_root), calib_count=4, calib_strategy="random", max_miou_drop=None,
                    latency_rounds=2, threads=1)
    settings.update(overrides)
    return BuildConfig(**settings)


@pytest.mark.slow
def test_cpu_build_writes_a_complete_bundle(tmp_path, tiny_camvid, build_lines, capsys):
    from edgeseg import logs

    logs.configure()  # as the CLI does: the stages' lines on stderr, indented under the build's steps
    result = build(tiny_build_config(tiny_camvid, tmp_path / "bundle", runoff_margin=10.0))
    out, err = capsys.readouterr()
    assert out == ""  # stdout is for the CLI's result line: no stage (nor NNCF) writes there
    bundle = result.bundle
    lines = build_lines.lines
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "calibration.json", "manifest.json",
                 "report.json", "report.md", "model.onnx.json", "model.int8.onnx.json"):
        assert (bundle / name).is_file(), name
    report = json.loads((bundle / "report.json").read_text())
    for precision in ("fp32", "fp16", "int8"):
        entry = report["precisions"][precision]
        for key in ("miou", "miou_drop", "latency_p50_ms", "latency_ratio", "size_mb"):
            assert isinstance(entry[key], float), (precision, key)
    assert report["precisions"]["fp32"]["latency_ratio"] == 1.0
    assert report["precisions"]["int8"]["size_mb"] < report["precisions"]["fp32"]["size_mb"] / 2
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["artifacts"]["int8"]["sha256"] and manifest["checks"]["parity"]["passed"]
    assert [line.split("]")[0] for line in lines if line.startswith("[")] == [f"[{i}/7" for i in range(1, 8)]
    assert not (tmp_path / "bundle.partial").exists()
    # every CPU backend x precision as a row, ratios against ORT fp32 of the same run, and a default within budget
    rows = {row["name"]: row for row in report["rows"]}
    assert {"ort-cpu/fp32", "ort-cpu/fp16", "ort-cpu/int8-edgeseg"} <= set(rows)
    for row in rows.values():
        for key in ("miou", "miou_drop", "latency_p50_ms", "latency_ratio", "size_mb"):
            assert isinstance(row[key], float), (row["name"], key)
    assert rows["ort-cpu/fp32"]["latency_ratio"] == 1.0 and rows["ort-cpu/fp32"]["miou_drop"] == 0.0
    assert report["default"]["name"] in rows
    # no budget: every row is eligible, and with this margin every one goes through the runoff, which decides
    timed = [row for row in rows.values() if not row["peer"]]
    assert all("runoff" in row for row in timed) and report["runoff"]["rows"] == [row["name"] for row in timed]
    assert report["default"]["runoff"]["p50_ms"] == min(row["runoff"]["p50_ms"] for row in timed)
    assert rows["ort-cpu/fp32"]["runoff"]["latency_ratio"] == 1.0
    assert "Runoff: the rows within 1000% of the fastest, timed again" in (bundle / "report.md").read_text()
    if importlib.util.find_spec("openvino"):
        assert (bundle / "model.int8.ov.xml").is_file() and (bundle / "model.int8.ov.bin").is_file()
        assert {"ov-cpu/fp32", "ov-cpu/int8-nncf+f32", "ov-cpu/int8-edgeseg+f32"} <= set(rows)
        assert all(row["inference_precision"] == row["hint"] for row in rows.values() if row["backend"] == "ov-cpu")
        assert manifest["artifacts"]["int8-nncf"]["sha256"]
        assert "\n      NNCF INT8 (performance preset, default scheme, 4 calibration images): model.int8.ov.xml" in err
    # the variants' result lines, from cpu_variants' logger, indented under step 6
    step = err.index("[6/7] evaluate and time")
    assert err.index("\n      ort-cpu/fp32: mIoU ") > step and err.index("\n      ort-cpu/int8-edgeseg: p50 ") > step
    assert "**default**" in (bundle / "report.md").read_text()
    # the result is what manifest.json records, and names the variant a device runs
    assert isinstance(result, BuildResult) and bundle == tmp_path / "bundle"
    assert {key: manifest[key] for key in result.manifest_fields()} == json.loads(json.dumps(result.manifest_fields()))
    assert result.default_variant == report["default"]["name"] and result.default_variant in result.runs
    assert result.engine == manifest["engine"] and result.engine["engine"] is None


def test_interrupted_build_leaves_nothing_that_looks_valid(tmp_path, tiny_camvid, build_lines):
    def interrupt_at_quantization(line):
        if line.startswith("[4/7]"):
            raise KeyboardInterrupt

    build_lines.on_line = interrupt_at_quantization
    with pytest.raises(KeyboardInterrupt):
        build(tiny_build_config(tiny_camvid, tmp_path / "bundle"))
    assert build_lines.lines[-1].startswith("[4/7] INT8 Q/DQ")  # it stopped where it was interrupted
    assert not (tmp_path / "bundle").exists()
    assert not (tmp_path / "bundle.partial").exists()


def test_bad_target_and_unknown_model_fail_before_any_work(tmp_path, tiny_camvid):
    with pytest.raises(UsageError, match=r"^unknown model 'segformer-b7'; did you mean segformer-b0\b"):
        build(tiny_build_config(tiny_camvid, tmp_path / "b", model="segformer-b7"))
    with pytest.raises(UsageError, match=r"^unknown target 'jetson-orin-nanoo'; did you mean jetson-orin-nano\b"):
        build(tiny_build_config(tiny_camvid, tmp_path / "b", target="jetson-orin-nanoo"))
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()


def test_cli_build_unwritable_output_is_one_line(tmp_path, tiny_camvid, capsys):
    from tests.test_cli import assert_one_line_error, run_cli

    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(["build", "--model", "fcn-resnet18", "--weights", "random", "--size", "48x64",
                            "--data-root", str(tiny_camvid), "--out", str(blocker / "bundle")], capsys)
    assert_one_line_error(code, err, "file is a file, not a folder")


@pytest.mark.slow
def test_pruned_model_goes_through_build_unchanged(tmp_path, tiny_camvid):
    bundle = build(tiny_build_config(tiny_camvid, tmp_path / "pruned", prune_ratio=0.3)).bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["inputs"]["weights"]["path"].endswith("pruned.safetensors")
    pruned = json.loads((bundle / "pruned.safetensors.json").read_text())
    assert pruned["spec"] and pruned["metrics"]["gflops_reduction"] > 0.2
    export = json.loads((bundle / "model.onnx.json").read_text())
    assert export["spec"] == pruned["spec"] and export["checks"]["parity"]["passed"]
    report = json.loads((bundle / "report.json").read_text())
    assert set(report["precisions"]) == {"fp32", "fp16", "int8"}


def test_prune_settings_are_checked_first(tmp_path, tiny_camvid):
    with pytest.raises(UsageError, match="--prune must be between 0 and 1"):
        tiny_build_config(tiny_camvid, tmp_path / "b", prune_ratio=1.5)
    with pytest.raises(UsageError, match="add --prune"):
        tiny_build_config(tiny_camvid, tmp_path / "b", finetune_epochs=2)


@pytest.mark.slow
def test_quiet_build_says_only_its_result(tmp_path, tiny_camvid, capsys):
    """-q: no stage lines, no stage details; the result line on stdout names what a device runs from the bundle."""
    from tests.test_cli import run_cli

    code, out, err = run_cli(["-q", "build", "--model", "fcn-resnet18", "--weights", "random", "--size", "48x64",
                              "--target", "jetson-orin-nano", "--data-root", str(tiny_camvid), "--out",
                              str(tmp_path / "kit"), "--calib-count", "4", "--calib-strategy", "random",
                              "--max-miou-drop", "-1", "--threads", "1", "--limit", "2"], capsys)
    assert code == 0, err
    assert out.splitlines() == [f"bundle ready in {tmp_path / 'kit'} ({out.split('(')[1].split(')')[0]}); it runs "
                                "no engine yet: finish it on the jetson-orin-nano (build_engine.sh or 'edgeseg "
                                "engine build')"]
    assert "[1/6]" not in err and "parity with torch" not in err and "fp32: p50" not in err
    assert (tmp_path / "kit" / "build_engine.sh").is_file()
