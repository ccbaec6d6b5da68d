"""`edgeseg build`: the pipeline for one model and one target, composed from the stage functions.

  export (model.onnx) -> fp16 (model.fp16.onnx) -> calibration set (calibration.json) -> int8 (model.int8.onnx)
  -> cpu target: NNCF INT8 for OpenVINO (model.int8.ov.xml) and every CPU backend x precision evaluated and timed
     side by side, the fastest within the accuracy budget named the default (edgeseg.cpu_variants);
     GPU targets: every precision on ONNX Runtime CPU -> engine for the target, or a cross-build kit
  -> manifest.json, report.json, report.md

The bundle is assembled in `<out>.partial` and renamed onto `<out>` only when every stage succeeded, so an
interrupted or failed build never leaves a bundle that looks complete.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeseg.calibration import CalibConfig, make_calibration_set
from edgeseg.cpu_variants import FILES, choose_default, measure_variants, openvino_available, plan_variants
from edgeseg.errors import UsageError
from edgeseg.export import ExportConfig, export_model
from edgeseg.manifest import input_record, stage_manifest, write_json
from edgeseg.quantize import QuantizeConfig, convert_fp16, quantize_int8
from edgeseg.report import measure_precisions, write_reports

PRECISION_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


@dataclass(frozen=True)
class BuildConfig:
    model: str
    target: str = "cpu"
    weights: str | None = None
    out_dir: str | None = None  # default: bundles/<model>-<target>
    size: tuple[int, int] | None = None
    dataset: str = "camvid"
    data_root: str | None = None
    calib_count: int = 200
    calib_strategy: str = "class-balanced"
    calib_split: str = "train"
    quant_profile: str | None = None  # default: cpu for the cpu target, trt for GPU targets
    quant_method: str = "minmax"
    max_miou_drop: float | None = 1.0  # accuracy budget of the INT8 model on the held-out split (points)
    budget_split: str = "val"
    eval_split: str = "test"
    eval_limit: int | None = None
    engine_precision: str = "int8"
    threads: int | None = None
    latency_rounds: int = 8
    prune_ratio: float | None = None  # prune first (edgeseg.prune), then build the pruned model
    prune_importance: str = "l1"
    finetune_epochs: int = 0  # recovery fine-tune of the pruned model, distilled from the unpruned one
    extra: dict = field(default_factory=dict)  # recorded as is

    def __post_init__(self):
        if self.prune_ratio is not None and not 0 < self.prune_ratio < 1:
            raise UsageError(f"--prune must be between 0 and 1 (exclusive), e.g. 0.3; got {self.prune_ratio}")
        if self.finetune_epochs and not self.prune_ratio:
            raise UsageError("--finetune-epochs recovers a pruned model; add --prune RATIO")
        if self.calib_count < 1:
            raise UsageError("--calib-count must be at least 1")


def bundle_dir_for(cfg: BuildConfig, target_name: str) -> Path:
    return Path(cfg.out_dir) if cfg.out_dir else Path("bundles") / f"{cfg.model}-{target_name}"


def build(cfg: BuildConfig, log=print) -> Path:
    from edgeseg.target_registry import load_target
    from edgeseg.zoo.registry import get_entry
    from edgeseg.zoo.weights import load_model

    get_entry(cfg.model)  # fail on a typo before any work
    target = load_target(cfg.target)
    if target.kind != "cpu" and not target.supports(cfg.engine_precision):
        raise UsageError(f"target {target.name} does not support {cfg.engine_precision}; "
                         f"it supports {', '.join(target.precisions)}")
    final_dir = bundle_dir_for(cfg, target.name)
    work_dir = final_dir.with_name(final_dir.name + ".partial")
    _prepare_dir(work_dir)
    started = time.monotonic()
    profile = cfg.quant_profile or ("cpu" if target.kind == "cpu" else "trt")
    steps = (7 if cfg.prune_ratio else 6) + (1 if target.kind == "cpu" else 0)
    step = iter(range(1, steps + 1))
    try:
        weights = cfg.weights
        if cfg.prune_ratio:
            log(f"[{next(step)}/{steps}] prune {cfg.model} (ratio {cfg.prune_ratio}, {cfg.prune_importance})"
                + (f", {cfg.finetune_epochs}-epoch distilled recovery fine-tune" if cfg.finetune_epochs else ""))
            weights = str(_prune_stage(cfg, work_dir, log))
        log(f"[{next(step)}/{steps}] export {cfg.model} to ONNX")
        loaded = load_model(cfg.model, weights)
        export = export_model(loaded, cfg.model,
                              ExportConfig(size=cfg.size, dataset=cfg.dataset, data_root=cfg.data_root),
                              work_dir / PRECISION_FILES["fp32"])
        log(f"      parity with torch: argmax agreement {export.manifest['checks']['parity']['argmax_agreement']:.4%}")
        log(f"[{next(step)}/{steps}] FP16 graph (LayerNorm, Softmax and reductions kept in FP32)")
        convert_fp16(export.path, work_dir / PRECISION_FILES["fp16"])
        log(f"[{next(step)}/{steps}] calibration set: {cfg.calib_count} {cfg.calib_strategy} images from {cfg.calib_split}")
        preprocessing = loaded.preprocessing.with_size(cfg.size) if cfg.size else loaded.preprocessing
        calibration = make_calibration_set(
            preprocessing, CalibConfig(dataset=cfg.dataset, split=cfg.calib_split, data_root=cfg.data_root,
                                       count=cfg.calib_count, strategy=cfg.calib_strategy),
            work_dir / "calibration.json")
        log(f"[{next(step)}/{steps}] INT8 Q/DQ ({profile} profile, {cfg.quant_method})"
            + (f", accuracy budget {cfg.max_miou_drop} points on {cfg.budget_split}" if cfg.max_miou_drop is not None
               else ""))
        quantized = quantize_int8(
            export.path, calibration.path,
            QuantizeConfig(profile=profile, method=cfg.quant_method, max_miou_drop=cfg.max_miou_drop,
                           eval_dataset=cfg.dataset, eval_split=cfg.budget_split, data_root=cfg.data_root,
                           threads=cfg.threads),
            work_dir / PRECISION_FILES["int8"], log=lambda line: log("      " + line))
        if target.kind == "cpu":
            measured = _cpu_variants_stage(work_dir, cfg, calibration.path, step, steps, log)
        else:
            log(f"[{next(step)}/{steps}] evaluate and time fp32 / fp16 / int8 on ONNX Runtime CPU "
                f"({cfg.eval_split} split)")
            measured = measure_precisions({p: work_dir / f for p, f in PRECISION_FILES.items()}, cfg.dataset,
                                          cfg.eval_split, cfg.data_root, cfg.eval_limit, cfg.threads,
                                          cfg.latency_rounds, log=lambda line: log("      " + line))
        log(f"[{next(step)}/{steps}] engine for {target.name}")
        engine = _engine_stage(work_dir, target, cfg, loaded.spec, log)
        manifest = stage_manifest(
            "build",
            inputs={"weights": loaded.input_record(),
                    "calibration": {"path": "calibration.json", "count": calibration.manifest["count"]}},
            settings={**asdict(cfg), "quant_profile": profile},
            checks={"parity": export.manifest["checks"]["parity"],
                    "int8_accuracy_budget": quantized.manifest["checks"].get("accuracy")},
            libraries=("torch", "onnx", "onnxruntime", "onnxslim", "transformers", "torchvision",
                       "segmentation-models-pytorch"))
        artifacts = {p: _relative_record(work_dir / f) for p, f in PRECISION_FILES.items()}
        if (work_dir / FILES["int8-nncf"]).is_file():
            artifacts["int8-nncf"] = _relative_record(work_dir / FILES["int8-nncf"])
        manifest.update({"model": cfg.model, "target": target.name, "target_resolved_from": target.resolved_from,
                         "artifacts": artifacts,
                         "layers_kept_float": quantized.manifest["layers_kept_float"], "engine": engine,
                         "seconds": round(time.monotonic() - started, 1)})
        write_json(work_dir / "manifest.json", manifest)
        write_reports(work_dir, cfg.model, target.name, measured, manifest)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)  # nothing half-built is left looking valid
        raise
    if final_dir.exists():
        shutil.rmtree(final_dir)
    work_dir.rename(final_dir)
    log(f"bundle ready in {final_dir} ({time.monotonic() - started:.0f} s)")
    return final_dir


def _cpu_variants_stage(work_dir: Path, cfg: BuildConfig, calibration: Path, step, steps: int, log) -> dict:
    """The CPU target: NNCF INT8 for OpenVINO (where installed), then every CPU backend x precision measured
    side by side; the fastest within the accuracy budget becomes the bundle's default."""
    sub = lambda line: log("      " + line)  # noqa: E731
    if openvino_available():
        from edgeseg.quantize_ov import quantize_nncf

        log(f"[{next(step)}/{steps}] INT8 for OpenVINO (NNCF, same calibration set)")
        quantize_nncf(work_dir / PRECISION_FILES["fp32"], calibration, work_dir / FILES["int8-nncf"],
                      data_root=cfg.data_root, log=sub)
        openvino_note = None
    else:
        log(f"[{next(step)}/{steps}] INT8 for OpenVINO: skipped, openvino is not installed")
        openvino_note = "openvino is not installed (pip install 'edgeseg[openvino]'): ONNX Runtime rows only"
        sub(openvino_note)
    variants = plan_variants(work_dir)
    log(f"[{next(step)}/{steps}] evaluate and time {len(variants)} CPU variants side by side ({cfg.eval_split} split)")
    measured = measure_variants(work_dir, variants, cfg.dataset, cfg.eval_split, cfg.data_root, cfg.eval_limit,
                                cfg.threads, cfg.latency_rounds, log=sub)
    default = choose_default(measured["rows"], cfg.max_miou_drop)
    sub(f"default CPU variant: {default['name']} ({default['latency_ratio']:.2f}x ORT fp32, "
        f"drop {default['miou_drop']:+.2f} points"
        + (f", budget {cfg.max_miou_drop})" if cfg.max_miou_drop is not None else ")"))
    measured.update({"backend": "ort-cpu", "default": default, "max_miou_drop": cfg.max_miou_drop,
                     "openvino_note": openvino_note,
                     # The ONNX Runtime rows by precision, the shape report.json had before rows existed.
                     "precisions": {row["precision"]: row for row in measured["rows"] if row["backend"] == "ort-cpu"}})
    return measured


