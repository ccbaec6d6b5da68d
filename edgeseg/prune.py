"""Stage: structured channel pruning with Torch-Pruning's DependencyGraph, optional 2:4 sparsity, a report.

`prune_model` removes whole channels (smaller dense layers: faster on every backend, unlike masks), keeping
every coupled layer consistent: Torch-Pruning traces the autograd graph once and groups the parameters that must
lose the same channels (a conv's outputs, its BatchNorm, the next convs' inputs, both sides of a residual add or
a concat). Channel counts are rounded to multiples of `round_to` (default 8) so tensor cores and SIMD kernels
stay efficient; Torch-Pruning rounds the kept count *down*, so narrow layers lose more than the ratio (32 channels
at 0.3 keep 16) and iterative steps compound it: the report gives the GFLOPs actually removed. The classifier
(the layer(s) producing the num_classes logits) keeps its outputs; its inputs follow the layer before it.

CNNs (torchvision FCN/DeepLabV3/LR-ASPP, smp U-Net/DeepLabV3+, edgeseg's fcn-resnet18) need nothing special.

SegFormer (transformers' SegformerForSemanticSegmentation) is traced by DepGraph too; what it prunes and the
rules written by hand where the trace is not enough:
  * Mix-FFN hidden size (fc1 -> depthwise conv -> fc2): traced; the depthwise conv's groups follow.
  * Attention q/k/v/o: traced (scaled_dot_product_attention couples q, k, v and o's input). The heads are passed
    as `num_heads`, so the same head dimensions are removed in every head (head-dim pruning, not whole heads:
    b0's first stage has a single head and 1/2/5/8 heads are too coarse for ratios of 0.3-0.5). Afterwards each
    attention module's `head_dim` (transformers 5.x; `attention_head_size`/`all_head_size` in 4.x) is set from
    q_proj's new width, since the forward reshapes with it. `scaling` (5.x) keeps its trained value, so every
    kept dimension adds to the attention logits exactly what it added before (4.x derives the scale from
    attention_head_size, so there it follows the new head size).
  * Efficient-attention reduction (the strided `sequence_reduction`/`sr` conv + LayerNorm): HF reshapes that
    conv's output with the channel count of its *input* (a Python int the autograd trace cannot see), so its
    output width must equal its input width. Hand-written rule: the conv's output and everything coupled to its
    input (that stage's residual stream: patch embedding, LayerNorms, o_proj/fc2 outputs) are left unpruned.
    The last stage has no reduction conv (sr ratio 1), so its residual stream is pruned as traced.
  * Decode head: the four per-stage MLP projections (their outputs feed slices of linear_fuse's input through
    a concat) and linear_fuse + BatchNorm (whose outputs feed the classifier's input) are traced.
  * `ignored_layers` only stops a layer's outputs from being pruned, so the classifier's num_classes outputs stay.
The pruned model is run once afterwards; any shape mismatch becomes a clear error, not a wrong model.

Importance: l1 / l2 (group weight magnitude), bn-scale (BatchNorm gamma, Network Slimming; refused for models
whose channels mostly have no BatchNorm, such as SegFormer), taylor (|weight x gradient| over a few real images;
refused without them). Uniform ratio per layer by default; `global_pruning` ranks all groups together.

Spec: `edgeseg.arch_spec` records the new layer sizes as JSON so `build_from_spec` rebuilds the architecture.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeseg.arch_spec import architecture_spec, build_from_spec, is_attention  # noqa: F401  (re-exported)
from edgeseg.errors import DataError, EdgesegError, UsageError
from edgeseg.lazy import lazy_import
from edgeseg.manifest import Artifact, library_versions, read_json, manifest_path_for
from edgeseg.sparsity import SPARSITY_PATTERNS

IMPORTANCES = ("l1", "l2", "bn-scale", "taylor")
# q/k/v projection names of HF attention modules: transformers 5.x, then 4.x.
_QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))

# One (1x3xHxW float32 image, HxW uint8 mask or None) pair per batch, for the taylor criterion's gradients.
GradientBatch = tuple[np.ndarray, "np.ndarray | None"]


class PruneError(EdgesegError):
    """The model could not be traced or pruned."""


@dataclass(frozen=True)
class PruneConfig:
    model: str
    weights: str | None = None  # any --weights spec; default: the bundled checkpoint
    ratio: float = 0.3  # fraction of channels removed in each coupled group (uniform) or overall (global)
    importance: str = "l1"
    global_pruning: bool = False
    iterative_steps: int = 1
    round_to: int = 8  # keep channel counts multiples of this (1: no rounding)
    ignore: tuple[str, ...] = ()  # layer names whose outputs keep all channels
    sparsity: str | None = None  # "2:4": semi-structured sparsity on top of the pruned channels
    size: tuple[int, int] | None = None  # (height, width) to trace, count GFLOPs and time at; default: contract
    dataset: str = "camvid"
    data_root: str | None = None
    taylor_images: int = 16  # training images whose gradients rank channels for --importance taylor
    eval_split: str = "test"  # mIoU before/after; fine-tuning picks its best epoch on val, so not val
    eval_limit: int | None = None
    measure_latency: bool = True  # ONNX Runtime CPU latency of both models, side by side
    latency_rounds: int = 10
    threads: int | None = None
    finetune_epochs: int = 0  # recovery fine-tune through edgeseg.train (0: none)
    finetune_lr: float = 1e-3
    finetune_batch_size: int = 8
    distill: bool = False  # distil from the unpruned model while fine-tuning
    device: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.ratio < 1:
            raise UsageError(f"--ratio must be between 0 and 1 (exclusive), e.g. 0.3; got {self.ratio}")
        if self.importance not in IMPORTANCES:
            raise UsageError(f"unknown importance {self.importance!r}; choose {', '.join(IMPORTANCES)}")
        if self.iterative_steps < 1:
            raise UsageError("--iterative-steps must be at least 1")
        if self.round_to < 1:
            raise UsageError("--round-to must be at least 1 (1: no rounding)")
        if self.sparsity not in (None, *SPARSITY_PATTERNS):
            raise UsageError(f"unknown sparsity {self.sparsity!r}; the supported pattern is 2:4")
        if self.finetune_epochs < 0:
            raise UsageError("--finetune-epochs must be 0 or more")
        if self.distill and not self.finetune_epochs:
            raise UsageError("--distill needs --finetune-epochs N: distillation happens while fine-tuning")
        if self.importance == "taylor" and self.taylor_images < 1:
            raise UsageError("--importance taylor needs at least one image for its gradients")


# ---------------------------------------------------------------------------------------------- prune_model


def prune_model(loaded, model_name: str, cfg: PruneConfig, example_size: tuple[int, int],
                gradient_batches: Sequence[GradientBatch] | None = None):
    """Prune a copy of `loaded.model`; returns (pruned model, architecture spec, report). `loaded` is unchanged."""
    import torch

    tp = lazy_import("torch_pruning")
    if cfg.importance == "taylor" and not gradient_batches:
        raise UsageError("--importance taylor ranks channels by gradients and needs real images; give a dataset "
                         "(--data/--data-root) or use --importance l1")
    num_classes = loaded.preprocessing.num_classes
    model = copy.deepcopy(loaded.model).cpu().float().eval()
    generator = torch.Generator().manual_seed(cfg.seed)
    example = torch.randn(1, 3, *example_size, generator=generator)
    params_before, gflops_before = _count(model, example_size)

    user_ignored = resolve_layer_names(model, cfg.ignore)
    graph = _trace(tp, model, example, model_name)
    classifiers = find_classifiers(graph, model, num_classes, model_name)
    attention = attention_projections(model)
    modules = dict(model.named_modules())
    fixed_width = fixed_width_layers(graph, model)
    ignored = [modules[name] for name in (*user_ignored, *classifiers, *fixed_width)]
    ignored += [module for module, qkv in attention.items() if qkv is None]  # attention we cannot patch: leave it
    ignored = list({sub: None for layer in ignored for sub in layer.modules()})  # a named block: all its layers
    _check_prunable(graph, ignored, cfg, model_name)

    num_heads = {layer: module.num_attention_heads for module, qkv in attention.items() if qkv for layer in qkv}
    try:
        pruner = tp.pruner.BasePruner(
            model, example, importance=_importance(tp, cfg.importance), global_pruning=cfg.global_pruning,
            pruning_ratio=cfg.ratio, iterative_steps=cfg.iterative_steps,
            round_to=cfg.round_to if cfg.round_to > 1 else None, ignored_layers=ignored,
            num_heads=num_heads, prune_head_dims=True, prune_num_heads=False)
        for _ in range(cfg.iterative_steps):
            if cfg.importance == "taylor":
                accumulate_gradients(model, gradient_batches)
            pruner.step()
            model.zero_grad(set_to_none=True)
            sync_attention_sizes(attention, model_name)
    except EdgesegError:
        raise
    except Exception as exc:  # Torch-Pruning raises anything from its tracer and index mapping
        raise PruneError(f"Torch-Pruning failed on {model_name} ({type(exc).__name__}: {_first_line(exc)}); "
                         f"leave the failing part alone with --ignore LAYER") from exc
    model.eval()
    _check_runs(model, example, num_classes, model_name)

    params_after, gflops_after = _count(model, example_size)
    if params_after == params_before:
        raise UsageError(f"nothing was pruned at --ratio {cfg.ratio} with --round-to {cfg.round_to}: every layer "
                         f"would keep all its channels; raise --ratio or lower --round-to")
    spec = architecture_spec(model_name, model, num_classes)
    report = {
        "input_size": list(example_size),
        "params_before": params_before, "params_after": params_after,
        "params_reduction": 1 - params_after / params_before,
        "gflops_before": gflops_before, "gflops_after": gflops_after,
        "gflops_reduction": 1 - gflops_after / gflops_before,
        "layers_resized": len(spec["modules"]),
        "classifier_layers": classifiers,
        "ignored_layers": list(user_ignored),
        "fixed_width_layers": fixed_width,
        "attention_modules": sorted(name for name, module in modules.items() if module in attention),
    }
    return model, spec, report


def _count(model, size) -> tuple[int, float]:
    from edgeseg.zoo.stats import count_params_and_gflops

    return count_params_and_gflops(model, size)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _importance(tp, name: str):
    importance = tp.importance
    return {"l1": lambda: importance.GroupMagnitudeImportance(p=1),
            "l2": lambda: importance.GroupMagnitudeImportance(p=2),
            "bn-scale": lambda: importance.BNScaleImportance(),
            "taylor": lambda: importance.GroupTaylorImportance()}[name]()


def resolve_layer_names(model, names: Sequence[str]) -> list[str]:
    """Check --ignore names against the model; the wrapper's `model.` prefix may be left out."""
    from edgeseg.zoo.registry import closest_names

    known = dict(model.named_modules())
    resolved = []
    for name in names:
        if name in known and name:
            resolved.append(name)
        elif f"model.{name}" in known:
            resolved.append(f"model.{name}")
        else:
            close = closest_names(name, [n for n in known if n]) or closest_names(
                f"model.{name}", [n for n in known if n])
            shallow = [n for n in known if n and n.count(".") <= 1][:8]  # where the names start, for orientation
            hint = f"did you mean {', '.join(close)}?" if close else f"its layers start {', '.join(shallow)}, ..."
            raise UsageError(f"--ignore {name!r}: the model has no layer of that name; {hint}")
    return resolved


