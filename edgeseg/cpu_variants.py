"""CPU deployment variants of a bundle: every backend (ONNX Runtime, OpenVINO) x precision this machine can run,
measured side by side, and the choice of the default one `demo` and `bench` run.

A variant is a file of the bundle plus how to run it: ONNX Runtime on the FP32/FP16/INT8 ONNX models, and
OpenVINO on the same ONNX files and on the NNCF INT8 IR, with the precision OpenVINO runs float layers in
(`f32`, or `bf16` where the CPU has it) set explicitly and recorded. Rows are measured in one run with
interleaved latency rounds (machine drift hits all alike, so ratios to ONNX Runtime FP32 stay meaningful), each
round in a new seeded random order (no row always runs right after the same other one).
The default is the fastest row whose mIoU drop vs FP32 is within the accuracy budget; rows that close to each
other are first measured again, longer (`runoff`), so the choice does not flip on a few noisy samples.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeseg.runners.base import Runner

from edgeseg.bundle_layout import CPU_FILES as FILES  # files a CPU bundle may hold, by role
from edgeseg.bundle_layout import REPORT_JSON, artifact_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuVariant:
    backend: str  # "ort-cpu" or "ov-cpu"
    precision: str  # the row's precision: fp32, fp16, bf16, int8
    file: str  # bundle-relative model file
    quantizer: str | None = None  # int8 rows: "edgeseg" (ONNX Runtime quantize_static Q/DQ) or "nncf"
    # OpenVINO: the inference precision hint for float layers (f32 / bf16), always set explicitly. None for ORT.
    hint: str | None = None
    peer: bool = False  # a competitor's out-of-the-box setting, measured for comparison only
    # OpenVINO: whether the runner makes its exact graph rewrites (runners/ov_rewrites.py). A peer never does (it
    # runs as OpenVINO alone would); False on one of ours is an ablation row: what the rewrites are worth.
    runner_rewrites: bool = True

    @property
    def name(self) -> str:
        quantizer = f"-{self.quantizer}" if self.quantizer else ""
        hint = f"+{self.hint}" if self.hint and self.precision == "int8" else ""
        ablation = " (no runner rewrites)" if not self.runner_rewrites and not self.peer else ""
        return f"{self.backend}/{self.precision}{quantizer}{hint}" + (" (peer)" if self.peer else "") + ablation

    @property
    def rewrites(self) -> bool:
        return self.runner_rewrites and not self.peer

    def to_dict(self) -> dict:
        return {**asdict(self), "name": self.name}

    @classmethod
    def from_dict(cls, data: dict) -> "CpuVariant":
        return cls(**{key: data.get(key) for key in ("backend", "precision", "file", "quantizer", "hint")},
                   peer=bool(data.get("peer", False)), runner_rewrites=bool(data.get("runner_rewrites", True)))


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def plan_variants(bundle: Path, openvino: bool | None = None, bf16: bool | None = None) -> list[CpuVariant]:
    """Every variant of the bundle's files this machine can run; ORT FP32 (the latency reference) first."""
    from edgeseg.runners.ov import bf16_available

    openvino = openvino_available() if openvino is None else openvino
    bf16 = (openvino and bf16_available()) if bf16 is None else bf16
    present = {role: name for role, name in FILES.items() if (bundle / name).is_file()}
    variants = [CpuVariant("ort-cpu", precision, present[precision], "edgeseg" if precision == "int8" else None)
                for precision in ("fp32", "fp16", "int8") if precision in present]
    if openvino:
        float_hints = ["f32"] + (["bf16"] if bf16 else [])
        if "fp32" in present:
            variants += [CpuVariant("ov-cpu", "fp32" if hint == "f32" else "bf16", present["fp32"], hint=hint)
                         for hint in float_hints]
        for role, quantizer in (("int8", "edgeseg"), ("int8-nncf", "nncf")):
            if role in present:
                variants += [CpuVariant("ov-cpu", "int8", present[role], quantizer, hint) for hint in float_hints]
    return variants


def open_variant(bundle: Path, variant: CpuVariant, threads: int | None = None) -> Runner:
    if variant.backend == "ov-cpu":
        from edgeseg.runners.ov import OvRunner

        # A peer runs as OpenVINO alone would: without edgeseg's graph rewrites.
        return OvRunner(bundle / variant.file, threads=threads, precision_hint=variant.hint or "f32",
                        rewrite=variant.rewrites)
    from edgeseg.runners.ort import OrtRunner

    return OrtRunner(bundle / variant.file, device="cpu", threads=threads)


def file_size_mb(path: Path) -> float:
    return artifact_bytes(path) / 1e6


