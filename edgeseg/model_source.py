"""What a `--model` value names, and how each kind is loaded.

  zoo        a zoo name (edgeseg models)
  onnx       an .onnx file: with edgeseg metadata, or with a model card (--card) for a foreign graph
  bundle     a build bundle folder (its best artifact)
  engine     an .engine / .plan with its sidecar
  hf         a local Hugging Face directory (config.json) or hub id of an AutoModelForSemanticSegmentation model
  factory    `package.module:factory` returning a torch nn.Module, with --weights (safetensors or a state_dict)

The torch kinds (zoo, hf, factory) give a LoadedModel that `edgeseg export` turns into ONNX; the others run as
they are. Torch is imported only when a torch kind is loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from edgeseg.bundle_layout import ENGINE_SUFFIXES, ONNX_FILES, PRECISIONS
from edgeseg.errors import UsageError, WeightsError, first_line

if TYPE_CHECKING:  # annotations only: the device side imports this module without torch
    from edgeseg.card import ModelCard
    from edgeseg.data.palettes import LabelSet
    from edgeseg.zoo.contract import Preprocessing
    from edgeseg.zoo.weights import LoadedModel

log = logging.getLogger(__name__)

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
TORCH_KINDS = ("zoo", "hf", "factory")
KIND_WORDS = {"zoo": "a zoo model", "onnx": "an ONNX graph", "bundle": "a build bundle", "engine": "a TensorRT engine",
              "hf": "a Hugging Face model", "factory": "a module:factory model"}


@dataclass(frozen=True)
class ModelSource:
    kind: str
    spec: str
    name: str  # for manifests and default bundle folders
    path: Path | None = None

    @property
    def is_torch(self) -> bool:
        return self.kind in TORCH_KINDS


def resolve_source(spec: str) -> ModelSource:
    """Classify a --model value; an unknown zoo name fails here with the zoo's own suggestions."""
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir():
            if (path / "config.json").is_file():
                return ModelSource("hf", spec, path.resolve().name, path)
            return ModelSource("bundle", spec, path.resolve().name, path)
        if path.suffix == ".onnx":
            return ModelSource("onnx", spec, path.stem, path)
        if path.suffix in ENGINE_SUFFIXES:
            return ModelSource("engine", spec, path.stem, path)
        raise UsageError(f"{path}: cannot use a {path.suffix or 'file without suffix'} as a model; give a zoo name, "
                         f".onnx, .engine, bundle folder, Hugging Face directory or module:factory")
    if spec.startswith((".", "/", "~")):
        raise UsageError(f"{spec} does not exist")
    if _FACTORY.match(spec):
        return ModelSource("factory", spec, spec.split(":")[1])
    if spec.endswith((".onnx", ".engine", ".plan")) or "/" in spec and not _HUB_ID.match(spec):
        raise UsageError(f"{spec} does not exist")
    from edgeseg.zoo.registry import _REGISTRY, _load_families, get_entry

    _load_families()
    if spec in _REGISTRY:
        return ModelSource("zoo", spec, spec)
    if _HUB_ID.match(spec):
        return ModelSource("hf", spec, spec.split("/")[-1])
    get_entry(spec)  # raises the zoo's "unknown model ..., did you mean" line
    raise AssertionError("unreachable")


def torch_source(spec: str) -> ModelSource | None:
    """The ModelSource of a --model value that names a PyTorch model (zoo, Hugging Face, module:factory); None for
    what a runner opens itself (.onnx, OpenVINO .xml, engine, bundle) or refuses in its own words. For the commands
    that run graphs (demo, bench), which export a PyTorch model first."""
    if _FACTORY.match(spec):
        return ModelSource("factory", spec, spec.split(":")[1])
    path = Path(spec).expanduser()
    if path.exists():
        return ModelSource("hf", spec, path.resolve().name, path) if (path / "config.json").is_file() else None
    if spec.startswith((".", "/", "~")) or path.suffix.lower() in (".onnx", ".xml", ".engine", ".plan", ".trt"):
        return None
    source = resolve_source(spec)
    return source if source.is_torch else None


def load_card_option(card: str | Path | None, source: ModelSource | None = None) -> ModelCard | None:
    """The --card file, read and validated; refused for kinds that carry their own contract."""
    from edgeseg.card import load_card

    if card and source is not None and source.kind in ("zoo", "bundle", "engine"):
        raise UsageError(f"--card is for foreign models; {source.spec} is a {source.kind} and carries its contract")
    return load_card(card) if card else None


