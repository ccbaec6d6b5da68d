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

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg.bundle_layout import (CALIBRATION_MANIFEST, MANIFEST_FILE, ONNX_FILES, OV_INT8_FILE, PARTIAL_MARKER,
                                   PRUNED_HF_DIR, PRUNED_WEIGHTS)
from edgeseg.calibration import CalibConfig, make_calibration_set
from edgeseg.cpu_variants import RUNOFF_MARGIN, choose_default, measure_variants, openvino_available, plan_variants
from edgeseg.errors import UsageError
from edgeseg.export import ExportConfig, export_model, onnx_preprocessing
from edgeseg.logs import nested
from edgeseg.manifest import input_record, manifest_path_for, stage_manifest, write_json
from edgeseg.output_paths import check_output_folder
from edgeseg.quantize import QuantizeConfig, convert_fp16, quantize_int8
from edgeseg.report import measure_precisions, write_reports

if TYPE_CHECKING:
    from edgeseg.card import ModelCard
    from edgeseg.manifest import Artifact
    from edgeseg.model_source import ModelSource
    from edgeseg.target.schema import Target

log = logging.getLogger(__name__)



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
    runoff_margin: float = RUNOFF_MARGIN  # cpu target: rows this close to the fastest are timed again (cpu_variants)
    prune_ratio: float | None = None  # prune first (edgeseg.prune), then build the pruned model
    prune_importance: str = "l1"
    finetune_epochs: int = 0  # recovery fine-tune of the pruned model, distilled from the unpruned one
    card: str | None = None  # model card (TOML) of a foreign .onnx, Hugging Face or module:factory model
    calib_images: str | None = None  # calibrate on a plain image folder (random sample) instead of the dataset
    budget_limit: int | None = None  # evaluate the INT8 accuracy budget on the first N images only
    force: bool = False  # replace an earlier bundle at out_dir (never a folder edgeseg did not write)
    extra: dict = field(default_factory=dict)  # recorded as is

    def __post_init__(self) -> None:
        if self.prune_ratio is not None and not 0 < self.prune_ratio < 1:
            raise UsageError(f"--prune must be between 0 and 1 (exclusive), e.g. 0.3; got {self.prune_ratio}")
        if self.finetune_epochs and not self.prune_ratio:
            raise UsageError("--finetune-epochs recovers a pruned model; add --prune RATIO")
        if self.calib_count < 1:
            raise UsageError("--calib-count must be at least 1")


@dataclass(frozen=True)
class BuildResult:
    """What build() made: the bundle, and what its manifest.json records beside the stage manifest's common
    fields (manifest_fields(); the file's format is unchanged)."""

    bundle: Path  # where the bundle is once the build succeeded
    model: str
    model_kind: str  # zoo, onnx, hf, factory (model_source)
    target: str
    target_resolved_from: str | None
    artifacts: dict[str, dict]  # precision (and int8-nncf) -> path, sha256, bytes
    layers_kept_float: list[str]
    engine: dict[str, Any]  # EngineBuilt / KitWritten .to_dict(), or why a cpu bundle has no engine
    seconds: float
    card: dict | None = None
    default_variant: str | None = None  # cpu target: the variant report.json names the default

    def manifest_fields(self) -> dict[str, Any]:
        fields = {"model": self.model, "model_kind": self.model_kind, "target": self.target,
                  "target_resolved_from": self.target_resolved_from, "artifacts": self.artifacts,
                  "layers_kept_float": self.layers_kept_float, "engine": self.engine, "seconds": self.seconds}
        if self.card is not None:
            fields["card"] = self.card
        return fields

    @property
    def runs(self) -> str:
        """What a device runs from the bundle, in words."""
        if self.default_variant:
            return f"the default CPU variant {self.default_variant}"
        if self.engine.get("engine"):
            return f"the TensorRT engine {self.engine['engine']}"
        if self.engine.get("kit"):
            return f"no engine yet: finish it on the {self.target} (build_engine.sh or 'edgeseg engine build')"
        return "the ONNX models on ONNX Runtime"


def bundle_dir_for(cfg: BuildConfig, target_name: str, model_name: str | None = None) -> Path:
    return Path(cfg.out_dir) if cfg.out_dir else Path("bundles") / f"{model_name or cfg.model}-{target_name}"