def measure_variants(bundle: Path, variants: list[CpuVariant], dataset_name: str, split: str,
                     data_root: str | Path | None, limit: int | None, threads: int | None,
                     latency_rounds: int, runoff_margin: float | None = None,
                     max_miou_drop: float | None = None) -> dict:
    """Accuracy of every variant on the split, then latency of all of them in interleaved rounds, each in a new
    seeded random order; with `runoff_margin`, then the `runoff` of the rows within the budget that are that close
    to the fastest (for the build's choice of a default). Result lines go to this module's logger."""
    from edgeseg.bench.latency import SIDE_BY_SIDE_METHOD, time_runners_side_by_side
    from edgeseg.data.datasets import open_dataset
    from edgeseg.evaluate import evaluate

    dataset = open_dataset(dataset_name, split, data_root)
    images = min(len(dataset), limit or len(dataset))
    variants, left_out = openvino_survivors(bundle, variants, threads)
    runners = {variant.name: open_variant(bundle, variant, threads) for variant in variants}
    rows = []
    for variant in variants:
        runner = runners[variant.name]
        scores = evaluate(runner.infer, dataset, runner.preprocessing, limit=limit, description=f"eval {variant.name}")
        row = {**variant.to_dict(), "miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy,
               "per_class_iou": scores.to_dict(dataset.label_set.classes)["per_class_iou"],
               "size_mb": file_size_mb(bundle / variant.file)}
        if variant.backend == "ov-cpu":
            row["inference_precision"] = runner.inference_precision  # read back from the compiled model
            row["openvino_properties"] = runner.compile_properties
            row["openvino_rewrites"] = runner.graph_rewrites
        rows.append(row)
        log.info(f"{variant.name}: mIoU {scores.miou:.4f} on {images} images")
    timings = time_runners_side_by_side(runners, latency_rounds)
    reference = next(row for row in rows if row["backend"] == "ort-cpu" and row["precision"] == "fp32")
    for row in rows:
        row["miou_drop"] = (reference["miou"] - row["miou"]) * 100
        row["latency_p50_ms"] = timings[row["name"]].p50_ms
        row["latency_ratio"] = row["latency_p50_ms"] / timings[reference["name"]].p50_ms
        row["latency"] = timings[row["name"]].to_dict()
        log.info(f"{row['name']}: p50 {row['latency_p50_ms']:.1f} ms ({row['latency_ratio']:.2f}x ORT fp32), "
                 f"mIoU drop {row['miou_drop']:+.2f} points, {row['size_mb']:.1f} MB")
    measured = {"dataset": dataset.name, "images": images, "threads": threads,
                "latency_method": SIDE_BY_SIDE_METHOD, "rows": rows, "left_out": left_out}
    if runoff_margin is not None:
        measured["runoff"] = runoff(rows, runners, max_miou_drop, latency_rounds, runoff_margin)
    return measured


# A child process compiles each OpenVINO variant and runs it once, printing "ok NAME" after each; the parent opens
# only those. OpenVINO can crash the whole process on a graph it mishandles (2026.4 segfaults in compile_model on
# the INT8 Q/DQ graph of Hugging Face's Sapiens2): in-process, a user's model would kill the build with no message.
_PROBE = """
import json, os, sys
import numpy as np
from edgeseg.runners.ov import OvRunner
bundle, threads, variants = json.loads(sys.argv[1])
for name, file, hint, rewrite in variants:
    print("start", name, flush=True)
    runner = OvRunner(os.path.join(bundle, file), threads=threads, precision_hint=hint,  # file may be absolute
                      rewrite=rewrite)
    runner.infer(np.zeros((1, 3, *runner.preprocessing.input_size), np.float32))
    print("ok", name, flush=True)
"""
PROBE_TIMEOUT_S = 900.0


def openvino_survivors(bundle: Path, variants: list[CpuVariant],
                       threads: int | None) -> tuple[list[CpuVariant], list[dict]]:
    """`variants` without the OpenVINO ones that crash (or fail) when compiled and run once in a child process,
    and a record {name, why} of each left out (logged as a warning; the build goes on with the others)."""
    pending = [variant for variant in variants if variant.backend == "ov-cpu"]
    left_out: list[dict] = []
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    while pending:
        names = [(variant.name, variant.file, variant.hint or "f32", variant.rewrites) for variant in pending]
        try:
            child = subprocess.run([sys.executable, "-c", _PROBE, json.dumps([str(bundle), threads, names])],
                                   capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=environment)
            returncode, stdout, stderr = child.returncode, child.stdout, child.stderr
        except subprocess.TimeoutExpired as expired:
            returncode, stderr = None, f"no answer in {PROBE_TIMEOUT_S:.0f} s"
            stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        done = {line.split(" ", 1)[1] for line in stdout.splitlines() if line.startswith("ok ")}
        started = [line.split(" ", 1)[1] for line in stdout.splitlines() if line.startswith("start ")]
        if returncode == 0:
            break
        culprit = started[-1] if started else pending[0].name
        why = _describe_failure(returncode, stderr)
        left_out.append({"name": culprit, "why": why})
        log.warning("left out %s: OpenVINO %s on %s (the other variants are measured)", culprit, why,
                    next(variant.file for variant in pending if variant.name == culprit))
        pending = [variant for variant in pending if variant.name not in done and variant.name != culprit]
    dropped = {record["name"] for record in left_out}
    return [variant for variant in variants if variant.name not in dropped], left_out


