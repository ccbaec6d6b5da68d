"""`edgeseg bench`: plan the rows of a suite (model x precision x backend x size), check everything a row will
need before the first one runs, then run each row in its own subprocess (edgeseg.bench.worker) and record it.

Order matters for accuracy: every row is compared with the FP32 torch predictions of its reference model, so
those rows run first (and are added, marked role = "reference", when the suite's backends leave torch out).
A row that cannot run (a missing backend, an export that fails, a crash, a timeout) is recorded with status
"unsupported" or "error" and its reason; the rest run.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgeseg.bench.artifacts import (ArtifactCache, ResolvedWeights, backend_unavailable, bundle_default, bundle_file,
                                     check_default_weights, default_cache_dir, onnx_param_count, onnx_precision,
                                     resolve_weights)
from edgeseg.bench.suite import BACKENDS, PRECISIONS, ModelSpec, Suite
from edgeseg.bench.worker import RESULT_MARKER, WorkerJob
from edgeseg.bundle_layout import FP32_ONNX, artifact_bytes
from edgeseg.errors import EdgesegError, UsageError
from edgeseg.output_paths import check_output_folder

log = logging.getLogger(__name__)


class NothingMeasured(EdgesegError):
    """Every requested row was unsupported or failed: no results were written."""

    exit_code = 1


class GateFailure(EdgesegError):
    """A --max-miou-drop or --fail-under-miou gate failed (the results are written)."""

    exit_code = 1


@dataclass(frozen=True)
class PlannedRow:
    model: ModelSpec
    precision: str
    backend: str
    size: tuple[int, int]
    optional: bool = False
    role: str | None = None  # "reference": added only to serve as the accuracy reference

    @property
    def id(self) -> str:
        return f"{self.model.label}/{self.precision}/{self.backend}/{self.size[0]}x{self.size[1]}"


@dataclass(frozen=True)
class BenchOptions:
    out_dir: str | None = None  # default: benchmarks/results/<machine>
    machine: str | None = None  # default: from the hardware (cpu-<model>-<N>c, gpu-<name>, jetson-<board>)
    cache_dir: str | None = None  # exported/quantized ONNX and engines, reused across runs
    with_optional: bool = False  # also measure the suite's optional precisions
    plots: bool = True
    force: bool = False  # replace earlier results in out_dir (never a folder bench did not write)


@dataclass
class BenchRun:
    out_dir: Path
    env: dict
    rows: list[dict] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Planning

def plan_rows(suite: Suite, with_optional: bool = False) -> list[PlannedRow]:
    precisions = list(dict.fromkeys(suite.precisions + (suite.optional_precisions if with_optional else ())))
    optional = set(suite.optional_precisions) - set(suite.precisions)
    precisions.sort(key=PRECISIONS.index)
    backends = sorted(suite.backends, key=BACKENDS.index)  # torch first: it is the reference
    models = _references_first(suite.models)
    rows = []
    for size in suite.sizes:
        planned = [PlannedRow(model, precision, backend, size, optional=precision in optional)
                   for model in models for backend in backends for precision in precisions]
        references = []
        for model in models:
            reference = _model_by_label(suite, model.reference) if model.reference else model
            has_torch_row = any(r.model == reference and r.backend == "torch" and r.precision == "fp32"
                                for r in planned + references)
            if reference.zoo_name and not has_torch_row:
                references.append(PlannedRow(reference, "fp32", "torch", size, role="reference"))
        rows += references + planned
    return rows


def planned_unsupported(row: PlannedRow) -> str | None:
    """Why a row cannot run whatever the machine (reported as 'unsupported', never silently changed)."""
    if row.backend.startswith("torch"):
        if row.precision != "fp32":
            return (f"{row.backend} runs FP32 only here; {row.precision.upper()} is measured on the ONNX Runtime "
                    f"and TensorRT rows")
        if row.model.is_artifact:
            return f"{row.model.path} is a prebuilt model without a torch model; add its zoo model for torch rows"
        return None
    if row.precision == "bf16" and row.backend != "ov-cpu":
        return f"{row.backend} has no bf16 mode here; bf16 is measured on the ov-cpu (OpenVINO) rows"
    if row.backend == "ov-cpu" and row.precision == "fp16":
        return "OpenVINO's CPU plugin computes in f32, bf16 or int8, not fp16; see the bf16 row"
    if row.model.is_artifact:
        path = Path(row.model.path)
        if path.is_file():
            if row.backend == "trt":
                return f"{path.name} is an ONNX file; give a bundle with a built engine for trt rows"
            own = onnx_precision(path)
            if row.backend == "ov-cpu" and row.precision == "bf16" and own == "fp32":
                return None  # OpenVINO runs the FP32 ONNX with its bf16 hint
            if own != row.precision:
                return f"{path.name} is an {own} model; it has no {row.precision} variant"
        elif bundle_file(path, row.precision, row.backend) is None:
            if row.backend == "trt":
                return (f"bundle {path} has no {row.precision} engine; build it on this machine with "
                        f"'edgeseg engine build {path}'")
            return f"bundle {path} has no {row.precision} ONNX model"
    return None


def _references_first(models: tuple[ModelSpec, ...]) -> list[ModelSpec]:
    referenced = {m.reference for m in models if m.reference}
    return sorted(models, key=lambda m: 0 if m.label in referenced else 1)


def _model_by_label(suite: Suite, label: str) -> ModelSpec:
    return next(model for model in suite.models if model.label == label)


def check_before_running(suite: Suite, rows: list[PlannedRow]) -> None:
    """What every row needs that can be checked cheaply: the datasets and the calibration split's size."""
    from edgeseg.data.datasets import open_dataset

    dataset = open_dataset(suite.dataset, suite.split, suite.data_root)
    if any(row.precision == "int8" and row.model.zoo_name and not row.backend.startswith("torch")
           and planned_unsupported(row) is None for row in rows):
        calibration = open_dataset(suite.dataset, suite.calib_split, suite.data_root)
        if suite.calib_count > len(calibration):
            raise UsageError(f"calib_count {suite.calib_count} is more than the {len(calibration)} images of "
                             f"{calibration.name}; lower calib_count (suite) or use another calib_split")
    if len(dataset) < 1:
        raise UsageError(f"{dataset.name} has no images to evaluate")