DETAIL = " " * 6  # a stage's own lines are shown indented by this under the build step that runs it


def _detail(line: str) -> None:
    """A line of build's own under the current step, indented like its stages' lines (nested(DETAIL))."""
    log.info("%s%s", DETAIL, line)


def build(cfg: BuildConfig) -> BuildResult:
    """Build a bundle for cfg.model: a zoo name, a foreign .onnx with its card (ONNX Runtime FP32 is then the
    reference), a Hugging Face directory or a module:factory model (both exported from torch first). Progress goes
    to this module's logger: "[step/steps] stage" lines, each stage's own lines indented under it."""
    from edgeseg.model_source import load_card_option, load_torch, resolve_source
    from edgeseg.target_registry import load_target

    source = resolve_source(cfg.model)  # fail on a typo before any work
    if source.kind in ("bundle", "engine"):
        raise UsageError(f"{cfg.model} is already built (a {source.kind}); build takes a zoo name, an .onnx, a "
                         f"Hugging Face directory or module:factory")
    if cfg.prune_ratio and not source.is_torch:
        raise UsageError(f"--prune needs a PyTorch model (a zoo name, Hugging Face directory or module:factory); "
                         f"{cfg.model} is a graph: prune the model it was exported from")
    card = load_card_option(cfg.card, source)
    if source.kind == "onnx" and card is None:
        _check_adoptable(source.path)  # a foreign graph without its card fails in one line, before any work
    target = load_target(cfg.target)
    if target.kind != "cpu" and not target.supports(cfg.engine_precision):
        raise UsageError(f"target {target.name} does not support {cfg.engine_precision}; "
                         f"it supports {', '.join(target.precisions)}")
    labelled = _has_labelled_data(cfg, source, card)
    final_dir = bundle_dir_for(cfg, target.name, source.name)
    check_output_folder(final_dir, "bundle", force=cfg.force)  # before any work: a user's folder is never replaced
    work_dir = final_dir.with_name(final_dir.name + ".partial")
    _prepare_dir(work_dir)
    started = time.monotonic()
    profile = cfg.quant_profile or ("cpu" if target.kind == "cpu" else "trt")
    steps = _Steps((7 if cfg.prune_ratio else 6) + (1 if target.kind == "cpu" else 0))
    try:
        weights = cfg.weights
        spec = None
        if cfg.prune_ratio:
            steps.say(f"prune {cfg.model} (ratio {cfg.prune_ratio}, {cfg.prune_importance})"
                      + (f", {cfg.finetune_epochs}-epoch distilled recovery fine-tune" if cfg.finetune_epochs else ""))
            pruned = _prune_stage(cfg, work_dir, source)
            if source.kind == "hf":  # a pruned Hugging Face model is its own directory, loaded as one
                source = replace(source, spec=str(pruned), path=pruned)
            else:  # zoo and module:factory: the pruned weights (with the new layer sizes in their sidecar)
                weights = str(pruned)
        if source.kind == "onnx":
            steps.say(f"model card into {source.path.name}'s metadata (no torch model: ONNX Runtime FP32 is the "
                      f"reference)")
            export = adopt_onnx(source.path, card, work_dir / ONNX_FILES["fp32"], source.name)
            weights_record = input_record(source.path, work_dir)
            _detail(f"{export.manifest['checks']['card']['output']} is "
                    f"{'x'.join(map(str, export.manifest['checks']['card']['output_shape']))}")
        else:
            steps.say(f"export {cfg.model} to ONNX")
            loaded = load_torch(source, weights, card)
            export = export_model(loaded, source.name,
                                  ExportConfig(size=cfg.size, dataset=cfg.dataset, data_root=cfg.data_root),
                                  work_dir / ONNX_FILES["fp32"])
            weights_record, spec = loaded.input_record(base=work_dir), loaded.spec
            _detail(f"parity with torch: argmax agreement "
                    f"{export.manifest['checks']['parity']['argmax_agreement']:.4%}")
        preprocessing = onnx_preprocessing(export.path)
        steps.say("FP16 graph (LayerNorm, Softmax and reductions kept in FP32)")
        convert_fp16(export.path, work_dir / ONNX_FILES["fp16"])
        calib = _calibration_config(cfg)
        steps.say(f"calibration set: {cfg.calib_count} {calib.strategy} images from "
                  f"{cfg.calib_images or cfg.calib_split}")
        calibration = make_calibration_set(preprocessing, calib, work_dir / CALIBRATION_MANIFEST)
        budget = cfg.max_miou_drop if labelled else None
        steps.say(f"INT8 Q/DQ ({profile} profile, {cfg.quant_method})"
                  + (f", accuracy budget {budget} points on {cfg.budget_split}" if budget is not None else ""))
        if cfg.max_miou_drop is not None and not labelled:
            log.warning("accuracy budget skipped: no labelled data (%s not found); INT8 is not checked against FP32 "
                        "accuracy", cfg.dataset)
        with nested(DETAIL):
            quantized = quantize_int8(
                export.path, calibration.path,
                QuantizeConfig(profile=profile, method=cfg.quant_method, max_miou_drop=budget,
                               eval_dataset=cfg.dataset, eval_split=cfg.budget_split, eval_limit=cfg.budget_limit,
                               data_root=cfg.data_root, threads=cfg.threads),
                work_dir / ONNX_FILES["int8"])
        if target.kind == "cpu" and labelled:
            measured = _cpu_variants_stage(work_dir, cfg, calibration.path, steps)
        else:
            if target.kind == "cpu":  # no labelled data: no variant can be held to the accuracy budget
                steps.say("INT8 for OpenVINO: skipped, no labelled data to choose a CPU variant on")
            steps.say("evaluate and time fp32 / fp16 / int8 on ONNX Runtime CPU "
                      + (f"({cfg.eval_split} split)" if labelled else "(latency only: no labelled data)"))
            with nested(DETAIL):
                measured = measure_precisions({p: work_dir / f for p, f in ONNX_FILES.items()}, cfg.dataset,
                                              cfg.eval_split, cfg.data_root, cfg.eval_limit, cfg.threads,
                                              cfg.latency_rounds, accuracy=labelled)
        steps.say(f"engine for {target.name}")
        engine = _engine_stage(work_dir, target, cfg, spec)
        checks = {"parity": export.manifest["checks"]["parity"],
                  "int8_accuracy_budget": quantized.manifest["checks"].get("accuracy")}
        if cfg.max_miou_drop is not None and not labelled:
            checks["int8_accuracy_budget"] = {"skipped": f"no labelled data ({cfg.dataset} not found)"}
        manifest = stage_manifest(
            "build",
            inputs={"weights": weights_record,
                    "calibration": {"path": CALIBRATION_MANIFEST, "count": calibration.manifest["count"]}},
            # out_dir is where this manifest lives: a moved bundle must not name its old place
            settings={**{k: v for k, v in asdict(cfg).items() if k not in ("out_dir", "force")},
                      "quant_profile": profile},
            checks=checks,
            libraries=("torch", "onnx", "onnxruntime", "onnxslim", "transformers", "torchvision",
                       "segmentation-models-pytorch"))
        artifacts = {p: _relative_record(work_dir / f) for p, f in ONNX_FILES.items()}
        if (work_dir / OV_INT8_FILE).is_file():
            artifacts["int8-nncf"] = _relative_record(work_dir / OV_INT8_FILE)
        result = BuildResult(bundle=final_dir, model=source.name, model_kind=source.kind, target=target.name,
                             target_resolved_from=target.resolved_from, artifacts=artifacts,
                             layers_kept_float=quantized.manifest["layers_kept_float"], engine=engine,
                             seconds=round(time.monotonic() - started, 1),
                             card=card.to_dict() if card is not None else None,
                             default_variant=measured["default"]["name"] if "default" in measured else None)
        manifest.update(result.manifest_fields())
        write_json(work_dir / MANIFEST_FILE, manifest)
        write_reports(work_dir, source.name, target.name, measured, manifest)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)  # nothing half-built is left looking valid
        raise
    (work_dir / PARTIAL_MARKER).unlink()
    _replace_bundle(work_dir, final_dir, force=cfg.force)
    return result


