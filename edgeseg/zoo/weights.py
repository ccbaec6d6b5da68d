"""Resolve a --weights spec and load it into a zoo model, with errors that name the offending layer.

Accepted specs, tried in this order:
  (none)            the CamVid checkpoint bundled with edgeseg for this model, if there is one
  random            explicit random initialisation
  NAME              a named weight of the model, e.g. `cityscapes` (SegFormer, hub) or `voc` (torchvision)
  PATH              an edgeseg checkpoint (.safetensors + .json), a plain .safetensors / .pth / .pt state_dict
                    (torch.load with weights_only=True), or a Hugging Face-format directory (config.json + weights)
  ORG/REPO, hf:ORG/REPO   a Hugging Face hub repository, downloaded and cached by huggingface_hub
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.checkpoint import read_checkpoint_sidecar
from edgeseg.data.palettes import LABEL_SETS, LabelSet, generic_palette
from edgeseg.errors import WeightsError
from edgeseg.manifest import input_record
from edgeseg.zoo.contract import Preprocessing
from edgeseg.zoo.registry import ModelEntry, get_entry

if TYPE_CHECKING:
    from torch import nn

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    model: nn.Module  # eval mode
    preprocessing: Preprocessing
    source: str  # what the weights were, for manifests
    spec: dict | None = None  # architecture spec of a pruned model
    checkpoint: Path | None = None  # the file the weights came from, if any
    new_head: dict | None = None  # set when the classifier was replaced for another label set (replace_head)
    untrained: tuple[str, ...] = ()  # layers the weights did not cover (randomly initialised)

    def input_record(self, base: str | Path | None = None) -> dict:
        """What the weights were, for manifests and recipes: the file (path, sha256, bytes; relative to `base`,
        the manifest's folder, when inside it) or the source, and the replaced classifier if there was one."""
        record = input_record(self.checkpoint, base) if self.checkpoint else {"source": self.source}
        if self.checkpoint and Path(self.checkpoint).resolve().parent == BUNDLED_DIR:
            # the same file on every install: name it inside the package, not by this machine's path
            record["path"] = f"edgeseg/weights/{Path(self.checkpoint).name}"
        return {**record, "new_head": self.new_head} if self.new_head else record


def bundled_weights(name: str) -> Path | None:
    path = BUNDLED_DIR / f"{name}.safetensors"
    return path if path.is_file() else None


def default_weights_label(entry: ModelEntry) -> str:
    named = ", ".join(f"{name} (download)" for name in entry.named_weights)
    if bundled_weights(entry.name):
        return "camvid (bundled)" + (f"; {named}" if named else "")
    return named or "-"


def load_model(name: str, weights: str | None = None, *, label_set: LabelSet | None = None,
               new_head: bool = False) -> LoadedModel:
    """Build model `name` and load `weights` into it. `label_set`, when given, is what the caller will
    evaluate or train on: weights predicting another number of classes, or missing layers (an encoder-only
    checkpoint), are refused, unless `new_head` (fine-tuning) asks for those layers to start afresh."""
    loaded = _load_weights(get_entry(name), weights, label_set)
    spec = weights or loaded.source
    other_classes = label_set is not None and loaded.preprocessing.num_classes != label_set.num_classes
    if new_head and (other_classes or loaded.untrained):
        return replace_head(loaded, name, label_set or get_entry(name).label_set)
    if loaded.untrained:
        raise WeightsError(
            f"weights {spec} have no values for {len(loaded.untrained)} layers (first: {loaded.untrained[0]}), "
            f"e.g. an encoder-only checkpoint; fine-tune them with 'edgeseg train --weights {spec} --new-head'")
    if not other_classes:
        return loaded
    raise WeightsError(
        f"weights {spec} predict {loaded.preprocessing.num_classes} classes but {label_set.name} has "
        f"{label_set.num_classes}; use weights trained on {label_set.name}, or fine-tune them with "
        f"'edgeseg train --weights {spec} --new-head'")


def replace_head(loaded: LoadedModel, name: str, label_set: LabelSet) -> LoadedModel:
    """The same network for another label set: every weight is kept except the classifier's (the entry's
    `classifier` layers), which start afresh when the class count changes. What was replaced is recorded."""
    if loaded.spec:
        raise WeightsError(f"{loaded.source} is a pruned checkpoint; replace the head before pruning, not after")
    entry = get_entry(name)
    fresh = _build(entry, label_set.num_classes)
    old_state, fresh_state = loaded.model.state_dict(), fresh.state_dict()
    if set(old_state) != set(fresh_state):
        raise WeightsError(f"{loaded.source} does not have the layout of {name}; cannot replace its head")
    replaced = sorted(key for key, tensor in fresh_state.items() if tuple(old_state[key].shape) != tuple(tensor.shape))
    old_count = loaded.preprocessing.num_classes
    for key in replaced:  # only the classifier's class count may differ, or this is another variant
        if (not in_layers(key, entry.classifier) or old_state[key].shape[1:] != fresh_state[key].shape[1:]
                or old_state[key].shape[0] != old_count):
            raise WeightsError(f"layer {key} has shape {tuple(old_state[key].shape)} in {loaded.source} but "
                               f"{tuple(fresh_state[key].shape)} in {name}: the weights belong to another variant")
    fresh.load_state_dict({key: old_state[key] for key in fresh_state if key not in replaced}, strict=False)
    preprocessing = dataclasses.replace(loaded.preprocessing, classes=label_set.classes,
                                        palette=label_set.palette)
    head = {"from_classes": old_count, "to_classes": label_set.num_classes,
            "label_set": label_set.name, "reinitialised": replaced}
    if loaded.untrained:
        head["not_in_weights"] = list(loaded.untrained)
    return dataclasses.replace(loaded, model=fresh.eval(), preprocessing=preprocessing, new_head=head, untrained=())


def _load_weights(entry: ModelEntry, weights: str | None, label_set: LabelSet | None) -> LoadedModel:
    name = entry.name
    if weights in (None, "", "default"):
        bundled = bundled_weights(name)
        if bundled is None:
            named = ", ".join(["random", *entry.named_weights]) or "random"
            raise WeightsError(f"model {name} has no bundled weights; pass --weights with a checkpoint path, "
                               f"a Hugging Face repo id or one of: {named}")
        weights = str(bundled)
    if weights == "random":
        labels = label_set or entry.label_set
        model = _build(entry, labels.num_classes)
        return LoadedModel(model.eval(), entry.preprocessing(labels), "random")
    if weights in entry.named_weights:
        weights = entry.named_weights[weights]
    if weights.startswith("torchvision:"):
        return _load_torchvision(entry, weights.split(":", 1)[1])
    path = Path(weights).expanduser()
    if path.exists():
        return _load_hf_dir(entry, path) if path.is_dir() else _load_file(entry, path, label_set)
    hub_id = weights[3:] if weights.startswith("hf:") else weights
    if weights.startswith("hf:") or _HUB_ID.match(weights):
        return _load_hf_dir(entry, _download_from_hub(hub_id), source=f"hf:{hub_id}")
    known = ", ".join(["random", *entry.named_weights])
    raise WeightsError(f"weights {weights!r}: no such file, not a hub id (ORG/NAME) and not a named weight of "
                       f"{name} (known: {known})")


def _build(entry: ModelEntry, num_classes: int) -> nn.Module:
    return entry.builder(num_classes)


def _load_file(entry: ModelEntry, path: Path, label_set: LabelSet | None) -> LoadedModel:
    sidecar = read_checkpoint_sidecar(path) if path.suffix == ".safetensors" else None
    state = _read_state_dict(path)
    spec = None
    if sidecar is not None:
        if sidecar["model"] != entry.name:
            raise WeightsError(f"{path} is a {sidecar['model']} checkpoint, not {entry.name}; "
                               f"use --model {sidecar['model']}")
        preprocessing = Preprocessing.from_dict(sidecar["preprocessing"])
        spec = sidecar.get("spec")
    else:
        labels = label_set or entry.label_set
        preprocessing = entry.preprocessing(labels)
        classes = _infer_num_classes(entry, state)
        if classes is not None and classes != labels.num_classes:
            preprocessing = _numbered_preprocessing(entry, classes)
    if spec:
        from edgeseg.arch_spec import build_from_spec  # pruned architectures

        model = build_from_spec(entry.name, spec)
    else:
        model = _build(entry, preprocessing.num_classes)
    _load_state(model, state, path.name, entry.name)
    return LoadedModel(model.eval(), preprocessing, str(path), spec=spec, checkpoint=path)


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from exc
    if path.suffix in (".pth", ".pt", ".bin"):
        import pickle

        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise WeightsError(f"{path} holds more than tensors (a pickled module?) and is not loaded for safety; "
                               f"save model.state_dict() instead") from exc
        except (RuntimeError, OSError, EOFError) as exc:
            raise WeightsError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
        for key in ("state_dict", "model", "model_state_dict"):  # common training-script wrappers
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise WeightsError(f"{path} does not hold a state_dict")
        return state
    raise WeightsError(f"{path}: unsupported weights file type {path.suffix!r}; use .safetensors, .pth or .pt")


def _align_keys(state: dict, model_keys: set[str]) -> dict:
    """Map a foreign state_dict's key names onto the wrapped model's (prefix `model.`, DataParallel's `module.`)."""
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    direct = len(model_keys & state.keys())
    prefixed = {f"model.{k}": v for k, v in state.items()}
    return prefixed if len(model_keys & prefixed.keys()) > direct else state


def _load_state(model: nn.Module, state: dict, source: str, model_name: str) -> None:
    model_state = model.state_dict()
    state = _align_keys(state, set(model_state))
    for key, tensor in state.items():
        if key in model_state and tuple(model_state[key].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"layer {key} has shape {tuple(tensor.shape)} in {source} but {tuple(model_state[key].shape)} in "
                f"{model_name}: the weights belong to another variant or number of classes")
    missing = [k for k in model_state if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in model_state]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} layers missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise WeightsError(f"{source} does not fit {model_name}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)


def _infer_num_classes(entry: ModelEntry, state: dict) -> int | None:
    """The class count of a raw state_dict: the outputs of the entry's classifier, so the error names the real
    cause. The state may lack the wrapper's `model.` prefix or carry DataParallel's `module.`."""
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    for layer in entry.classifier:
        for key in (f"{layer}.weight", f"{layer.removeprefix('model.')}.weight"):
            tensor = state.get(key)
            if tensor is not None and tensor.ndim >= 1:
                return int(tensor.shape[0])
    return None


def in_layers(key: str, layers: tuple[str, ...]) -> bool:
    """Whether state_dict `key` is a parameter or buffer of one of `layers` (module names)."""
    return any(key.startswith(layer + ".") for layer in layers)


def _numbered_preprocessing(entry: ModelEntry, num_classes: int) -> Preprocessing:
    labels = LabelSet(f"{num_classes}-classes", tuple(f"class_{i}" for i in range(num_classes)),
                      generic_palette(num_classes))
    return entry.preprocessing(labels)


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise WeightsError("downloading from the hub needs huggingface_hub: pip install huggingface_hub") from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "pytorch_model.bin"]))
    except Exception as exc:  # the hub raises many types (offline, 404, gated, timeouts); all mean the same here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot download {repo_id} from the Hugging Face hub ({type(exc).__name__}: {reason}); "
                           f"check the id and your connection, or pass a local directory") from exc