# ---------------------------------------------------------------------------------------------------------------
# Running

def run_bench(suite: Suite, options: BenchOptions = BenchOptions()) -> BenchRun:
    """Run every planned row of `suite`, one subprocess each, and write the results; progress (the artifacts made,
    one line per row) goes to this module's and bench.artifacts' loggers."""
    from edgeseg.bench.env import collect_env, machine_name, slug
    from edgeseg.bench.outputs import ResultsWriter

    rows = plan_rows(suite, options.with_optional)
    cache_dir = Path(options.cache_dir).expanduser() if options.cache_dir else default_cache_dir()
    # Everything a row needs is checked here, before the first row: weights, datasets, the results folder.
    for model in suite.models:
        check_default_weights(model)
    check_before_running(suite, rows)
    weights = {model.label: resolve_weights(model, cache_dir) for model in suite.models if model.zoo_name}
    env = collect_env(suite.threads)
    machine = slug(options.machine, 60) if options.machine else machine_name(env)
    env["machine_name"] = machine
    out_dir = Path(options.out_dir) if options.out_dir else Path("benchmarks") / "results" / machine
    check_output_folder(out_dir, "bench", force=options.force)
    _check_writable(out_dir)
    writer = ResultsWriter(out_dir, env, {**suite.to_dict(), "with_optional": options.with_optional})
    runner = _RowRunner(suite, ArtifactCache(cache_dir, suite), weights)
    log.info(f"bench {suite.name}: {len(rows)} rows on {machine}; results in {out_dir}")
    for warning in env["warnings"]:
        log.warning(warning)
    try:
        for index, planned in enumerate(rows, 1):
            record = runner.run(planned)
            writer.add(record)
            log.info(f"[{index}/{len(rows)}] {row_summary(record)}")
        writer.finish()
    finally:
        runner.cleanup()
    if not any(row["status"] == "ok" for row in writer.rows):  # the writer wrote nothing: say why, exit non-zero
        first = writer.rows[0] if writer.rows else None
        raise NothingMeasured(f"nothing was measured: all {len(writer.rows)} row(s) were unsupported or failed"
                              + (f" (first: {row_summary(first)})" if first else "") + "; no results written")
    run = BenchRun(out_dir, env, writer.rows)
    if options.plots:
        from edgeseg.bench.plots import write_plots

        run.plots = write_plots(writer.rows, out_dir, f"{suite.name} on {machine}")
    return run


