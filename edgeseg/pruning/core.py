"""The pruning core: structured channel pruning with Torch-Pruning's DependencyGraph on a model in memory.

`prune_model` removes whole channels (smaller dense layers: faster on every backend, unlike masks), keeping
every coupled layer consistent: Torch-Pruning traces the autograd graph once and groups the parameters that must
lose the same channels (a conv's outputs, its BatchNorm, the next convs' inputs, both sides of a residual add or
a concat). Channel counts are rounded to multiples of `round_to` (default 8) so tensor cores and SIMD kernels
stay efficient; Torch-Pruning rounds the kept count *down*, so narrow layers lose more than the ratio (32 channels
at 0.3 keep 16) and iterative steps compound it: the report gives the GFLOPs actually removed. Which layers are
left alone, and the architecture-specific fixes, are edgeseg.pruning.rules.
The pruned model is run once afterwards; any shape mismatch becomes a clear error, not a wrong model.

Importance: l1 / l2 (group weight magnitude), bn-scale (BatchNorm gamma, Network Slimming; refused for models
whose channels mostly have no BatchNorm, such as SegFormer), taylor (|weight x gradient| over a few real images;
refused without them). Uniform ratio per layer by default; `global_pruning` ranks all groups together.

Spec: `edgeseg.arch_spec` records the new layer sizes as JSON so `build_from_spec` rebuilds the architecture.
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from edgeseg.arch_spec import architecture_spec
from edgeseg.errors import EdgesegError, UsageError, first_line
from edgeseg.lazy import lazy_import
from edgeseg.pruning.config import PruneConfig
from edgeseg.pruning.rules import (PruneError, attention_projections, classifier_layers, fixed_width_layers,
                                   resolve_layer_names, sync_attention_sizes)

if TYPE_CHECKING:
    from edgeseg.zoo.weights import LoadedModel

# One (1x3xHxW float32 image, HxW uint8 mask or None) pair per batch, for the taylor criterion's gradients.
GradientBatch = tuple[np.ndarray, "np.ndarray | None"]


@dataclass(frozen=True)
class PruneReport:
    """What pruning did, and (filled in by the stage) what it cost and gained. `to_dict()` is the `metrics`
    of the pruned checkpoint's sidecar: optional parts appear only when measured, in this order."""

    input_size: list[int]
    params_before: int
    params_after: int
    params_reduction: float
    gflops_before: float
    gflops_after: float
    gflops_reduction: float
    layers_resized: int
    classifier_layers: list[str]
    ignored_layers: list[str]
    fixed_width_layers: list[str]
    attention_modules: list[str]
    prune_seconds: float | None = None
    sparsity_2to4_fraction: float | None = None
    latency: dict[str, Any] = field(default_factory=dict)  # latency_* keys (measure_latency_side_by_side)
    miou_before: float | None = None
    miou_pruned: float | None = None
    miou_skipped: str | None = None  # why mIoU was not measured
    finetune: dict[str, Any] | None = None
    miou_finetuned: float | None = None

    @property
    def miou_drop(self) -> float | None:
        """mIoU points lost from the unpruned model to the final one (fine-tuned, if it was)."""
        if self.miou_before is None:
            return None
        final = self.miou_finetuned if self.miou_finetuned is not None else self.miou_pruned
        return (self.miou_before - final) * 100

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "latency":
                out.update(value)
            elif value is not None or item.default is MISSING:  # what was not measured is left out
                out[item.name] = value
        if self.miou_drop is not None:
            out["miou_drop"] = self.miou_drop
        return out


def prune_model(loaded: LoadedModel, model_name: str, cfg: PruneConfig, example_size: tuple[int, int],
                gradient_batches: Sequence[GradientBatch] | None = None, classifier: Sequence[str] | None = None,
                reference: Any = None) -> tuple[Any, dict, PruneReport]:
    """Prune a copy of `loaded.model`; returns (pruned model, architecture spec, PruneReport). `loaded` is
    unchanged. For a model outside the zoo: `classifier`, the layers producing the logits (a zoo model's entry
    names them), and `reference`, the unpruned model the spec is taken against (a zoo model's is built by name)."""
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
    classifiers = classifier_layers(model, model_name, num_classes, classifier)
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
        raise PruneError(f"Torch-Pruning failed on {model_name} ({type(exc).__name__}: {first_line(exc)}); "
                         f"leave the failing part alone with --ignore LAYER") from exc
    model.eval()
    _check_runs(model, example, num_classes, model_name)

    params_after, gflops_after = _count(model, example_size)
    if params_after == params_before:
        raise UsageError(f"nothing was pruned at --ratio {cfg.ratio} with --round-to {cfg.round_to}: every layer "
                         f"would keep all its channels; raise --ratio or lower --round-to")
    spec = architecture_spec(model_name, model, num_classes, reference)
    report = PruneReport(
        input_size=list(example_size),
        params_before=params_before, params_after=params_after,
        params_reduction=1 - params_after / params_before,
        gflops_before=gflops_before, gflops_after=gflops_after,
        gflops_reduction=1 - gflops_after / gflops_before,
        layers_resized=len(spec["modules"]),
        classifier_layers=classifiers,
        ignored_layers=list(user_ignored),
        fixed_width_layers=fixed_width,
        attention_modules=sorted(name for name, module in modules.items() if module in attention),
    )
    return model, spec, report


def _count(model: Any, size: Any) -> tuple[int, float]:
    from edgeseg.zoo.stats import count_params_and_gflops

    return count_params_and_gflops(model, size)



def _importance(tp: Any, name: str) -> Any:
    importance = tp.importance
    return {"l1": lambda: importance.GroupMagnitudeImportance(p=1),
            "l2": lambda: importance.GroupMagnitudeImportance(p=2),
            "bn-scale": lambda: importance.BNScaleImportance(),
            "taylor": lambda: importance.GroupTaylorImportance()}[name]()


def _trace(tp: Any, model: Any, example: Any, model_name: str) -> Any:
    advice = "its forward pass must be a differentiable torch computation on the input tensor"
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as exc:  # the tracer fails on models it cannot follow, with assorted exception types
        raise PruneError(f"Torch-Pruning cannot trace {model_name} ({type(exc).__name__}: {first_line(exc)}); "
                         f"{advice}") from exc
    if not any(isinstance(module, _prunable_types()) for module in graph.module2node):
        raise PruneError(f"Torch-Pruning cannot trace {model_name}: no conv or linear layer appears in the autograd "
                         f"graph of its output (does it run under no_grad or leave torch?); {advice}")
    return graph


def _prunable_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.modules.conv._ConvNd, nn.Linear)


def _groups(graph: Any, ignored: Any) -> list:
    return list(graph.get_all_groups(ignored_layers=list(ignored), root_module_types=list(_prunable_types())))


def _check_prunable(graph: Any, ignored: Any, cfg: PruneConfig, model_name: str) -> None:
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


def accumulate_gradients(model: Any, batches: Sequence[GradientBatch]) -> None:
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


def _check_runs(model: Any, example: Any, num_classes: int, model_name: str) -> None:
    import torch

    try:
        with torch.no_grad():
            output = model(example)
    except Exception as exc:  # a shape the trace could not see
        raise PruneError(f"the pruned {model_name} no longer runs ({type(exc).__name__}: {first_line(exc)}); "
                         f"leave the failing layer alone with --ignore LAYER") from exc
    expected = (1, num_classes, *example.shape[-2:])
    if tuple(output.shape) != expected:
        raise PruneError(f"the pruned {model_name} outputs {tuple(output.shape)} instead of {expected}")
