"""Stage: torch model -> ONNX, simplified, with the preprocessing contract in the metadata and a parity check.

The parity check runs the exported graph in ONNX Runtime and the torch model on the same real images; a
graph whose argmax disagrees with torch on more than (1 - min_agreement) of the pixels fails the export,
so a broken ONNX file never reaches quantization or an engine build.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeseg.errors import DataError, EdgesegError, UsageError
from edgeseg.graph_rewrites import rewrite_exact
from edgeseg.manifest import Artifact, atomic_path, portable_path, sha256_file, stage_manifest, write_json
from edgeseg.runners.ort import METADATA_OUTPUT, METADATA_PREPROCESSING
from edgeseg.zoo.contract import Preprocessing
from edgeseg.zoo.weights import LoadedModel

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

log = logging.getLogger(__name__)

DYNAMIC_AXES = ("batch", "height", "width")
INPUT_NAME = "pixel_values"


class ExportError(EdgesegError):
    """The model could not be exported, or the exported graph disagrees with torch."""


@dataclass(frozen=True)
class ExportConfig:
    size: tuple[int, int] | None = None  # (height, width); default: the model's contract
    batch: int = 1
    dynamic: tuple[str, ...] = ()  # any of DYNAMIC_AXES; static shapes by default (best for TensorRT)
    opset: int = 17  # 17+ keeps LayerNormalization as one op
    simplify: bool = True
    rewrite: bool = True  # exact graph rewrites after simplify (edgeseg/graph_rewrites.py)
    fuse_argmax: bool = False  # output a uint8 label map instead of logits
    parity_images: int = 8
    min_agreement: float = 0.999
    dataset: str = "camvid"
    data_root: str | None = None
    parity_split: str = "val"
    threads: int | None = None  # CPU threads for torch and ONNX Runtime (default: theirs)

    def __post_init__(self) -> None:
        unknown = set(self.dynamic) - set(DYNAMIC_AXES)
        if unknown:
            raise UsageError(f"unknown dynamic axes {sorted(unknown)}; choose from {', '.join(DYNAMIC_AXES)}")
        if self.opset < 17:
            raise UsageError("--opset must be 17 or newer (older opsets split LayerNorm into overflow-prone ops)")
        if self.batch < 1:
            raise UsageError("--batch must be at least 1")


class _ArgmaxHead:
    """Built lazily (needs torch): logits at input size -> uint8 labels, so the device skips post-processing."""

    @staticmethod
    def wrap(model: nn.Module) -> nn.Module:
        import torch

        class ArgmaxLabels(torch.nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                return self.inner(pixel_values).argmax(dim=1).to(torch.uint8)

        return ArgmaxLabels(model).eval()


def parity_batches(preprocessing: Preprocessing, cfg: ExportConfig) -> tuple[list[np.ndarray], str]:
    """Real images from the dataset for the parity check; synthetic ones (recorded as such) when none is found."""
    from edgeseg.data.datasets import open_dataset
    from edgeseg.data.transforms import resize_pair

    try:
        dataset = open_dataset(cfg.dataset, cfg.parity_split, cfg.data_root, label_set=preprocessing,
                               check_classes=False)
    except DataError as exc:
        warnings.warn(f"parity check on synthetic images: {exc}", stacklevel=2)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (*preprocessing.input_size, 3), dtype=np.uint8)
                  for _ in range(cfg.parity_images)]
        return [preprocessing.normalize(image) for image in images], "synthetic (no dataset found)"
    step = max(1, len(dataset) // cfg.parity_images)
    indices = list(range(0, len(dataset), step))[: cfg.parity_images]
    batches = []
    for index in indices:
        image = resize_pair(dataset.load(index)[0], None, preprocessing.input_size)[0]
        batches.append(preprocessing.normalize(image))
    return batches, f"{dataset.name} images {indices}"


def check_parity(model: nn.Module, onnx_path: Path, batches: list[np.ndarray], fused: bool,
                 threads: int | None = None) -> dict:
    import torch

    from edgeseg.runners.ort import ort_session

    session, _ = ort_session(onnx_path, device="cpu", threads=threads)
    input_name = session.get_inputs()[0].name
    max_abs, agree, total = 0.0, 0, 0
    for batch in batches:
        with torch.inference_mode():
            expected = model(torch.from_numpy(batch)).float().numpy()
        actual = session.run(None, {input_name: batch})[0]
        if fused:
            expected_labels, actual_labels = expected, actual
        else:
            max_abs = max(max_abs, float(np.abs(expected - actual.astype(np.float32)).max()))
            expected_labels, actual_labels = expected.argmax(1), actual.argmax(1)
        agree += int((expected_labels == actual_labels).sum())
        total += expected_labels.size
    return {"images": len(batches), "max_abs_logit_diff": None if fused else max_abs,
            "argmax_agreement": agree / total}


def export_model(loaded: LoadedModel, model_name: str, cfg: ExportConfig, out_path: str | Path) -> Artifact:
    """Export `loaded` to `out_path` (.onnx) plus `out_path`.json; returns the artifact."""
    import onnx
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_path = Path(out_path)
    preprocessing = loaded.preprocessing.with_size(cfg.size) if cfg.size else loaded.preprocessing
    model = loaded.model.eval().cpu()
    if cfg.fuse_argmax:
        model = _ArgmaxHead.wrap(model)
    output_name = "labels" if cfg.fuse_argmax else "logits"
    dummy = torch.zeros(cfg.batch, 3, *preprocessing.input_size)
    axes = {0: "batch", 2: "height", 3: "width"}
    dynamic_axes = {}
    for name in (INPUT_NAME, output_name):
        picked = {index: axis for index, axis in axes.items() if axis in cfg.dynamic}
        if cfg.fuse_argmax and name == output_name:  # labels are NxHxW
            picked = {({0: 0, 2: 1, 3: 2}[index]): axis for index, axis in picked.items()}
        if picked:
            dynamic_axes[name] = picked

    # A model torch's TorchScript exporter cannot write names the reason on its wrapper (model_source's Hugging
    # Face wrapper): it goes through torch.export (needs onnxscript), whose ONNX starts at opset 18.
    dynamo_reason = getattr(loaded.model, "dynamo_export_reason", None)
    opset = max(cfg.opset, 18) if dynamo_reason else cfg.opset
    if dynamo_reason:
        from edgeseg.lazy import lazy_import

        lazy_import("onnxscript", "torch")
        log.info(f"exporting {model_name} with torch.export at opset {opset}: {dynamo_reason}")
    with tempfile.TemporaryDirectory(prefix="edgeseg-export-") as scratch:
        raw_path = Path(scratch) / "raw.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                extra = dict(verbose=False, external_data=False) if dynamo_reason else dict(do_constant_folding=True)
                torch.onnx.export(model, (dummy,), str(raw_path), dynamo=bool(dynamo_reason), opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[output_name],
                                  dynamic_axes=dynamic_axes or None, **extra)
        except Exception as exc:  # torch raises many types here (unsupported op, tracing errors)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"ONNX export of {model_name} failed: {reason}") from exc
        graph = onnx.load(str(raw_path))
        simplify_note, rewrites = "off", []
        if cfg.simplify:
            graph, simplify_note = _simplify(graph)
        if cfg.simplify and cfg.rewrite:  # exact rewrites, checked by the parity check below like the rest
            graph, rewrites = rewrite_exact(graph)
        graph.producer_name = "edgeseg"
        _set_metadata(graph, {METADATA_PREPROCESSING: preprocessing.to_json(), METADATA_OUTPUT: output_name,
                              "edgeseg.model": model_name, "edgeseg.precision": "fp32"})
        onnx.checker.check_model(graph)
        checked_path = Path(scratch) / "model.onnx"
        onnx.save(graph, str(checked_path))
        batches, parity_source = parity_batches(preprocessing, cfg)
        if "batch" not in cfg.dynamic and cfg.batch != 1:
            batches = [np.repeat(b, cfg.batch, axis=0) for b in batches]
        parity = check_parity(model, checked_path, batches, cfg.fuse_argmax, cfg.threads)
        parity["source"] = parity_source
        parity["min_agreement"] = cfg.min_agreement
        parity["passed"] = parity["argmax_agreement"] >= cfg.min_agreement
        if not parity["passed"]:
            raise ExportError(f"parity check failed: ONNX Runtime agrees with torch on "
                              f"{parity['argmax_agreement']:.4%} of pixels (< {cfg.min_agreement:.2%}); "
                              f"the graph was not written")
        with atomic_path(out_path) as tmp:
            tmp.write_bytes(checked_path.read_bytes())

    inputs = {"weights": loaded.input_record(base=out_path.parent)}
    manifest = stage_manifest(
        "export", inputs=inputs, settings=cfg,
        checks={"parity": parity},
        libraries=("torch", "onnx", "onnxruntime", "onnxslim", "transformers", "torchvision",
                   "segmentation-models-pytorch"))
    manifest.update({"model": model_name, "weights": _weights_source(loaded.source, out_path.parent),
                     "precision": "fp32", "output": output_name,
                     "simplify": simplify_note, "rewrites": rewrites, "preprocessing": preprocessing.to_dict(),
                     "exporter": {"name": "torch.export" if dynamo_reason else "torchscript", "opset": opset},
                     "artifact": {"path": out_path.name, "sha256": sha256_file(out_path),
                                  "bytes": out_path.stat().st_size},
                     "spec": loaded.spec})
    write_json(out_path.with_name(out_path.name + ".json"), manifest)
    return Artifact(out_path, manifest)


def _simplify(graph: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """onnxslim folds constants and removes shape plumbing; a failure keeps the raw graph and says so."""
    try:
        import onnxslim

        return onnxslim.slim(graph), "onnxslim " + onnxslim.__version__
    except Exception as exc:  # simplifiers fail on exotic graphs; the raw graph is still correct
        warnings.warn(f"graph simplification failed, keeping the unsimplified graph: {exc}", stacklevel=2)
        return graph, f"failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def _set_metadata(graph: onnx.ModelProto, values: dict[str, str]) -> None:
    existing = {prop.key: prop for prop in graph.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends from protobuf
        raise UsageError(f"{path} is not a valid ONNX file ({type(exc).__name__})") from exc
    return {prop.key: prop.value for prop in graph.metadata_props}


def onnx_preprocessing(path: str | Path) -> Preprocessing:
    metadata = read_onnx_metadata(path)
    if METADATA_PREPROCESSING not in metadata:
        raise UsageError(f"{path} carries no edgeseg preprocessing metadata; give its model card with --card "
                         f"CARD.toml ('edgeseg card init {path}' writes one), or export it with 'edgeseg export'")
    return Preprocessing.from_dict(json.loads(metadata[METADATA_PREPROCESSING]))


def _weights_source(source: str | None, base: Path) -> str | None:
    """The weights spec as given, except a file inside the manifest's folder (a bundle's pruned checkpoint),
    which is recorded relative to it so the moved bundle still names it."""
    if source and Path(source).exists():
        return portable_path(source, base)
    return source