# ---------------------------------------------------------------------------------------------- runnable kinds


@contextlib.contextmanager
def runnable_path(source: ModelSource, card: ModelCard | None = None) -> Iterator[Path]:
    """A path `open_runner` takes for an onnx/bundle/engine source; a foreign ONNX with a card runs from a carded
    copy in a temporary folder (the user's file is never modified)."""
    if source.kind not in ("onnx", "bundle", "engine"):
        raise UsageError(f"{source.spec} is a {source.kind} model; export it first ('edgeseg export') or build it")
    if source.kind != "onnx" or card is None:
        if source.kind == "onnx":
            require_contract(source.path)
        yield source.path
        return
    from edgeseg.card import write_carded_onnx

    with tempfile.TemporaryDirectory(prefix="edgeseg-card-") as scratch:
        carded = Path(scratch) / source.path.name
        write_carded_onnx(source.path, card, carded, model_name=card.name or source.name)
        yield carded


def require_contract(path: Path) -> None:
    from edgeseg.card import has_contract

    if not has_contract(path):
        raise UsageError(f"{path} carries no edgeseg metadata; give its model card with --card CARD.toml "
                         f"('edgeseg card init {path}' writes one)")


# ---------------------------------------------------------------------------------------------- contracts


def contract_of(source: ModelSource, card: ModelCard | None = None,
                weights: str | None = None) -> tuple[Preprocessing, str, str]:
    """(Preprocessing, output kind, where it came from) for any model edgeseg can load."""
    from edgeseg.zoo.contract import Preprocessing

    if card is not None:
        if source.kind == "onnx":
            from edgeseg.card import check_card

            check_card(card, source.path)
        return card.preprocessing(), card.output, "the model card"
    if source.kind == "zoo":
        from edgeseg.zoo.registry import get_entry

        return get_entry(source.spec).preprocessing(), "logits", "the zoo entry"
    if source.kind in ("onnx", "bundle"):
        from edgeseg.export import read_onnx_metadata
        from edgeseg.runners.ort import METADATA_OUTPUT, METADATA_PREPROCESSING

        path = source.path if source.kind == "onnx" else _bundle_onnx(source.path)
        require_contract(path)
        metadata = read_onnx_metadata(path)
        return (Preprocessing.from_dict(json.loads(metadata[METADATA_PREPROCESSING])),
                metadata.get(METADATA_OUTPUT, "logits"), f"the metadata of {path}")
    if source.kind == "engine":
        from edgeseg.engine.sidecar import read_sidecar

        sidecar = read_sidecar(source.path)
        if not sidecar.get("preprocessing"):
            raise UsageError(f"the sidecar of {source.path} has no preprocessing contract")
        return (Preprocessing.from_dict(sidecar["preprocessing"]), sidecar.get("output", "logits"),
                f"the sidecar of {source.path}")
    if source.kind == "hf":
        directory = _hf_directory(source.spec)
        check_hf_architecture(json.loads((directory / "config.json").read_text()), source.spec)
        return hf_preprocessing(directory, None), "logits", f"{source.spec}"
    raise UsageError(f"{source.spec}: a module:factory model has no contract of its own; give --card CARD.toml")


def _bundle_onnx(bundle: Path) -> Path:
    """An ONNX model of a bundle, whose metadata holds the contract (every precision carries the same one)."""
    found = next((bundle / ONNX_FILES[precision] for precision in PRECISIONS
                  if (bundle / ONNX_FILES[precision]).is_file()), None)
    if found is None:
        raise UsageError(f"{bundle} holds no model.onnx; is it an edgeseg build bundle?")
    return found


# ---------------------------------------------------------------------------------------------- torch kinds


def load_torch(source: ModelSource, weights: str | None = None, card: ModelCard | None = None,
               label_set: LabelSet | None = None) -> LoadedModel:
    """A LoadedModel (edgeseg.zoo.weights) for a zoo, Hugging Face or module:factory source."""
    if source.kind == "zoo":
        from edgeseg.zoo.weights import load_model

        return load_model(source.spec, weights, label_set=label_set)
    if source.kind == "hf":
        if weights not in (None, "", "default"):
            raise UsageError(f"{source.spec} is a Hugging Face model with its own weights; drop --weights")
        return load_hf(source.spec, card)
    if source.kind == "factory":
        return load_factory(source.spec, weights, card)
    raise UsageError(f"{source.spec} is an {source.kind}, not a PyTorch model")