class _Steps:
    """The "[3/7] stage" lines of a build: one number per stage, in the order they run."""

    def __init__(self, total: int) -> None:
        self.total, self._numbers = total, iter(range(1, total + 1))

    def say(self, what: str) -> None:
        log.info("[%d/%d] %s", next(self._numbers), self.total, what)


def adopt_onnx(source: Path, card: ModelCard | None, out_path: Path, model_name: str) -> Artifact:
    """A foreign FP32 graph into the bundle: the card checked against it and written into its metadata (or the
    graph's own edgeseg metadata kept). Parity has no torch model to compare with: the graph is the reference."""
    from edgeseg.card import check_card, write_carded_onnx
    from edgeseg.manifest import Artifact, atomic_path, sha256_file

    if card is not None:
        seen = write_carded_onnx(source, card, out_path, model_name=model_name)
    else:
        _check_adoptable(source)
        from edgeseg.card import card_from_preprocessing
        from edgeseg.export import read_onnx_metadata

        seen = check_card(card_from_preprocessing(onnx_preprocessing(source), output=read_onnx_metadata(source)
                                                  .get("edgeseg.output", "logits"),
                                                  output_name=read_onnx_metadata(source).get("edgeseg.output_name")),
                          source)
        with atomic_path(out_path) as tmp:
            shutil.copyfile(source, tmp)
    parity = {"reference": "onnxruntime fp32 (no torch model)", "passed": True, "argmax_agreement": None}
    manifest = stage_manifest("adopt-onnx", inputs={"onnx": input_record(source, out_path.parent)},
                              settings={"card": card.origin if card is not None else "edgeseg metadata"},
                              checks={"parity": parity, "card": seen}, libraries=("onnx", "onnxruntime"))
    manifest.update({"model": model_name, "precision": "fp32", "output": seen["output"],
                     "preprocessing": onnx_preprocessing(out_path).to_dict(),
                     "artifact": {"path": out_path.name, "sha256": sha256_file(out_path),
                                  "bytes": out_path.stat().st_size}})
    write_json(manifest_path_for(out_path), manifest)
    return Artifact(out_path, manifest)