def _describe_failure(returncode: int | None, stderr: str) -> str:
    if returncode is None:
        return stderr
    if returncode < 0:
        try:
            return f"crashed ({signal.Signals(-returncode).name}) compiling or running it"
        except ValueError:
            return f"crashed (signal {-returncode}) compiling or running it"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return f"failed: {lines[-1] if lines else f'exit status {returncode}'}"


# A default picked from one short measurement flips between rows a few percent apart: SegFormer-B0's OpenVINO
# bf16 and NNCF INT8 + bf16 rows, 38.1 vs 36.3 ms over 40 benchmark rounds, came out 43.4 vs 44.8 ms in a
# build's 8 rounds. Eligible rows within RUNOFF_MARGIN of the fastest are timed again, RUNOFF_ROUNDS_FACTOR times
# as long, side by side with ORT FP32 (the reference of every ratio), and the fastest of that runoff is chosen.
RUNOFF_MARGIN = 0.10
RUNOFF_ROUNDS_FACTOR = 4


def _eligible(rows: list[dict], max_miou_drop: float | None) -> list[dict]:
    budget = float("inf") if max_miou_drop is None else max_miou_drop
    eligible = [row for row in rows if not row.get("peer") and row["miou_drop"] <= budget]
    if not eligible:  # FP32 always qualifies (drop 0), so this only happens without an FP32 row
        raise ValueError("no variant within the accuracy budget")
    return eligible


def runoff(rows: list[dict], runners: dict[str, Runner], max_miou_drop: float | None, latency_rounds: int,
           margin: float = RUNOFF_MARGIN) -> dict | None:
    """Time the eligible rows within `margin` (a fraction) of the fastest again, on their open runners (by row
    name), longer, with ORT FP32, and record each one's result as row["runoff"] (p50 and ratio to ORT FP32 in the
    runoff); None (rows untouched) when only one row is that close."""
    from edgeseg.bench.latency import time_runners_side_by_side

    eligible = _eligible(rows, max_miou_drop)
    fastest = min(row["latency_p50_ms"] for row in eligible)
    close = [row for row in eligible if row["latency_p50_ms"] <= fastest * (1 + margin)]
    if len(close) < 2:
        return None
    reference = next(row for row in rows if row["backend"] == "ort-cpu" and row["precision"] == "fp32")
    timed = [reference] + [row for row in close if row is not reference]
    rounds = latency_rounds * RUNOFF_ROUNDS_FACTOR
    timings = time_runners_side_by_side({row["name"]: runners[row["name"]] for row in timed}, rounds)
    reference_ms = timings[reference["name"]].p50_ms
    for row in close:
        row["runoff"] = {"p50_ms": timings[row["name"]].p50_ms,
                         "latency_ratio": timings[row["name"]].p50_ms / reference_ms}
    summary = ", ".join(f"{row['name']} {row['runoff']['p50_ms']:.1f} ms ({row['runoff']['latency_ratio']:.3f}x)"
                        for row in sorted(close, key=lambda row: row["runoff"]["p50_ms"]))
    log.info(f"runoff of the {len(close)} rows within {margin:.0%} of the fastest, {rounds} rounds: {summary}")
    return {"margin": margin, "rounds": rounds, "per_round": 2, "rows": [row["name"] for row in close],
            "reference_p50_ms": reference_ms}


def choose_default(rows: list[dict], max_miou_drop: float | None) -> dict:
    """The fastest non-peer row within the accuracy budget (points of mIoU vs FP32); where the fastest one went
    through a runoff, the fastest of the runoff."""
    eligible = _eligible(rows, max_miou_drop)
    fastest = min(eligible, key=lambda row: row["latency_p50_ms"])
    if "runoff" not in fastest:
        return fastest
    return min((row for row in eligible if "runoff" in row), key=lambda row: row["runoff"]["p50_ms"])


def best_variant(bundle: Path, backend: str | None = None) -> CpuVariant | None:
    """The variant to run from a bundle's report.json: its default, or with `backend` the fastest row of that
    backend within the report's accuracy budget. None for bundles without rows (older or GPU bundles)."""
    import json

    report = bundle / REPORT_JSON
    if not report.is_file():
        return None
    try:
        report = json.loads(report.read_text())
    except (OSError, ValueError):
        return None
    chosen = report.get("default")
    if backend is not None and report.get("rows"):
        rows = [row for row in report["rows"] if row.get("backend") == backend and not row.get("peer")]
        if not rows:
            return None
        try:
            chosen = choose_default(rows, report.get("max_miou_drop"))
        except ValueError:
            return None
    if not isinstance(chosen, dict) or "backend" not in chosen or not (bundle / chosen.get("file", "")).is_file():
        return None
    return CpuVariant.from_dict(chosen)