class _RowRunner:
    """Runs rows one by one, remembering finished rows (and their predictions) as references for later ones."""

    def __init__(self, suite: Suite, cache: ArtifactCache, weights: dict[str, ResolvedWeights]) -> None:
        self.suite, self.cache, self.weights = suite, cache, weights
        self.scratch = Path(tempfile.mkdtemp(prefix="edgeseg-bench-"))
        self.finished: dict[str, tuple[dict, Path]] = {}
        self._backend_problems: dict[str, str | None] = {}
        self._stats: dict[tuple, tuple[float | None, float | None]] = {}

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def run(self, row: PlannedRow) -> dict:
        started = time.monotonic()
        record = {"id": row.id, "model": row.model.label, "precision": row.precision, "backend": row.backend,
                  "size": list(row.size), "status": "ok", "reason": None, "optional": row.optional,
                  "role": row.role, "batch": self.suite.batch,
                  "weights": self.weights[row.model.label].source if row.model.zoo_name else row.model.path}
        reason = planned_unsupported(row) or self._backend_problem(row.backend)
        if reason:
            return {**record, "status": "unsupported", "reason": reason}
        try:
            artifact = self._artifact(row)
        except Exception as exc:  # an export or quantization that fails belongs to this row only
            return {**record, "status": "error", "reason": f"preparing the model failed: {_one_line(exc)}"}
        record["artifact"] = _file_record(artifact) if artifact else self._weights_record(row)
        record["params_m"], record["gflops"] = self._model_stats(row, artifact)
        predictions = self.scratch / f"{len(self.finished):03d}"
        load_before = _load_average()
        result = self._run_worker(row, artifact, predictions)
        record.update(result)
        record["load_avg_1m"] = {"before": load_before, "after": _load_average()}
        if record["status"] == "ok":
            record["warnings"] = row_warnings(record) + self._compare(row, record, predictions)
        record["seconds"] = round(time.monotonic() - started, 1)
        self.finished[row.id] = (record, predictions)
        return record

    def _backend_problem(self, backend: str) -> str | None:
        if backend not in self._backend_problems:
            self._backend_problems[backend] = backend_unavailable(backend)
        return self._backend_problems[backend]

    def _artifact(self, row: PlannedRow) -> Path | None:
        if row.backend.startswith("torch"):
            return None
        if row.model.is_artifact:
            return bundle_file(Path(row.model.path), row.precision, row.backend)
        weights = self.weights[row.model.label]
        if row.backend == "trt":
            onnx_files = {"fp32": self.cache.onnx_for(row.model, weights, row.size, "fp32")}
            if row.precision != "fp32":
                # TensorRT takes symmetric INT8 Q/DQ (the trt profile), not ONNX Runtime CPU's uint8 graph.
                onnx_files[row.precision] = self.cache.onnx_for(row.model, weights, row.size, row.precision,
                                                                profile="trt")
            return self.cache.engine_for(onnx_files, row.precision)
        if row.backend == "ov-cpu":
            if row.precision == "int8":
                return self.cache.ov_int8_for(row.model, weights, row.size)
            return self.cache.onnx_for(row.model, weights, row.size, "fp32")  # fp32 / bf16: the hint decides
        return self.cache.onnx_for(row.model, weights, row.size, row.precision, profile="cpu")

    def _run_worker(self, row: PlannedRow, artifact: Path | None, predictions: Path) -> dict:
        suite = self.suite
        weights = self.weights.get(row.model.label)
        hint = None
        if row.model.is_artifact and row.backend == "ov-cpu" and row.precision == "int8":
            default = bundle_default(Path(row.model.path))
            if default is not None and artifact is not None and default.file == artifact.name:
                hint = default.hint  # the bundle's default runs as the build measured it (e.g. int8 + bf16)
        job = WorkerJob(row_id=row.id, backend=row.backend, precision=row.precision, size=row.size,
                        dataset=suite.dataset, split=suite.split, data_root=suite.data_root,
                        eval_limit=suite.eval_limit, threads=suite.threads, batch=suite.batch, warmup=suite.warmup,
                        min_runs=suite.min_runs, min_seconds=suite.min_seconds,
                        artifact=str(artifact) if artifact else None, model=row.model.zoo_name,
                        weights=weights.spec if weights else None, predictions_dir=str(predictions),
                        ov_hint=hint)
        return run_worker(job, timeout_s=suite.row_timeout_s)

    def _compare(self, row: PlannedRow, record: dict, predictions: Path) -> list[str]:
        """Fill in drop, per-class change and agreement against the reference row; returns warnings."""
        from edgeseg.bench.compare import accuracy_against, prediction_agreement

        accuracy = record["accuracy"]
        reference = self._reference(row)
        if reference is None:
            accuracy.update({"reference": None, "miou_drop": None, "per_class_iou_change": None,
                             "agreement_miou": None, "pixel_agreement": None})
            return ["no FP32 reference row ran: drop and agreement are missing"]
        if reference == "self":  # this row is the reference of its model
            accuracy.update({"reference": row.id, **accuracy_against(accuracy, accuracy), "agreement_miou": None,
                             "pixel_agreement": None})
            return []
        reference_record, reference_predictions = reference
        accuracy["reference"] = reference_record["id"]
        accuracy.update(accuracy_against(accuracy, reference_record["accuracy"]))
        agreement = prediction_agreement(predictions, reference_predictions, len(accuracy["per_class_iou"]))
        accuracy["agreement_miou"] = agreement["agreement_miou"] if agreement else None
        accuracy["pixel_agreement"] = agreement["pixel_agreement"] if agreement else None
        return [] if agreement else ["the reference row predicted other images: agreement is missing"]

    def _reference(self, row: PlannedRow) -> tuple[dict, Path] | Literal["self"] | None:
        """The finished row whose FP32 predictions this row is compared with: the reference model's torch row,
        else its FP32 row on this row's backend, else on ONNX Runtime CPU; "self" when this row is the best
        there is; None when none ran."""
        label = row.model.reference or row.model.label
        size = f"{row.size[0]}x{row.size[1]}"
        backends = ("torch", "torch-cuda", row.backend, "ort-cpu")
        for candidate in dict.fromkeys(f"{label}/fp32/{backend}/{size}" for backend in backends):
            if candidate == row.id:
                return "self"
            found = self.finished.get(candidate)
            if found and found[0]["status"] == "ok":
                return found
        return None

    def _weights_record(self, row: PlannedRow) -> dict | None:
        weights = self.weights.get(row.model.label)
        if weights and Path(weights.spec).is_file():
            return _file_record(Path(weights.spec))
        return None

    def _model_stats(self, row: PlannedRow, artifact: Path | None) -> tuple[float | None, float | None]:
        key = (row.model.label, row.size)
        if key not in self._stats:
            self._stats[key] = _model_stats(row, artifact)
        return self._stats[key]