def _prepare_dir(work_dir: Path) -> None:
    try:
        if work_dir.exists():
            shutil.rmtree(work_dir)  # the leftover of an earlier interrupted build
        work_dir.mkdir(parents=True)
    except OSError as exc:
        raise UsageError(f"cannot write the bundle in {work_dir.parent}: {exc.strerror}; choose another --out") \
            from exc


def _relative_record(path: Path) -> dict:
    record = input_record(path)
    record["path"] = path.name
    return record


def _prune_stage(cfg: BuildConfig, work_dir: Path, log) -> Path:
    from edgeseg.prune import PruneConfig, prune

    pruned = prune(PruneConfig(model=cfg.model, weights=cfg.weights, ratio=cfg.prune_ratio,
                               importance=cfg.prune_importance, size=cfg.size, dataset=cfg.dataset,
                               data_root=cfg.data_root, eval_split=cfg.budget_split, eval_limit=cfg.eval_limit,
                               threads=cfg.threads, finetune_epochs=cfg.finetune_epochs,
                               distill=cfg.finetune_epochs > 0),
                   work_dir / "pruned.safetensors", log=lambda line: log("      " + line))
    return pruned.path


def _engine_stage(work_dir: Path, target, cfg: BuildConfig, spec: dict | None, log) -> dict:
    if target.kind == "cpu":
        log("      cpu target: the default CPU variant (report.json) runs the bundle's files directly; no engine")
        return {"engine": None, "reason": "cpu target runs ONNX Runtime / OpenVINO on the bundle's files"}
    from edgeseg.engine.bundle import finish_for_target

    options = {}
    if spec and spec.get("sparsity") == "2:4":
        if target.sparsity:  # the weights were pruned 2:4: let TensorRT pick sparse tensor-core kernels
            options["sparse_weights"] = True
        else:
            log(f"      the weights are 2:4 sparse but {target.name} has no sparse tensor cores; built dense")
    return finish_for_target(work_dir, target, cfg.engine_precision, options=options,
                             log=lambda line: log("      " + line))