def _load_hf_dir(entry: ModelEntry, directory: Path, source: str | None = None) -> LoadedModel:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{directory} is not a Hugging Face model directory (no config.json)")
    config = json.loads(config_path.read_text())
    if entry.library != "transformers" or config.get("model_type") != "segformer":
        raise WeightsError(f"{directory} holds a {config.get('model_type', 'unknown')} model; "
                           f"{entry.name} loads only SegFormer directories")
    weight_files = [directory / "model.safetensors", directory / "pytorch_model.bin"]
    weight_file = next((p for p in weight_files if p.is_file()), None)
    if weight_file is None:
        raise WeightsError(f"{directory} has no model.safetensors or pytorch_model.bin")
    id2label = config.get("id2label") or {}
    classes = tuple(id2label[k] for k in sorted(id2label, key=int)) if id2label else ()
    num_classes = len(classes) or int(config.get("num_labels", 0))
    known = next((ls for ls in LABEL_SETS.values() if tuple(c.lower() for c in ls.classes) ==
                  tuple(c.lower() for c in classes)), None)
    labels = known or LabelSet("custom", classes or tuple(f"class_{i}" for i in range(num_classes)),
                               generic_palette(num_classes))
    preprocessing = entry.preprocessing(labels)
    processor = directory / "preprocessor_config.json"
    if processor.is_file():
        settings = json.loads(processor.read_text())
        preprocessing = Preprocessing.from_dict({**preprocessing.to_dict(),
                                                 "mean": settings.get("image_mean", preprocessing.mean),
                                                 "std": settings.get("image_std", preprocessing.std)})
    model, untrained = _from_pretrained_segformer(entry, directory)
    return LoadedModel(model.eval(), preprocessing, source or str(directory), checkpoint=weight_file,
                       untrained=untrained)