def _model_stats(row: PlannedRow, artifact: Path | None) -> tuple[float | None, float | None]:
    """(params in millions, GFLOPs) of the architecture at the row's size; ONNX initializers for a prebuilt
    model (GFLOPs unknown there)."""
    if row.model.zoo_name:
        try:
            import torch

            from edgeseg.zoo.registry import get_entry
            from edgeseg.zoo.stats import count_params_and_gflops

            entry = get_entry(row.model.zoo_name)
            with torch.device("meta"):  # no memory, no weights: only shapes are counted
                model = entry.builder(entry.label_set.num_classes)
            params, gflops = count_params_and_gflops(model, row.size)
            return params / 1e6, gflops
        except Exception:  # counting is a nicety; a model the counter cannot trace still gets benchmarked
            return None, None
    source = Path(row.model.path)
    fp32 = source if source.is_file() else source / FP32_ONNX
    if fp32.is_file() and onnx_precision(fp32) == "fp32":
        params = onnx_param_count(fp32)
        return (params / 1e6 if params else None), None
    return None, None


def run_worker(job: WorkerJob, timeout_s: float) -> dict:
    """Run one row in a fresh Python process and return its result dict (status error when it dies)."""
    import edgeseg

    environment = dict(os.environ)
    package_root = str(Path(edgeseg.__file__).resolve().parent.parent)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
    try:
        completed = subprocess.run([sys.executable, "-m", "edgeseg.bench.worker"], input=job.to_json(),
                                   capture_output=True, text=True, timeout=timeout_s, env=environment, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"the row did not finish within {timeout_s:g} s (row_timeout_s)"}
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            import json

            return json.loads(line[len(RESULT_MARKER):])
    last = [line for line in completed.stderr.splitlines() if line.strip()]
    how = f"exit code {completed.returncode}" if completed.returncode >= 0 else f"signal {-completed.returncode}"
    return {"status": "error", "reason": f"the row's process died ({how})" + (f": {last[-1].strip()}" if last else "")}


def row_warnings(record: dict) -> list[str]:
    """Why a row's latency may not be publishable: a busy machine, or spread-out timings."""
    warnings = []
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = (record.get("load_avg_1m") or {}).get("before")
    if load is not None and load > 0.5 * usable:
        warnings.append(f"busy machine: load average {load} on {usable} cores before the row")
    latency = record.get("latency_ms") or {}
    if latency.get("mean_ms") and latency["std_ms"] > 0.25 * latency["mean_ms"]:
        warnings.append(f"noisy latency: std is {latency['std_ms'] / latency['mean_ms']:.0%} of the mean")
    return warnings