def _check_adoptable(source: Path) -> None:
    """A foreign graph without a card must carry edgeseg's contract, and be the FP32 graph."""
    from edgeseg.export import read_onnx_metadata
    from edgeseg.model_source import require_contract

    require_contract(source)
    if read_onnx_metadata(source).get("edgeseg.precision", "fp32") != "fp32":
        raise UsageError(f"{source} is already quantized; build from the FP32 graph")


def _has_labelled_data(cfg: BuildConfig, source: ModelSource, card: ModelCard | None) -> bool:
    """Zoo models keep their old behaviour (missing data is an error later); other models may be built from a
    plain image folder (--calib-images), with the accuracy budget and mIoU skipped and said so."""
    from edgeseg.data.datasets import open_dataset
    from edgeseg.errors import DataError

    if source.kind == "zoo" or not cfg.calib_images:
        return True
    try:
        open_dataset(cfg.dataset, cfg.budget_split, cfg.data_root, label_set=card.preprocessing() if card else None,
                     check_classes=False)
    except DataError:
        return False
    return True


def _calibration_config(cfg: BuildConfig) -> CalibConfig:
    if not cfg.calib_images:
        return CalibConfig(dataset=cfg.dataset, split=cfg.calib_split, data_root=cfg.data_root,
                           count=cfg.calib_count, strategy=cfg.calib_strategy)
    strategy = cfg.calib_strategy
    if strategy == "class-balanced":
        _detail("--calib-images has no masks: calibrating on a random sample instead of class-balanced")
        strategy = "random"
    return CalibConfig(images_dir=cfg.calib_images, count=cfg.calib_count, strategy=strategy)
def _replace_bundle(work_dir: Path, final_dir: Path, force: bool) -> None:
    """Move the finished bundle onto final_dir. The folder there is checked again (it may have changed during a
    long build): only an earlier bundle is removed, and only with force; an empty folder is replaced."""
    try:
        check_output_folder(final_dir, "bundle", force=force)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    if final_dir.is_dir():
        if any(final_dir.iterdir()):
            old = final_dir.with_name(f".{final_dir.name}.replaced-{os.getpid()}")  # a name no user picks
            final_dir.rename(old)  # keep the earlier bundle until the new one is in place
            work_dir.rename(final_dir)
            shutil.rmtree(old, ignore_errors=True)
            return
        final_dir.rmdir()
    work_dir.rename(final_dir)


