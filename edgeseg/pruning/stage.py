"""The prune stage: load the model, prune it (edgeseg.pruning.core), time both in ONNX Runtime, evaluate
both, optionally apply 2:4 sparsity and fine-tune, and save the checkpoint with the report in its sidecar.

A zoo model is saved as an edgeseg checkpoint (.safetensors + sidecar with the architecture spec). A Hugging
Face or module:factory model keeps its own format (edgeseg.foreign_checkpoint): a Hugging Face directory with the
spec beside config.json, or the factory's state_dict with the spec in its sidecar; the loaders build the model
fresh, resize the layers the spec lists and load the pruned weights strictly (never a pickled module). Its
classifier is found from the graph (the last layer with num_classes outputs) or named with --classifier."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.errors import DataError, UsageError
from edgeseg.manifest import Artifact, library_versions, manifest_path_for, read_json
from edgeseg.pruning.config import PruneConfig
from edgeseg.pruning.core import GradientBatch, PruneReport, prune_model

if TYPE_CHECKING:
    from edgeseg.model_source import ModelSource
    from edgeseg.zoo.contract import Preprocessing
    from edgeseg.zoo.weights import LoadedModel

log = logging.getLogger(__name__)


def prune(cfg: PruneConfig, out_path: str | Path) -> Artifact:
    """Prune cfg.model, write the checkpoint + sidecar (spec, settings, report) to `out_path`: a .safetensors
    file (zoo and module:factory models) or a directory (Hugging Face models). Its findings (GFLOPs, latency,
    mIoU before and after) go to this module's logger."""
    import torch

    from edgeseg.checkpoint import save_checkpoint
    from edgeseg.foreign_checkpoint import save_foreign
    from edgeseg.model_source import load_card_option, load_torch, unpruned_model
    from edgeseg.pruning.rules import find_classifier, resolve_layer_names
    from edgeseg.sparsity import apply_2to4, check_2to4
    from edgeseg.zoo.weights import LoadedModel, load_model

    out_path = Path(out_path)
    source = prunable_source(cfg.model, out_path)
    zoo = source.kind == "zoo"
    card = load_card_option(cfg.card, source)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    original = load_model(cfg.model, cfg.weights) if zoo else load_torch(source, cfg.weights, card)
    if cfg.finetune_epochs:  # fail before the work, not after it (a foreign model's classes are the data's)
        from edgeseg.data.datasets import open_dataset

        open_dataset(cfg.dataset, "train", cfg.data_root, label_set=None if zoo else original.preprocessing)
    size = tuple(cfg.size or original.preprocessing.input_size)
    num_classes = original.preprocessing.num_classes
    if cfg.classifier:
        classifier = resolve_layer_names(original.model, cfg.classifier, option="--classifier")
    else:  # the zoo entry names it; anything else: the last layer with num_classes outputs
        classifier = None if zoo else find_classifier(original.model, torch.zeros(1, 3, *size), num_classes,
                                                      cfg.model)
    gradient_batches = (taylor_batches(cfg, original.preprocessing.with_size(size),
                                       None if zoo else original.preprocessing)
                        if cfg.importance == "taylor" else None)

    started = time.monotonic()
    model, spec, report = prune_model(original, cfg.model, cfg, size, gradient_batches, classifier=classifier,
                                      reference=None if zoo else unpruned_model(source))
    report = dataclasses.replace(report, prune_seconds=round(time.monotonic() - started, 1))
    log.info(f"pruned {cfg.model}: {report.gflops_before:.2f} -> {report.gflops_after:.2f} GFLOPs "
             f"(-{report.gflops_reduction:.0%}), {report.params_before / 1e6:.2f}M -> "
             f"{report.params_after / 1e6:.2f}M parameters")
    if cfg.sparsity:
        apply_2to4(model, skip=report.classifier_layers)
        spec["sparsity"] = cfg.sparsity  # travels with the checkpoint: train.py keeps the pattern when fine-tuning
        report = dataclasses.replace(report, sparsity_2to4_fraction=check_2to4(model, skip=report.classifier_layers))
    pruned = LoadedModel(model.eval(), original.preprocessing, f"pruned from {original.source}", spec=spec)

    if cfg.measure_latency:
        report = dataclasses.replace(report, latency=measure_latency_side_by_side(original, pruned, cfg, size))
        log.info(f"ONNX Runtime CPU p50: {report.latency['latency_before_ms']:.2f} ms -> "
                 f"{report.latency['latency_after_ms']:.2f} ms (-{report.latency['latency_reduction']:.0%})")
    evaluation, skip_reason = _evaluation_set(cfg, num_classes, None if zoo else original.preprocessing)
    if evaluation is not None:
        report = dataclasses.replace(report, miou_before=_miou(original.model, evaluation, original.preprocessing,
                                                               size, cfg),
                                     miou_pruned=_miou(model, evaluation, original.preprocessing, size, cfg))
        log.info(f"mIoU ({cfg.dataset}/{cfg.eval_split}): {report.miou_before:.4f} before, "
                 f"{report.miou_pruned:.4f} pruned")
    else:
        report = dataclasses.replace(report, miou_skipped=skip_reason)

    def write(final_model: Any, final_report: PruneReport) -> None:
        extra = {"sparsity": cfg.sparsity, "pruned_from": original.source,
                 "versions": library_versions("torch", "torch-pruning", "transformers", "torchvision",
                                              "segmentation-models-pytorch", "onnxruntime")}
        recipe = {"stage": "prune", **dataclasses.asdict(cfg)}
        if not zoo:  # in the model's own format, with the spec its loader resizes the fresh model by
            save_foreign(final_model, source.kind, out_path, model_name=cfg.model,
                         preprocessing=original.preprocessing, recipe=recipe, metrics=final_report.to_dict(),
                         spec=spec, extra=extra)
            return
        save_checkpoint(final_model, out_path, model_name=cfg.model, preprocessing=original.preprocessing,
                        label_set=_label_set_name(original.preprocessing), metrics=final_report.to_dict(),
                        recipe=recipe, extra={"spec": spec, **extra})

    write(model, report)
    if cfg.finetune_epochs:
        finetuned, finetune_fields = _finetune(cfg, out_path, evaluation, original, size, source, card)
        if cfg.sparsity:
            finetune_fields["sparsity_2to4_fraction"] = check_2to4(finetuned, skip=report.classifier_layers)
        write(finetuned, dataclasses.replace(report, **finetune_fields))
    return Artifact(out_path, read_json(manifest_path_for(out_path)))