def _from_pretrained_segformer(entry: ModelEntry, directory: Path) -> tuple[nn.Module, tuple[str, ...]]:
    """(model, names of the layers the directory had no weights for). Let transformers read its own directory:
    it renames legacy checkpoint keys (the official nvidia/* checkpoints predate its current module names), which a
    plain state_dict load would miss."""
    from transformers import SegformerForSemanticSegmentation

    from edgeseg.zoo.segformer import variant_of
    from edgeseg.zoo.wrappers import UpsampleLogits

    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # what it would warn about (missing layers) is returned and handled below
    hf_logging.disable_progress_bar()  # one local directory loads in well under a second
    try:
        hf_model, loading = SegformerForSemanticSegmentation.from_pretrained(
            str(directory), local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{directory} cannot be loaded as a SegFormer: {str(exc).splitlines()[0]}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    variant = variant_of(hf_model.config)
    if f"segformer-{variant}" != entry.name:
        raise WeightsError(f"{directory} holds segformer-{variant} (hidden sizes {hf_model.config.hidden_sizes}, "
                           f"depths {hf_model.config.depths}), not {entry.name}; use --model segformer-{variant}")
    # transformers initialises layers the checkpoint lacks (the decode head of an encoder-only MiT checkpoint)
    # at random and only warns: keep their names, so that load_model refuses them unless fine-tuning.
    missing = sorted(key for key in loading["missing_keys"] if not key.endswith("num_batches_tracked"))
    return UpsampleLogits(hf_model, output_key="pixel_values"), tuple(missing)


def _load_torchvision(entry: ModelEntry, function_name: str) -> LoadedModel:
    from torchvision.models import get_model_weights

    official = get_model_weights(function_name).DEFAULT
    try:
        state = official.get_state_dict(progress=False)
    except Exception as exc:  # URLError, timeouts, HTTP errors: all mean "could not download"
        raise WeightsError(f"cannot download torchvision weights {official} ({type(exc).__name__}: {exc}); "
                           f"download them where there is internet and pass the .pth file") from exc
    state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}  # built with aux_loss=False
    categories = tuple(official.meta["categories"])
    labels = LabelSet("voc", categories, generic_palette(len(categories)))
    model = _build(entry, len(categories))
    _load_state(model, state, str(official), entry.name)
    preprocessing = entry.preprocessing(labels)
    return LoadedModel(model.eval(), preprocessing, f"torchvision:{official}")