def _trace(tp, model, example, model_name: str):
    advice = "its forward pass must be a differentiable torch computation on the input tensor"
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as exc:  # the tracer fails on models it cannot follow, with assorted exception types
        raise PruneError(f"Torch-Pruning cannot trace {model_name} ({type(exc).__name__}: {_first_line(exc)}); "
                         f"{advice}") from exc
    if not any(isinstance(module, _prunable_types()) for module in graph.module2node):
        raise PruneError(f"Torch-Pruning cannot trace {model_name}: no conv or linear layer appears in the autograd "
                         f"graph of its output (does it run under no_grad or leave torch?); {advice}")
    return graph


def _prunable_types():
    from torch import nn

    return (nn.modules.conv._ConvNd, nn.Linear)


def _groups(graph, ignored):
    return list(graph.get_all_groups(ignored_layers=list(ignored), root_module_types=list(_prunable_types())))


def find_classifiers(graph, model, num_classes: int, model_name: str) -> list[str]:
    """Names of the layers whose outputs are the logits: num_classes outputs that no other conv/linear reads
    (FCN-8s and LR-ASPP add several such score layers; all are left their outputs)."""
    prunable = _prunable_types()
    names = {module: name for name, module in model.named_modules()}
    found: list[str] = []
    for module in names:
        if not isinstance(module, prunable) or module not in graph.module2node:
            continue
        if graph.get_out_channels(module) != num_classes:
            continue
        group = graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels, [0])
        feeds_a_layer = any(graph.is_in_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, prunable)
                            for dep, _ in group)
        if not feeds_a_layer:
            found += [names[dep.target.module] for dep, _ in group
                      if graph.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names]
    if not found:
        raise PruneError(f"found no classifier in {model_name} (a layer with {num_classes} outputs that feeds the "
                         f"logits); check that the weights predict {num_classes} classes")
    return sorted(set(found))


