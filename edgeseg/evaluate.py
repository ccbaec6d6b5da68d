"""Evaluate any predictor (torch model, ONNX Runtime, TensorRT) on a dataset split with the same metric code.

A predictor maps a 1x3xHxW float32 batch (the preprocessing contract applied) to logits 1xKxhxw or
labels 1xhxw; predictions are compared at the mask's own resolution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import cv2
import numpy as np

from edgeseg.data.datasets import SegmentationDataset
from edgeseg.data.transforms import resize_pair
from edgeseg.distributed import shard, sum_across_ranks
from edgeseg.errors import DataError
from edgeseg.fit import fit_frame, output_content, plan_fit, seen_region
from edgeseg.metrics import ConfusionMatrix, SegmentationScores
from edgeseg.progress import track
from edgeseg.runners.labels import labels_from_logits
from edgeseg.zoo.contract import Preprocessing

if TYPE_CHECKING:
    from torch import nn

    from edgeseg.card import ModelCard
    from edgeseg.model_source import ModelSource

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]


def labels_at(output: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Model output (1xKxhxw logits or 1xhxw / hxw labels) -> hxw labels at `size` (height, width)."""
    output = np.asarray(output)
    if output.ndim == 4:
        logits = output[0]
        if logits.shape[1:] != tuple(size):
            # Resize logits, not labels, so upsampling interpolates scores (as torch eval would).
            hwc = np.ascontiguousarray(logits.transpose(1, 2, 0).astype(np.float32))
            resized = cv2.resize(hwc, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            logits = resized.reshape(size[0], size[1], -1).transpose(2, 0, 1)
        return labels_from_logits(logits)
    labels = output[0] if output.ndim == 3 else output
    if labels.shape != tuple(size):
        labels = cv2.resize(labels.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return labels.astype(np.uint8)


def evaluate(predict: Predictor, dataset: SegmentationDataset, preprocessing: Preprocessing,
             limit: int | None = None, description: str = "eval") -> SegmentationScores:
    return confusion_on(predict, dataset, preprocessing, limit, description).scores()


def images_to_evaluate(dataset: SegmentationDataset, limit: int | None) -> int:
    """How many images an evaluation covers; none at all is an error, never an empty (NaN) score."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count < 1:
        raise DataError(f"nothing to evaluate: {dataset.name} has {len(dataset)} images"
                        + (f" and the limit is {limit}" if limit is not None else "")
                        + "; give a limit of at least 1 and a split with readable images")
    return count


def confusion_on(predict: Predictor, dataset: SegmentationDataset, preprocessing: Preprocessing,
                 limit: int | None = None, description: str = "eval") -> ConfusionMatrix:
    """The confusion matrix of `predict` over the dataset; matrices of disjoint parts merge into the whole's.

    Under torchrun (a process group is initialised) each rank evaluates every world_size-th image and the
    integer matrices are summed across ranks: every rank returns the matrix one process would have computed.
    """
    confusion = ConfusionMatrix(dataset.label_set.num_classes)
    count = images_to_evaluate(dataset, limit)
    indices = shard(count)
    log.debug("%s: %d images of %s (this process: %d), fit %s at %s", description, count, dataset.name,
              len(indices), getattr(preprocessing, "fit", "resize"), "x".join(map(str, preprocessing.input_size)))
    for index in track(indices, description, total=len(indices), logger=log):
        image, mask = dataset.load(index)
        if getattr(preprocessing, "fit", "resize") != "resize":  # a card's letterbox / crop, seen as deployed
            placement = plan_fit(image.shape[:2], preprocessing)
            output = output_content(predict(fit_frame(image, placement, preprocessing, "RGB")), placement)
            seen = seen_region(mask, placement)
            confusion.update(seen, labels_at(output, seen.shape))
            continue
        resized, _ = resize_pair(image, None, preprocessing.input_size)
        output = predict(preprocessing.normalize(resized))
        confusion.update(mask, labels_at(output, mask.shape))
    confusion.matrix = sum_across_ranks(confusion.matrix, f"{description}: summing the confusion matrices")
    return confusion



def torch_predictor(model: nn.Module, device: str = "cpu") -> Predictor:
    import torch

    model.eval().to(device)

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(torch.from_numpy(batch).to(device))
        return logits.float().cpu().numpy()

    return predict


@dataclass(frozen=True)
class EvalConfig:
    model: str  # a zoo name, .onnx, bundle, .engine, Hugging Face directory or module:factory (edgeseg.model_source)
    weights: str | None = None
    dataset: str = "camvid"
    split: str = "test"
    data_root: str | None = None
    size: tuple[int, int] | None = None  # (height, width) fed to the model; default: the model's own
    limit: int | None = None
    device: str = "cpu"
    threads: int | None = None
    card: str | None = None  # model card of a foreign model (TOML)
    dist_backend: str = "auto"  # under torchrun: gloo (CPU) or nccl (CUDA); auto picks by device
    dist_timeout_s: float = 600.0  # a rank waiting longer than this for the others gives up with an error


def evaluate_model(cfg: EvalConfig) -> dict:
    """Evaluate a model (zoo name with any --weights spec, or any model edgeseg.model_source resolves) on a dataset
    split; returns a JSON-ready report.

    Under torchrun every rank evaluates its share of the images and returns the same (whole-split) report.
    """
    from edgeseg.data.datasets import open_dataset
    from edgeseg.distributed import process_group, resolve_backend
    from edgeseg.model_source import load_card_option, resolve_source

    source = resolve_source(cfg.model)  # an unknown name fails before any data is read
    card = load_card_option(cfg.card, source)
    resolve_backend(cfg.dist_backend, cfg.device)  # so does a backend that cannot run here
    if source.kind in ("onnx", "bundle", "engine"):
        return _evaluate_runnable(cfg, source, card)
    import torch

    from edgeseg.model_source import load_torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if source.kind == "zoo":
        dataset = open_dataset(cfg.dataset, cfg.split, cfg.data_root)
        loaded = load_torch(source, cfg.weights, label_set=dataset.label_set)
    else:
        loaded = load_torch(source, cfg.weights, card)
        dataset = open_dataset(cfg.dataset, cfg.split, cfg.data_root, label_set=loaded.preprocessing)
    preprocessing = loaded.preprocessing.with_size(cfg.size) if cfg.size else loaded.preprocessing
    with process_group(cfg.device, cfg.dist_backend, cfg.dist_timeout_s) as ctx:
        scores = evaluate(torch_predictor(loaded.model, ctx.device), dataset, preprocessing, limit=cfg.limit,
                          description=f"eval {cfg.model}")
    return {
        "model": cfg.model,
        "weights": loaded.source,
        "dataset": dataset.name,
        "images": min(len(dataset), cfg.limit or len(dataset)),
        "input_size": list(preprocessing.input_size),
        **scores.to_dict(dataset.label_set.classes),
    }


def _evaluate_runnable(cfg: EvalConfig, source: ModelSource, card: ModelCard | None) -> dict:
    """An .onnx (with metadata or a card), a bundle or an engine, run by its runner at its own input size."""
    from edgeseg.data.datasets import open_dataset
    from edgeseg.distributed import process_group
    from edgeseg.errors import UsageError
    from edgeseg.model_source import runnable_path
    from edgeseg.runners.base import open_runner

    if cfg.weights not in (None, "", "default"):
        raise UsageError(f"{cfg.model} carries its weights; drop --weights")
    if cfg.size:
        raise UsageError(f"{cfg.model} runs at the size it was built for; drop --size")
    device = "cpu" if cfg.device == "cpu" else "auto"
    with runnable_path(source, card) as path, open_runner(path, device=device, threads=cfg.threads) as runner:
        preprocessing = runner.preprocessing
        dataset = open_dataset(cfg.dataset, cfg.split, cfg.data_root, label_set=preprocessing)
        # Under torchrun the ranks share the split out over gloo (the runner itself needs no torch otherwise).
        with process_group("cpu", cfg.dist_backend if cfg.dist_backend != "auto" else "gloo", cfg.dist_timeout_s):
            scores = evaluate(runner.infer, dataset, preprocessing, limit=cfg.limit,
                              description=f"eval {source.name}")
        backend = runner.backend
    return {
        "model": cfg.model,
        "weights": str(source.path),
        "backend": backend,
        "dataset": dataset.name,
        "images": min(len(dataset), cfg.limit or len(dataset)),
        "input_size": list(preprocessing.input_size),
        **scores.to_dict(dataset.label_set.classes),
    }
