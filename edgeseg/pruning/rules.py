"""Architecture rules for pruning: which layers keep their outputs, and what the trace cannot see.

The classifier (the layer(s) producing the num_classes logits) keeps its outputs; its inputs follow the layer
before it. It is named once, per zoo entry (`ModelEntry.classifier`), and checked against the model here.

CNNs (torchvision FCN/DeepLabV3/LR-ASPP, smp U-Net/DeepLabV3+, edgeseg's fcn-resnet18) need nothing else.

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
"""

from __future__ import annotations

from typing import Any, Sequence

from edgeseg.arch_spec import is_attention
from edgeseg.errors import EdgesegError, UsageError

# q/k/v projection names of HF attention modules: transformers 5.x, then 4.x.
_QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))


class PruneError(EdgesegError):
    """The model could not be traced or pruned."""


def classifier_layers(model: Any, model_name: str, num_classes: int, names: Sequence[str] | None = None) -> list[str]:
    """The classifier layers: `names`, or the zoo entry's (ModelEntry.classifier), checked: each is in `model`
    and has `num_classes` outputs."""
    from edgeseg.zoo.registry import get_entry

    modules = dict(model.named_modules())
    given = names is not None
    names = list(get_entry(model_name).classifier if names is None else names)
    for name in names:
        layer = modules.get(name)
        outputs = getattr(layer, "out_channels", getattr(layer, "out_features", None))
        if outputs != num_classes and given:
            raise PruneError(f"--classifier {name} has {outputs} outputs, not one per class ({num_classes}): name "
                             f"the layer producing the logits")
        if outputs != num_classes:
            raise PruneError(f"found no classifier in {model_name} ({name} with {num_classes} outputs, which feeds "
                             f"the logits); check that the weights predict {num_classes} classes")
    return sorted(names)


def find_classifier(model: Any, example: Any, num_classes: int, model_name: str) -> list[str]:
    """The classifier of a model outside the zoo, from its graph: the conv or linear layer that runs last among
    those with `num_classes` outputs (the one producing the logits). A forward pass with hooks gives the order in
    which layers run, which registration order need not be."""
    import torch
    from torch import nn

    names = {module: name for name, module in model.named_modules()}
    ran: list[str] = []
    hooks = [module.register_forward_hook(lambda layer, args, output: ran.append(names[layer]))
             for module in model.modules()
             if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))
             and getattr(module, "out_channels", getattr(module, "out_features", None)) == num_classes]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    if not ran:
        raise PruneError(f"found no classifier in {model_name}: no conv or linear layer with {num_classes} outputs "
                         f"(the number of classes) runs in its forward pass; name the layer producing the logits "
                         f"with --classifier LAYER")
    return [ran[-1]]


def resolve_layer_names(model: Any, names: Sequence[str], option: str = "--ignore") -> list[str]:
    """Check --ignore (or --classifier) names against the model; the wrapper's `model.` prefix may be left out."""
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
            raise UsageError(f"{option} {name!r}: the model has no layer of that name; {hint}")
    return resolved


def attention_projections(model: Any) -> dict:
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


def fixed_width_layers(graph: Any, model: Any) -> list[str]:
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