def attention_projections(model) -> dict:
    """{attention module: (q, k, v) linears} for HF-style attention; None where the projections are not found."""
    from torch import nn

    found = {}
    for module in model.modules():
        if not is_attention(module):
            continue
        found[module] = None
        for names in _QKV_NAMES:
            layers = [getattr(module, name, None) for name in names]
            if all(isinstance(layer, nn.Linear) for layer in layers):
                found[module] = tuple(layers)
                break
    return found


def fixed_width_layers(graph, model) -> list[str]:
    """Hand-written rule for efficient attention (SegFormer/PVT): a conv inside an attention module (the sequence
    reduction) has its output reshaped with its *input's* channel count, which the trace cannot see. Keep its output
    width, and keep every layer whose outputs are coupled to its input (the stage's residual stream)."""
    from torch import nn

    names = {module: name for name, module in model.named_modules()}
    fixed: set[str] = set()
    for attention in [m for m in model.modules() if is_attention(m)]:
        for conv in attention.modules():
            if not isinstance(conv, nn.modules.conv._ConvNd) or conv not in graph.module2node:
                continue
            fixed.add(names[conv])
            pruner = graph.get_pruner_of_module(conv)
            group = graph.get_pruning_group(conv, pruner.prune_in_channels, [0])
            fixed.update(names[dep.target.module] for dep, _ in group
                         if graph.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names)
    return sorted(fixed)