def prunable_source(model: str, out_path: Path) -> ModelSource:
    """The ModelSource of --model, refused with one line when it cannot be pruned or --out does not fit its kind."""
    from edgeseg.foreign_checkpoint import PREPROCESSING_FILE
    from edgeseg.model_source import KIND_WORDS, resolve_source

    source = resolve_source(model)
    if not source.is_torch:
        raise UsageError(f"{model} is {KIND_WORDS[source.kind]}: prune takes a PyTorch model (a zoo name, Hugging "
                         f"Face directory or hub id, or package.module:factory with --weights)")
    if source.kind == "hf":
        if out_path.suffix:
            raise UsageError(f"--out {out_path}: a pruned Hugging Face model is a directory; give a name without "
                             f"a suffix")
        if out_path.is_file() or out_path.is_dir() and any(out_path.iterdir()) and not (
                out_path / PREPROCESSING_FILE).is_file():
            raise UsageError(f"--out {out_path} exists and edgeseg did not write it; give a new directory")
    elif out_path.suffix != ".safetensors":
        raise UsageError(f"--out {out_path}: a pruned checkpoint is a .safetensors file (plus its .json sidecar)")
    return source


def taylor_batches(cfg: PruneConfig, preprocessing: Preprocessing,
                   label_set: Preprocessing | None = None) -> list[GradientBatch]:
    """The first images of the training split (with masks) at the traced size, spread over the split."""
    from edgeseg.data.datasets import open_dataset
    from edgeseg.data.transforms import resize_pair

    try:
        dataset = open_dataset(cfg.dataset, "train", cfg.data_root, label_set=label_set)
    except DataError as exc:
        raise UsageError(f"--importance taylor needs real images for its gradients ({exc}); "
                         f"or use --importance l1") from exc
    step = max(1, len(dataset) // cfg.taylor_images)
    batches = []
    for index in list(range(0, len(dataset), step))[: cfg.taylor_images]:
        image, mask = dataset.load(index)
        image, mask = resize_pair(image, mask, preprocessing.input_size)
        batches.append((preprocessing.normalize(image), mask))
    return batches


def measure_latency_side_by_side(original: LoadedModel, pruned: LoadedModel, cfg: PruneConfig,
                                 size: tuple[int, int]) -> dict:
    """Export both models to ONNX and time them in ONNX Runtime on the CPU, interleaved (A B A B ...)."""
    from edgeseg.bench.latency import measure_interleaved
    from edgeseg.export import ExportConfig, export_model
    from edgeseg.runners.ort import OrtRunner

    export_cfg = ExportConfig(size=size, dataset=cfg.dataset, data_root=cfg.data_root, parity_images=2)
    batch = np.random.default_rng(cfg.seed).standard_normal((1, 3, *size)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="edgeseg-prune-") as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # synthetic parity images when no dataset: fine for timing
        runners = {}
        for label, loaded in (("before", original), ("after", pruned)):
            path = export_model(loaded, cfg.model, export_cfg, Path(scratch) / f"{label}.onnx").path
            runners[label] = OrtRunner(path, device="cpu", threads=cfg.threads)
        stats = measure_interleaved({label: (lambda r=runner: r.infer(batch)) for label, runner in runners.items()},
                                    rounds=cfg.latency_rounds)
    before, after = stats["before"].p50_ms, stats["after"].p50_ms
    return {"latency_backend": "onnxruntime-cpu", "latency_threads": cfg.threads,
            "latency_before_ms": before, "latency_after_ms": after, "latency_reduction": 1 - after / before,
            "latency_before": stats["before"].to_dict(), "latency_after": stats["after"].to_dict()}


def _evaluation_set(cfg: PruneConfig, num_classes: int, label_set: Any = None) -> tuple[Any, str | None]:
    """(dataset, None) to measure mIoU on, or (None, why not). `label_set`: a foreign model's contract, whose
    classes a folder dataset without its own takes."""
    from edgeseg.data.datasets import open_dataset

    try:
        dataset = open_dataset(cfg.dataset, cfg.eval_split, cfg.data_root, label_set=label_set, check_classes=False)
    except DataError as exc:
        return None, f"no dataset: {exc}"
    if dataset.label_set.num_classes != num_classes:
        return None, f"the model predicts {num_classes} classes, {dataset.name} has {dataset.label_set.num_classes}"
    return dataset, None


def _miou(model: Any, dataset: Any, preprocessing: Any, size: Any, cfg: PruneConfig) -> float:
    from edgeseg.evaluate import evaluate, torch_predictor

    scores = evaluate(torch_predictor(model, "cpu"), dataset, preprocessing.with_size(size), limit=cfg.eval_limit,
                      description="eval")
    return scores.miou


def _label_set_name(preprocessing: Any) -> str:
    from edgeseg.data.palettes import LABEL_SETS

    for name, label_set in LABEL_SETS.items():
        if tuple(label_set.classes) == tuple(preprocessing.classes):
            return name
    return "custom"


def _finetune(cfg: PruneConfig, pruned_path: Path, evaluation: Any, original: LoadedModel, size: tuple[int, int],
              source: ModelSource, card: Any) -> tuple[Any, dict]:
    """Recovery fine-tune of the pruned checkpoint through edgeseg.train (optionally distilled from the
    unpruned model); returns the best fine-tuned model and the report's fine-tune fields. A pruned Hugging Face
    directory is trained as the model itself; a zoo or factory checkpoint as its --weights."""
    from edgeseg.manifest import portable_path
    from edgeseg.model_source import load_torch, resolve_source
    from edgeseg.train import TrainConfig, train
    from edgeseg.zoo.weights import load_model

    hf = source.kind == "hf"
    teacher = (cfg.model if hf else cfg.weights if source.kind == "factory" else cfg.weights or "default")
    run_dir = pruned_path.with_name(pruned_path.stem + "-finetune")
    train_cfg = TrainConfig(
        model=str(pruned_path) if hf else cfg.model, out_dir=str(run_dir), dataset=cfg.dataset,
        data_root=cfg.data_root, weights=None if hf else str(pruned_path), epochs=cfg.finetune_epochs,
        batch_size=cfg.finetune_batch_size, lr=cfg.finetune_lr, eval_limit=cfg.eval_limit, threads=cfg.threads,
        device=cfg.device, seed=cfg.seed, distill_from=teacher if cfg.distill else None, card=cfg.card)
    log.info(f"fine-tuning the pruned model for {cfg.finetune_epochs} epochs in {run_dir}"
             + (" with distillation from the unpruned model" if cfg.distill else ""))
    best = train(train_cfg)
    if source.kind == "zoo":
        finetuned = load_model(cfg.model, str(best)).model
    else:
        finetuned = load_torch(resolve_source(str(best)) if hf else source, None if hf else str(best), card).model
    # Relative to the pruned checkpoint's folder (the sidecar's), so a moved bundle's record still resolves.
    extra = {"finetune": {"run_dir": portable_path(run_dir, pruned_path.parent),
                          "best_checkpoint": portable_path(best, pruned_path.parent), "epochs": cfg.finetune_epochs,
                          "distill": cfg.distill, "lr": cfg.finetune_lr}}
    if evaluation is not None:
        extra["miou_finetuned"] = _miou(finetuned, evaluation, original.preprocessing, size, cfg)
        log.info(f"mIoU after fine-tuning: {extra['miou_finetuned']:.4f}")
    return finetuned, extra