def row_summary(record: dict) -> str:
    if record["status"] != "ok":
        return f"{record['id']}: {record['status']}: {record['reason']}"
    accuracy, memory = record["accuracy"], record["memory"]
    drop = accuracy.get("miou_drop")
    return (f"{record['id']}: p50 {record['latency_ms']['p50_ms']:.2f} ms, end-to-end "
            f"{record['e2e_latency_ms']['p50_ms']:.2f} ms, mIoU {accuracy['miou']:.4f}"
            + (f" (drop {drop:+.2f})" if drop is not None else "")
            + f", peak RSS {memory['peak_rss_mb']:.0f} MB" + _power_summary(record.get("power")))


def _power_summary(power: dict | None) -> str:
    if not power or not power.get("available"):
        return ""
    energy = power.get("energy_per_frame_mj")
    return (f", board {power['board_w']['mean']:.1f} W (peak {power['board_w']['peak']:.1f})"
            + (f", {energy:.1f} mJ/frame" if energy is not None else ""))


# ---------------------------------------------------------------------------------------------------------------
# Gates

def gate_violations(rows: list[dict], max_miou_drop: float | None, fail_under_miou: float | None) -> list[str]:
    """One message per failed gate, naming its rows. With any gate set, a row that errored fails too (it could
    not be checked); 'unsupported' rows are not judged."""
    if max_miou_drop is None and fail_under_miou is None:
        return []
    messages = []
    errored = [row["id"] for row in rows if row["status"] == "error"]
    if errored:
        messages.append(f"{len(errored)} row(s) failed and could not be checked: {', '.join(errored)}")
    measured = [row for row in rows if row["status"] == "ok"]
    if max_miou_drop is not None:
        over = [f"{row['id']} ({row['accuracy']['miou_drop']:+.2f})" for row in measured
                if row["accuracy"].get("miou_drop") is not None and row["accuracy"]["miou_drop"] > max_miou_drop]
        unchecked = [row["id"] for row in measured if row["accuracy"].get("miou_drop") is None]
        if over:
            messages.append(f"mIoU drop above {max_miou_drop:g} points: {', '.join(over)}")
        if unchecked:
            messages.append(f"no FP32 reference to check the drop of: {', '.join(unchecked)}")
    if fail_under_miou is not None:
        under = [f"{row['id']} ({row['accuracy']['miou']:.4f})" for row in measured
                 if row["accuracy"]["miou"] < fail_under_miou]
        if under:
            messages.append(f"mIoU under {fail_under_miou:g}: {', '.join(under)}")
    return messages


def check_gates(rows: list[dict], max_miou_drop: float | None, fail_under_miou: float | None) -> None:
    """Fail (after the results are written) on a failed gate, and on any requested row that errored: a run that
    could not measure what was asked is not a success, gates or not."""
    messages = gate_violations(rows, max_miou_drop, fail_under_miou)
    if messages:
        raise GateFailure("gate failed: " + "; ".join(messages))
    errored = [row["id"] for row in rows if row["status"] == "error"]
    if errored:
        raise GateFailure(f"{len(errored)} row(s) failed (results written for the others): {', '.join(errored)}")


def check_gate_values(max_miou_drop: float | None, fail_under_miou: float | None) -> None:
    if fail_under_miou is not None and not 0 <= fail_under_miou <= 1:
        raise UsageError(f"--fail-under-miou {fail_under_miou:g}: give mIoU as a fraction, e.g. 0.65 for 65%")
    if max_miou_drop is not None and max_miou_drop < 0:
        raise UsageError(f"--max-miou-drop {max_miou_drop:g}: give the allowed drop in mIoU points, e.g. 1.0")


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the results folder {out_dir}: {exc.strerror}; choose another with --out") \
            from exc
    if not os.access(out_dir, os.W_OK):
        raise UsageError(f"results folder {out_dir} is not writable; choose another with --out")


_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the checkout, or site-packages of an installed edgeseg


def _file_record(path: Path) -> dict:
    # Bundled weights are recorded as edgeseg/weights/..., the artifact cache under the user's home as ~/...: never
    # as this machine's folders.
    home = Path.home()
    if path.is_absolute() and path.resolve().is_relative_to(_PACKAGE_ROOT):
        shown = path.resolve().relative_to(_PACKAGE_ROOT).as_posix()
    elif path.is_absolute() and path.is_relative_to(home):
        shown = f"~/{path.relative_to(home).as_posix()}"
    else:
        shown = str(path)
    return {"path": shown, "mb": artifact_bytes(path) / 1e6}  # an OpenVINO IR: its .xml and .bin


def _load_average() -> float | None:
    from edgeseg.bench.env import load_average

    return load_average()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