def _check_prunable(graph, ignored, cfg: PruneConfig, model_name: str) -> None:
    from torch import nn

    groups = _groups(graph, ignored)
    if not groups:
        raise PruneError(f"Torch-Pruning found nothing to prune in {model_name}: no conv or linear layer with "
                         f"prunable outputs was traced (a forward pass that detaches or runs without autograd "
                         f"cannot be traced), or --ignore covers them all")
    if cfg.importance == "bn-scale":
        with_bn = sum(any(isinstance(dep.target.module, nn.modules.batchnorm._BatchNorm) for dep, _ in group)
                      for group in groups)
        if with_bn < len(groups) / 2:
            raise UsageError(f"--importance bn-scale ranks channels by BatchNorm scale, but only {with_bn} of "
                             f"{len(groups)} prunable groups in {model_name} have a BatchNorm; use --importance l1")


def accumulate_gradients(model, batches: Sequence[GradientBatch]) -> None:
    """Gradients for the taylor criterion: cross-entropy against the masks, or against the model's own
    predictions for images without masks (how much each weight matters to what the model currently says)."""
    import torch
    import torch.nn.functional as F

    model.eval()  # BatchNorm statistics and dropout stay as trained; gradients flow all the same
    model.zero_grad(set_to_none=True)
    for image, mask in batches:
        logits = model(torch.from_numpy(np.ascontiguousarray(image)).float())
        target = torch.from_numpy(mask.astype(np.int64))[None] if mask is not None else logits.argmax(1).detach()
        F.cross_entropy(logits, target, ignore_index=255).div(len(batches)).backward()