def _hf_directory(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    from edgeseg.zoo.weights import _download_from_hub

    return _download_from_hub(spec)


def hf_preprocessing(directory: Path, card: ModelCard | None) -> Preprocessing:
    """The contract of a Hugging Face segmentation directory: classes from id2label, mean/std and size from its
    preprocessor_config.json; a card, when given, wins."""
    from edgeseg.data.palettes import LABEL_SETS, generic_palette
    from edgeseg.zoo.contract import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    from edgeseg.foreign_checkpoint import PREPROCESSING_FILE

    if card is not None:
        return card.preprocessing()
    if (directory / PREPROCESSING_FILE).is_file():  # written by edgeseg train/prune: the contract it trained with
        return Preprocessing.from_dict(json.loads((directory / PREPROCESSING_FILE).read_text()))
    config = json.loads((directory / "config.json").read_text())
    id2label = config.get("id2label") or {}
    classes = tuple(id2label[k] for k in sorted(id2label, key=int))
    if not classes:
        raise WeightsError(f"{directory}/config.json has no id2label; give the class names with --card")
    known = next((ls for ls in LABEL_SETS.values()
                  if tuple(c.lower() for c in ls.classes) == tuple(c.lower() for c in classes)), None)
    palette = known.palette if known else generic_palette(len(classes))
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, (512, 512)
    processor = directory / "preprocessor_config.json"
    if processor.is_file():
        settings = json.loads(processor.read_text())
        mean = tuple(settings.get("image_mean", mean))
        std = tuple(settings.get("image_std", std))
        raw = settings.get("size")
        if isinstance(raw, dict) and "height" in raw and "width" in raw:
            size = (int(raw["height"]), int(raw["width"]))
        elif isinstance(raw, int):
            size = (raw, raw)
    return Preprocessing(input_size=size, mean=mean, std=std, classes=classes, palette=palette)


def load_hf(source_spec: str, card: ModelCard | None = None) -> LoadedModel:
    """Any AutoModelForSemanticSegmentation checkpoint, wrapped to give logits at the input size; a directory
    edgeseg pruned is rebuilt from its config and architecture spec (edgeseg.foreign_checkpoint)."""
    from edgeseg.lazy import lazy_import
    from edgeseg.zoo.weights import LoadedModel

    directory = _hf_directory(source_spec)
    transformers = lazy_import("transformers")
    config = json.loads((directory / "config.json").read_text())
    check_hf_architecture(config, source_spec)
    hf_logging = transformers.utils.logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a local directory loads in well under a second
    spec = _hf_spec(directory)
    try:
        if spec is None:
            model = transformers.AutoModelForSemanticSegmentation.from_pretrained(str(directory))
        else:
            model = transformers.AutoModelForSemanticSegmentation.from_config(
                transformers.AutoConfig.from_pretrained(str(directory)))
    except (ValueError, OSError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{source_spec} ({config.get('model_type', 'unknown type')}) is not loadable as "
                           f"AutoModelForSemanticSegmentation: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    preprocessing = hf_preprocessing(directory, card)  # after loading: a model of the wrong kind says so first
    if model.config.num_labels != preprocessing.num_classes:
        raise WeightsError(f"{source_spec} predicts {model.config.num_labels} classes but its contract lists "
                           f"{preprocessing.num_classes}")
    weight_file = next((p for p in (directory / "model.safetensors", directory / "pytorch_model.bin") if p.is_file()),
                       None)
    wrapped = _SegmentationOutput.wrap(model.eval(), hf=True)
    if spec is not None:  # a pruned directory (edgeseg prune): resize, then load its weights strictly
        _load_pruned(wrapped, spec, directory / "model.safetensors", str(directory))
    return LoadedModel(wrapped, preprocessing, str(source_spec), checkpoint=weight_file, spec=spec)


# Mask-classification ("universal") segmenters: per-query classes and masks, not per-pixel logits.
_MASK_CLASSIFIERS = ("maskformer", "mask2former", "oneformer", "eomt", "eomt_dinov3", "videomt")
# Architectures torch's TorchScript ONNX exporter cannot write (found by exporting tiny random models of each,
# tests/test_byom_hf_architectures.py); export_model takes them through torch.export instead (opset 18+).
HF_TORCHSCRIPT_FAILURES = {
    "mobilevitv2": "its unfold/fold attention becomes aten::col2im, which the TorchScript exporter cannot write "
                   "(no Col2Im before opset 18; at 18 it fails on the traced output size)",
    "sapiens2": "the TorchScript exporter cannot infer the channels before its head's InstanceNorm",
    "tipsv2_dpt": "traced, its ViT resizes the position embeddings with antialiased bilinear interpolation "
                  "(aten::_upsample_bilinear2d_aa), which the TorchScript exporter cannot write",
}


def check_hf_architecture(config: dict, spec: str) -> None:
    """Refuse, in one line naming the architecture, a Hugging Face model without a per-pixel logits head."""
    model_type = config.get("model_type", "unknown")
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES as names
    except ImportError:  # no transformers: load_hf names the extra to install
        return
    if model_type in names:
        return
    why = ("a mask-classification (universal segmentation) model outputs class queries and mask logits, not "
           "per-pixel logits; " if model_type in _MASK_CLASSIFIERS else "")
    raise WeightsError(f"{spec} ({model_type}) is not loadable as AutoModelForSemanticSegmentation: {why}edgeseg "
                       f"takes Hugging Face models of type {', '.join(sorted(names))}")


def _hf_spec(directory: Path) -> dict | None:
    from edgeseg.foreign_checkpoint import SPEC_FILE

    path = directory / SPEC_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _load_pruned(wrapped: Any, spec: dict, weights: Path, name: str) -> None:
    """Resize edgeseg's wrapper of a freshly built model as the pruning spec says, then load the pruned weights
    into the user's module (strictly: every tensor must fit)."""
    from edgeseg.arch_spec import apply_spec
    from edgeseg.zoo.weights import _read_state_dict

    apply_spec(wrapped, spec, name)
    state = _read_state_dict(weights)
    try:
        wrapped.model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{weights} does not fit the pruned {name}: {first_line(exc)}") from None


class _SegmentationOutput:
    """Built lazily (needs torch): any model's output (tensor, dict with 'out'/'logits', ModelOutput, tuple) ->
    NxKxHxW logits at the input size."""

    @staticmethod
    def wrap(model: Any, hf: bool = False) -> Any:  # a torch.nn.Module
        import torch
        import torch.nn.functional as F

        class SegmentationLogits(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.model = inner
                # read by export_model: why this architecture goes through torch.export (None: TorchScript)
                self.dynamo_export_reason = (HF_TORCHSCRIPT_FAILURES.get(inner.config.model_type) if hf else None)

            def forward(self, pixel_values: Any) -> Any:
                if hf:
                    _check_hf_input(self.model.config, tuple(pixel_values.shape[-2:]))
                out = self.model(pixel_values=pixel_values) if hf else self.model(pixel_values)
                if isinstance(out, dict) and not hasattr(out, "logits"):
                    out = out["out"] if "out" in out else out["logits"]
                elif hasattr(out, "logits"):
                    out = out.logits
                elif isinstance(out, (tuple, list)):
                    out = out[0]
                if out.dim() == 4 and out.shape[-2:] != pixel_values.shape[-2:]:
                    out = F.interpolate(out, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
                return out

        return SegmentationLogits(model).eval()


def _check_hf_input(config: Any, size: tuple[int, int]) -> None:
    """What a Hugging Face architecture cannot run or export, as one line before torch fails deep inside it.
    Plain ints at trace time too (static export shapes)."""
    model_type, (height, width) = config.model_type, (int(size[0]), int(size[1]))
    name = f"{model_type} ({type(config).__name__.removesuffix('Config')})"
    if model_type == "dpt" and height != width:
        raise UsageError(f"{name} runs at square sizes only (its ViT backbone reshapes the patch grid as a "
                         f"square); {height}x{width} asked: give a square --size")
    if model_type == "data2vec-vision":
        side = int(config.image_size)
        if (height, width) != (side, side):
            raise UsageError(f"{name} runs only at its config's image_size {side}x{side} (its head reshapes the "
                             f"patch grid with that size); {height}x{width} asked: give --size {side}x{side}")


def load_factory(spec: str, weights: str | None, card: ModelCard | None) -> LoadedModel:
    """`package.module:factory` -> the user's nn.Module with --weights loaded safely (no pickled code). Weights
    written by edgeseg train/prune carry the contract in their sidecar (then --card may be left out) and, when
    pruned, the architecture spec that resizes the factory's model first."""
    from edgeseg.checkpoint import read_checkpoint_sidecar
    from edgeseg.zoo.contract import Preprocessing
    from edgeseg.zoo.weights import LoadedModel, _read_state_dict

    if weights in (None, "", "default"):
        raise UsageError(f"{spec} needs --weights FILE (.safetensors, or a .pt/.pth state_dict)")
    path = Path(weights).expanduser()
    sidecar = read_checkpoint_sidecar(path) if path.suffix == ".safetensors" and path.is_file() else None
    if sidecar is not None and sidecar.get("model") != spec:
        raise WeightsError(f"{path} is a checkpoint of {sidecar.get('model')}, not of {spec}")
    if card is None and sidecar is None:
        raise UsageError(f"{spec} is a PyTorch model without a contract; give its model card with --card CARD.toml")
    model = build_factory(spec)
    if not path.is_file():
        raise WeightsError(f"weights {weights} do not exist")
    wrapped = _SegmentationOutput.wrap(model)
    preprocessing = card.preprocessing() if card is not None else Preprocessing.from_dict(sidecar["preprocessing"])
    pruned = (sidecar or {}).get("spec")
    if pruned:
        _load_pruned(wrapped, pruned, path, spec)
        return LoadedModel(wrapped.eval(), preprocessing, str(path), checkpoint=path, spec=pruned)
    state = _read_state_dict(path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape: another variant or class count
        raise WeightsError(f"{path} does not fit {spec}(): {str(exc).strip().splitlines()[-1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        missing, unexpected = result.missing_keys, result.unexpected_keys
        first = (f"missing {len(missing)} (first: {missing[0]})" if missing else "") + \
                ("; " if missing and unexpected else "") + \
                (f"unexpected {len(unexpected)} (first: {unexpected[0]})" if unexpected else "")
        raise WeightsError(f"{path} does not fit {spec}(): {first}")
    return LoadedModel(wrapped.eval(), preprocessing, str(path), checkpoint=path)


def build_factory(spec: str) -> Any:
    """The user's freshly built nn.Module from `package.module:factory` (its own initialisation)."""
    module_name, factory_name = spec.split(":")
    if str(Path.cwd()) not in sys.path:  # a user's module beside where they run edgeseg, as `python -m` would
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name} for --model {spec}: {exc}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UsageError(f"{module_name} has no callable {factory_name!r} for --model {spec}")
    model = factory()
    import torch

    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def unpruned_model(source: ModelSource) -> Any:
    """A fresh, unpruned model of a Hugging Face or module:factory source, wrapped as the loaders wrap it: what
    a pruning spec is taken against (and what the loaders resize when they reload it)."""
    if source.kind == "factory":
        return _SegmentationOutput.wrap(build_factory(source.spec))
    from edgeseg.lazy import lazy_import

    transformers = lazy_import("transformers")
    config = transformers.AutoConfig.from_pretrained(str(_hf_directory(source.spec)))
    return _SegmentationOutput.wrap(transformers.AutoModelForSemanticSegmentation.from_config(config), hf=True)


# ---------------------------------------------------------------------------------------------- export first


def export_for_running(source: ModelSource, weights: str | None, card: ModelCard | None, work_dir: Path, *,
                       dataset: str = "camvid", data_root: str | None = None,
                       size: tuple[int, int] | None = None) -> Path:
    """A PyTorch model (zoo, Hugging Face, module:factory) as an ONNX file with its contract in the metadata, in
    `work_dir`, for the commands that run ONNX models (demo, bench): the export stage, with a short parity check
    (on `dataset` images when found). Torch is needed here only because the user gave a torch model."""
    from edgeseg.export import ExportConfig, export_model

    if not source.is_torch:
        raise UsageError(f"{source.spec} is {KIND_WORDS[source.kind]}, not a PyTorch model to export")
    loaded = load_torch(source, weights, card)
    out = Path(work_dir) / f"{source.name}.onnx"
    export_model(loaded, source.name, ExportConfig(size=size, dataset=dataset, data_root=data_root,
                                                   parity_images=2), out)
    log.info(f"exported {source.spec} ({source.kind}) to ONNX first: {out}")
    return out