def _cpu_variants_stage(work_dir: Path, cfg: BuildConfig, calibration: Path, steps: _Steps) -> dict:
    """The CPU target: NNCF INT8 for OpenVINO (where installed), then every CPU backend x precision measured
    side by side; the fastest within the accuracy budget becomes the bundle's default."""
    if openvino_available():
        from edgeseg.quantize_ov import quantize_nncf

        steps.say("INT8 for OpenVINO (NNCF, same calibration set)")
        with nested(DETAIL):
            quantize_nncf(work_dir / ONNX_FILES["fp32"], calibration, work_dir / OV_INT8_FILE,
                          data_root=cfg.data_root)
        openvino_note = None
    else:
        steps.say("INT8 for OpenVINO: skipped, openvino is not installed")
        openvino_note = "openvino is not installed (pip install 'edgeseg[openvino]'): ONNX Runtime rows only"
        _detail(openvino_note)
    variants = plan_variants(work_dir)
    steps.say(f"evaluate and time {len(variants)} CPU variants side by side ({cfg.eval_split} split)")
    with nested(DETAIL):
        measured = measure_variants(work_dir, variants, cfg.dataset, cfg.eval_split, cfg.data_root, cfg.eval_limit,
                                    cfg.threads, cfg.latency_rounds, cfg.runoff_margin, cfg.max_miou_drop)
    default = choose_default(measured["rows"], cfg.max_miou_drop)
    ratio = (default.get("runoff") or default)["latency_ratio"]
    _detail(f"default CPU variant: {default['name']} ({ratio:.2f}x ORT fp32, "
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
            # Only the leftover of an earlier build (it carries the marker); a user's folder of that name is
            # refused, not removed.
            if not (work_dir / PARTIAL_MARKER).is_file():
                raise UsageError(f"{work_dir} exists and is not an unfinished edgeseg bundle; move it away first")
            shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True)
        (work_dir / PARTIAL_MARKER).write_text("an unfinished edgeseg build; safe to delete\n")
    except OSError as exc:
        raise UsageError(f"cannot write the bundle in {work_dir.parent}: {exc.strerror}; choose another --out") \
            from exc


def _relative_record(path: Path) -> dict:
    record = input_record(path)
    record["path"] = path.name
    return record


def _prune_stage(cfg: BuildConfig, work_dir: Path, source: ModelSource) -> Path:
    from edgeseg.prune import PruneConfig, prune

    out = work_dir / (PRUNED_HF_DIR if source.kind == "hf" else PRUNED_WEIGHTS)
    with nested(DETAIL):
        pruned = prune(PruneConfig(model=cfg.model, weights=None if source.kind == "hf" else cfg.weights,
                                   ratio=cfg.prune_ratio, importance=cfg.prune_importance, size=cfg.size,
                                   dataset=cfg.dataset, data_root=cfg.data_root, eval_split=cfg.budget_split,
                                   eval_limit=cfg.eval_limit, threads=cfg.threads,
                                   finetune_epochs=cfg.finetune_epochs, distill=cfg.finetune_epochs > 0,
                                   card=cfg.card),
                       out)
    return pruned.path


def _engine_stage(work_dir: Path, target: Target, cfg: BuildConfig, spec: dict | None) -> dict:
    if target.kind == "cpu":
        _detail("cpu target: the default CPU variant (report.json) runs the bundle's files directly; no engine")
        return {"engine": None, "reason": "cpu target runs ONNX Runtime / OpenVINO on the bundle's files"}
    from edgeseg.engine.bundle import EngineOptions, finish_for_target

    options = EngineOptions()
    if spec and spec.get("sparsity") == "2:4":
        if target.sparsity:  # the weights were pruned 2:4: let TensorRT pick sparse tensor-core kernels
            options = EngineOptions(sparse_weights=True)
        else:
            _detail(f"the weights are 2:4 sparse but {target.name} has no sparse tensor cores; built dense")
    with nested(DETAIL):
        return finish_for_target(work_dir, target, cfg.engine_precision, options=options).to_dict()
