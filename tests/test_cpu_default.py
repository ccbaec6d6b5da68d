"""The CPU bundle's default variant: the fastest row within the accuracy budget, never a peer, and, where rows are
close, the fastest of a longer runoff measured on the real runners (so the choice does not flip on noise)."""

import onnx
import pytest

from edgeseg.cpu_variants import (RUNOFF_MARGIN, RUNOFF_ROUNDS_FACTOR, CpuVariant, choose_default, open_variant,
                                  runoff)
from tests.engine_helpers import make_model


def row(backend, precision, file, p50, drop, quantizer=None, hint=None, peer=False, **extra):
    variant = CpuVariant(backend, precision, file, quantizer, hint, peer)
    return {**variant.to_dict(), "latency_p50_ms": p50, "latency_ratio": p50 / 5.0, "miou_drop": drop, **extra}


def test_default_is_the_fastest_row_within_the_budget_and_never_a_peer():
    rows = [row("ort-cpu", "fp32", "model.onnx", 5.0, 0.0),
            row("ort-cpu", "int8", "model.int8.onnx", 2.0, 0.8, "edgeseg"),
            row("ov-cpu", "bf16", "model.onnx", 3.0, 0.1, hint="bf16"),
            row("ov-cpu", "int8", "peer.xml", 1.0, 0.0, "nncf-defaults", "bf16", peer=True)]
    assert choose_default(rows, 0.5)["name"] == "ov-cpu/bf16"
    assert choose_default(rows, 1.0)["name"] == "ort-cpu/int8-edgeseg"
    assert choose_default(rows, None)["name"] == "ort-cpu/int8-edgeseg"  # no budget, still no peer
    assert choose_default(rows, 0.0)["name"] == "ort-cpu/fp32"


def test_a_runoff_overrules_the_short_measurement_between_close_rows():
    rows = [row("ort-cpu", "fp32", "model.onnx", 5.0, 0.0),
            row("ov-cpu", "bf16", "model.onnx", 2.00, 0.1, hint="bf16", runoff={"p50_ms": 2.2, "latency_ratio": 0.44}),
            row("ov-cpu", "int8", "model.int8.ov.xml", 2.05, 0.3, "nncf", "bf16",
                runoff={"p50_ms": 2.1, "latency_ratio": 0.42})]
    assert choose_default(rows, 0.5)["name"] == "ov-cpu/int8-nncf+bf16"
    # a budget that leaves out the runoff's winner: the fastest eligible row, by the runoff still
    assert choose_default(rows, 0.2)["name"] == "ov-cpu/bf16"
    # a subset whose fastest row was not in the runoff (e.g. ONNX Runtime rows only): the short measurement decides
    assert choose_default(rows[:1], 0.5)["name"] == "ort-cpu/fp32"


@pytest.fixture()
def two_file_bundle(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    onnx.save(make_model("fp32"), str(bundle / "model.onnx"))
    onnx.save(make_model("int8"), str(bundle / "model.int8.onnx"))
    return bundle


def opened(bundle, rows):
    """The rows' real runners by name, as measure_variants holds them when it calls the runoff."""
    return {entry["name"]: open_variant(bundle, CpuVariant.from_dict(entry), threads=1) for entry in rows}


def test_runoff_times_the_close_rows_again_with_the_reference(two_file_bundle):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    rows = [row("ort-cpu", "fp32", "model.onnx", 5.0, 0.0),
            row("ort-cpu", "int8", "model.int8.onnx", 1.0, 0.2, "edgeseg"),
            row("ov-cpu", "int8", "model.int8.onnx", 1.0 * (1 + RUNOFF_MARGIN) - 1e-9, 0.2, "edgeseg", "f32"),
            row("ov-cpu", "fp32", "model.onnx", 1.0 * (1 + RUNOFF_MARGIN) + 0.01, 0.0, hint="f32"),  # too slow
            row("ov-cpu", "int8", "model.int8.onnx", 0.5, 0.0, "nncf-defaults", "f32", peer=True)]  # a peer
    summary = runoff(rows, opened(two_file_bundle, rows), 0.5, latency_rounds=2)
    assert summary["rows"] == ["ort-cpu/int8-edgeseg", "ov-cpu/int8-edgeseg+f32"]
    assert summary["rounds"] == 2 * RUNOFF_ROUNDS_FACTOR and summary["margin"] == RUNOFF_MARGIN
    reference_ms = summary["reference_p50_ms"]
    assert reference_ms > 0
    timed = [entry for entry in rows if "runoff" in entry]
    assert [entry["name"] for entry in timed] == summary["rows"]  # not the reference, the slow row nor the peer
    for entry in timed:  # measured now, on the real runners: not the numbers the rows came with
        assert entry["runoff"]["p50_ms"] > 0 and entry["runoff"]["p50_ms"] != entry["latency_p50_ms"]
        assert entry["runoff"]["latency_ratio"] == pytest.approx(entry["runoff"]["p50_ms"] / reference_ms)
    chosen = choose_default(rows, 0.5)
    assert chosen["runoff"]["p50_ms"] == min(entry["runoff"]["p50_ms"] for entry in timed)


def test_no_runoff_when_one_row_is_clearly_fastest(two_file_bundle):
    rows = [row("ort-cpu", "fp32", "model.onnx", 5.0, 0.0),
            row("ort-cpu", "int8", "model.int8.onnx", 1.0, 0.2, "edgeseg")]
    runners = opened(two_file_bundle, rows)
    assert runoff(rows, runners, 0.5, latency_rounds=2) is None
    assert all("runoff" not in entry for entry in rows)
    # and rows out of the budget are not candidates: only FP32 is left
    assert runoff(rows, runners, 0.1, latency_rounds=2) is None
