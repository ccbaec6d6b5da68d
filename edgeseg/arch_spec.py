"""Architecture specs: how a pruned model differs from its zoo model, as plain JSON, never a pickled module.

A spec lists, for every layer whose shape differs from the freshly built zoo model, its new sizes:

    {"format": "edgeseg-arch-spec", "version": 1, "num_classes": 11,
     "modules": {"model.decode_head.linear_fuse": {"kind": "conv", "in_channels": 512, "out_channels": 128,
                                                   "groups": 1},
                 "model.segformer.stages.0.blocks.0.attention": {"kind": "attention", "num_attention_heads": 1,
                                                                 "head_dim": 16}, ...},
     "sparsity": "2:4"}                        # optional: the weights follow a 2:4 pattern (kept when fine-tuning)

The spec is taken by comparing the pruned model with the zoo model built on the meta device (shapes only, no
memory), so pruning an already pruned model still yields a spec relative to the zoo. `build_from_spec` builds the
zoo model on the CPU, resizes the listed layers in place (same classes, same hooks, only new parameter shapes) and
patches attention attributes; a strict state_dict load then fills the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeseg.errors import WeightsError

if TYPE_CHECKING:
    from torch import nn

SPEC_FORMAT = "edgeseg-arch-spec"
SPEC_VERSION = 1

# Integer attributes attention modules use to reshape q/k/v: transformers 5.x (head_dim) and 4.x
# (attention_head_size, all_head_size) spell them differently; whichever a module has is recorded.
ATTENTION_ATTRIBUTES = ("num_attention_heads", "head_dim", "attention_head_size", "all_head_size")


def is_attention(module: nn.Module) -> bool:
    return isinstance(getattr(module, "num_attention_heads", None), int) and any(
        isinstance(getattr(module, name, None), int) for name in ATTENTION_ATTRIBUTES[1:])


def describe(module: nn.Module) -> dict | None:
    """The shape-defining sizes of one layer, or None for layers that hold no resizable parameters."""
    from torch import nn

    if isinstance(module, nn.modules.conv._ConvNd):
        return {"kind": "conv", "in_channels": module.in_channels, "out_channels": module.out_channels,
                "groups": module.groups}
    if isinstance(module, nn.Linear):
        return {"kind": "linear", "in_features": module.in_features, "out_features": module.out_features}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"kind": "batchnorm", "num_features": module.num_features}
    if isinstance(module, nn.LayerNorm):
        return {"kind": "layernorm", "normalized_shape": list(module.normalized_shape)}
    if isinstance(module, nn.GroupNorm):
        return {"kind": "groupnorm", "num_groups": module.num_groups, "num_channels": module.num_channels}
    if isinstance(module, nn.PReLU):
        return {"kind": "prelu", "num_parameters": module.num_parameters}
    if is_attention(module):
        return {"kind": "attention", **{name: getattr(module, name) for name in ATTENTION_ATTRIBUTES
                                        if isinstance(getattr(module, name, None), int)}}
    return None


def _own_shapes(module: nn.Module) -> dict[str, tuple]:
    tensors = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
    return {name: tuple(tensor.shape) for name, tensor in tensors.items() if tensor is not None}


def reference_model(model_name: str, num_classes: int) -> nn.Module:
    """The unpruned zoo model on the meta device: every shape, no memory, no initialisation cost."""
    import torch

    from edgeseg.zoo.registry import create_model

    with torch.device("meta"):
        return create_model(model_name, num_classes)


def architecture_spec(model_name: str, model: nn.Module, num_classes: int,
                      reference: nn.Module | None = None) -> dict:
    """The spec of `model` relative to the zoo model `model_name`, or to `reference` (the unpruned model a
    Hugging Face or module:factory model rebuilds from); refuses layers it could not rebuild."""
    reference = dict((reference if reference is not None else reference_model(model_name, num_classes))
                     .named_modules())
    changed = {}
    for name, module in model.named_modules():
        original = reference.get(name)
        if original is None:
            raise WeightsError(f"{model_name} has no layer {name}: only models pruned from the zoo model have a spec")
        now, before = describe(module), describe(original)
        if now != before:
            changed[name] = now
        elif _own_shapes(module) != _own_shapes(original):
            # A layer type the spec cannot describe changed shape: the checkpoint could never be rebuilt.
            raise WeightsError(f"layer {name} ({type(module).__name__}) of {model_name} changed shape in a way an "
                               f"architecture spec cannot record; add it to --ignore and prune again")
    return {"format": SPEC_FORMAT, "version": SPEC_VERSION, "num_classes": num_classes, "modules": changed}


def build_from_spec(model_name: str, spec: dict) -> nn.Module:
    """Build zoo model `model_name` with the layer sizes in `spec` (random weights; load a state_dict next)."""
    from edgeseg.zoo.registry import create_model

    check_spec(spec)
    return apply_spec(create_model(model_name, int(spec["num_classes"])), spec, model_name)


def check_spec(spec: dict) -> None:
    if spec.get("format") != SPEC_FORMAT or spec.get("version", 0) > SPEC_VERSION:
        raise WeightsError(f"unsupported architecture spec (format {spec.get('format')!r}, version "
                           f"{spec.get('version')}); it was written by another edgeseg, upgrade")


def apply_spec(model: nn.Module, spec: dict, model_name: str) -> nn.Module:
    """Resize the layers of the freshly built, unpruned `model` as `spec` lists (in place); returns `model`."""
    check_spec(spec)
    modules = dict(model.named_modules())
    for name, sizes in spec["modules"].items():
        if name not in modules:
            raise WeightsError(f"the spec resizes layer {name}, which {model_name} does not have; the checkpoint "
                               f"was pruned from another version of the model")
        resize(modules[name], sizes, name)
    return model


def resize(module: nn.Module, sizes: dict, name: str = "") -> None:
    """Give `module` the sizes in `sizes` (a `describe` dict): new, freshly initialised parameters of those shapes."""
    import torch
    from torch import nn

    kind = sizes["kind"]
    expected = (describe(module) or {}).get("kind")
    if expected != kind:
        raise WeightsError(f"the spec describes layer {name} as {kind} but the model has a "
                           f"{type(module).__name__} there; the checkpoint belongs to another model")
    factory = {"dtype": torch.float32}
    if kind == "conv":
        module.in_channels, module.out_channels, module.groups = (
            sizes["in_channels"], sizes["out_channels"], sizes["groups"])
        kernel = tuple(module.kernel_size)
        if module.transposed:  # ConvTranspose weights are (in, out/groups, k...)
            shape = (module.in_channels, module.out_channels // module.groups, *kernel)
        else:
            shape = (module.out_channels, module.in_channels // module.groups, *kernel)
        module.weight = nn.Parameter(torch.empty(shape, **factory))
        if module.bias is not None:
            module.bias = nn.Parameter(torch.empty(module.out_channels, **factory))
        module.reset_parameters()
    elif kind == "linear":
        module.in_features, module.out_features = sizes["in_features"], sizes["out_features"]
        module.weight = nn.Parameter(torch.empty(module.out_features, module.in_features, **factory))
        if module.bias is not None:
            module.bias = nn.Parameter(torch.empty(module.out_features, **factory))
        module.reset_parameters()
    elif kind == "batchnorm":
        count = module.num_features = sizes["num_features"]
        if module.affine:
            module.weight = nn.Parameter(torch.empty(count, **factory))
            module.bias = nn.Parameter(torch.empty(count, **factory))
        if module.track_running_stats:
            module.running_mean = torch.zeros(count)
            module.running_var = torch.ones(count)
        module.reset_parameters()
    elif kind == "layernorm":
        module.normalized_shape = tuple(sizes["normalized_shape"])
        if module.weight is not None:
            module.weight = nn.Parameter(torch.empty(module.normalized_shape, **factory))
        if module.bias is not None:
            module.bias = nn.Parameter(torch.empty(module.normalized_shape, **factory))
        module.reset_parameters()
    elif kind == "groupnorm":
        module.num_groups, module.num_channels = sizes["num_groups"], sizes["num_channels"]
        if module.affine:
            module.weight = nn.Parameter(torch.empty(module.num_channels, **factory))
            module.bias = nn.Parameter(torch.empty(module.num_channels, **factory))
        module.reset_parameters()
    elif kind == "prelu":
        module.num_parameters = sizes["num_parameters"]
        module.weight = nn.Parameter(torch.full((module.num_parameters,), 0.25))
    elif kind == "attention":
        for attribute in ATTENTION_ATTRIBUTES:
            if attribute in sizes:
                setattr(module, attribute, int(sizes[attribute]))
    else:
        raise WeightsError(f"the spec describes layer {name} with an unknown kind {kind!r}; upgrade edgeseg")