def sync_attention_sizes(attention: dict, model_name: str) -> None:
    """After head-dim pruning, give each attention module the head size its q/k/v projections now have."""
    for module, qkv in attention.items():
        if qkv is None:
            continue
        widths = sorted({layer.out_features for layer in qkv})
        heads = module.num_attention_heads
        width = widths[0]
        if len(widths) > 1 or width % heads:
            raise PruneError(f"attention in {model_name} ended with q/k/v widths {widths} for {heads} heads; "
                             f"prune it less (--ratio) or leave it alone with --ignore")
        for attribute, value in (("head_dim", width // heads), ("attention_head_size", width // heads),
                                 ("all_head_size", width)):
            if isinstance(getattr(module, attribute, None), int):
                setattr(module, attribute, value)


def _check_runs(model, example, num_classes: int, model_name: str) -> None:
    import torch

    try:
        with torch.no_grad():
            output = model(example)
    except Exception as exc:  # a shape the trace could not see
        raise PruneError(f"the pruned {model_name} no longer runs ({type(exc).__name__}: {_first_line(exc)}); "
                         f"leave the failing layer alone with --ignore LAYER") from exc
    expected = (1, num_classes, *example.shape[-2:])
    if tuple(output.shape) != expected:
        raise PruneError(f"the pruned {model_name} outputs {tuple(output.shape)} instead of {expected}")


# ---------------------------------------------------------------------------------------------------- stage


def prune(cfg: PruneConfig, out_path: str | Path, log: Callable[[str], None] | None = None) -> Artifact:
    """Prune cfg.model, write the checkpoint + sidecar (spec, settings, report) to `out_path` (.safetensors)."""
    import torch

    from edgeseg.checkpoint import save_checkpoint
    from edgeseg.sparsity import apply_2to4, check_2to4
    from edgeseg.zoo.registry import get_entry
    from edgeseg.zoo.weights import LoadedModel, load_model

    log = log or (lambda message: None)
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise UsageError(f"--out {out_path}: a pruned checkpoint is a .safetensors file (plus its .json sidecar)")
    get_entry(cfg.model)
    if cfg.finetune_epochs:  # fail before the work, not after it
        from edgeseg.data.datasets import open_dataset

        open_dataset(cfg.dataset, "train", cfg.data_root)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    original = load_model(cfg.model, cfg.weights)
    size = tuple(cfg.size or original.preprocessing.input_size)
    gradient_batches = taylor_batches(cfg, original.preprocessing.with_size(size)) \
        if cfg.importance == "taylor" else None

    started = time.monotonic()
    model, spec, report = prune_model(original, cfg.model, cfg, size, gradient_batches)
    report["prune_seconds"] = round(time.monotonic() - started, 1)
    log(f"pruned {cfg.model}: {report['gflops_before']:.2f} -> {report['gflops_after']:.2f} GFLOPs "
        f"(-{report['gflops_reduction']:.0%}), {report['params_before'] / 1e6:.2f}M -> "
        f"{report['params_after'] / 1e6:.2f}M parameters")
    if cfg.sparsity:
        apply_2to4(model, skip=report["classifier_layers"])
        spec["sparsity"] = cfg.sparsity  # travels with the checkpoint: train.py keeps the pattern when fine-tuning
        report["sparsity_2to4_fraction"] = check_2to4(model, skip=report["classifier_layers"])
    pruned = LoadedModel(model.eval(), original.preprocessing, f"pruned from {original.source}", spec=spec)

    if cfg.measure_latency:
        report.update(measure_latency_side_by_side(original, pruned, cfg, size))
        log(f"ONNX Runtime CPU p50: {report['latency_before_ms']:.2f} ms -> {report['latency_after_ms']:.2f} ms "
            f"(-{report['latency_reduction']:.0%})")
    evaluation, skip_reason = _evaluation_set(cfg, original.preprocessing.num_classes)
    if evaluation is not None:
        report["miou_before"] = _miou(original.model, evaluation, original.preprocessing, size, cfg)
        report["miou_pruned"] = _miou(model, evaluation, original.preprocessing, size, cfg)
        log(f"mIoU ({cfg.dataset}/{cfg.eval_split}): {report['miou_before']:.4f} before, "
            f"{report['miou_pruned']:.4f} pruned")
    else:
        report["miou_skipped"] = skip_reason

    def write(final_model, extra_report: dict | None = None) -> dict:
        metrics = {**report, **(extra_report or {})}
        if "miou_before" in metrics:
            final_miou = metrics.get("miou_finetuned", metrics["miou_pruned"])
            metrics["miou_drop"] = (metrics["miou_before"] - final_miou) * 100  # points
        save_checkpoint(final_model, out_path, model_name=cfg.model, preprocessing=original.preprocessing,
                        label_set=_label_set_name(original.preprocessing), metrics=metrics,
                        recipe={"stage": "prune", **dataclasses.asdict(cfg)},
                        extra={"spec": spec, "sparsity": cfg.sparsity, "pruned_from": original.source,
                               "versions": library_versions("torch", "torch-pruning", "transformers", "torchvision",
                                                            "segmentation-models-pytorch", "onnxruntime")})
        return metrics

    write(model)
    if cfg.finetune_epochs:
        finetuned, extra = _finetune(cfg, out_path, evaluation, original, size, log)
        if cfg.sparsity:
            extra["sparsity_2to4_fraction"] = check_2to4(finetuned, skip=report["classifier_layers"])
        write(finetuned, extra)
    return Artifact(out_path, read_json(manifest_path_for(out_path)))


def taylor_batches(cfg: PruneConfig, preprocessing) -> list[GradientBatch]:
    """The first images of the training split (with masks) at the traced size, spread over the split."""
    from edgeseg.data.datasets import open_dataset
    from edgeseg.data.transforms import resize_pair

    try:
        dataset = open_dataset(cfg.dataset, "train", cfg.data_root)
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


def measure_latency_side_by_side(original, pruned, cfg: PruneConfig, size) -> dict:
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


def _evaluation_set(cfg: PruneConfig, num_classes: int):
    """(dataset, None) to measure mIoU on, or (None, why not)."""
    from edgeseg.data.datasets import open_dataset

    try:
        dataset = open_dataset(cfg.dataset, cfg.eval_split, cfg.data_root)
    except DataError as exc:
        return None, f"no dataset: {exc}"
    if dataset.label_set.num_classes != num_classes:
        return None, f"the model predicts {num_classes} classes, {dataset.name} has {dataset.label_set.num_classes}"
    return dataset, None


def _miou(model, dataset, preprocessing, size, cfg: PruneConfig) -> float:
    from edgeseg.evaluate import evaluate, torch_predictor

    scores = evaluate(torch_predictor(model, "cpu"), dataset, preprocessing.with_size(size), limit=cfg.eval_limit,
                      description="eval")
    return scores.miou


def _label_set_name(preprocessing) -> str:
    from edgeseg.data.palettes import LABEL_SETS

    for name, label_set in LABEL_SETS.items():
        if tuple(label_set.classes) == tuple(preprocessing.classes):
            return name
    return "custom"


def _finetune(cfg: PruneConfig, pruned_path: Path, evaluation, original, size, log):
    """Recovery fine-tune of the pruned checkpoint through edgeseg.train (optionally distilled from the
    unpruned model); returns the best fine-tuned model and what to add to the report."""
    from edgeseg.train import TrainConfig, train
    from edgeseg.manifest import portable_path
    from edgeseg.zoo.weights import load_model

    run_dir = pruned_path.with_name(pruned_path.stem + "-finetune")
    train_cfg = TrainConfig(
        model=cfg.model, out_dir=str(run_dir), dataset=cfg.dataset, data_root=cfg.data_root,
        weights=str(pruned_path), epochs=cfg.finetune_epochs, batch_size=cfg.finetune_batch_size,
        lr=cfg.finetune_lr, eval_limit=cfg.eval_limit, threads=cfg.threads, device=cfg.device, seed=cfg.seed,
        distill_from=(cfg.weights or "default") if cfg.distill else None)
    log(f"fine-tuning the pruned model for {cfg.finetune_epochs} epochs in {run_dir}"
        + (" with distillation from the unpruned model" if cfg.distill else ""))
    best = train(train_cfg)
    finetuned = load_model(cfg.model, str(best)).model
    # Relative to the pruned checkpoint's folder (the sidecar's), so a moved bundle's record still resolves.
    extra = {"finetune": {"run_dir": portable_path(run_dir, pruned_path.parent),
                          "best_checkpoint": portable_path(best, pruned_path.parent), "epochs": cfg.finetune_epochs,
                          "distill": cfg.distill, "lr": cfg.finetune_lr}}
    if evaluation is not None:
        extra["miou_finetuned"] = _miou(finetuned, evaluation, original.preprocessing, size, cfg)
        log(f"mIoU after fine-tuning: {extra['miou_finetuned']:.4f}")
    return finetuned, extra
