"""Evaluate any predictor (torch model, ONNX Runtime, TensorRT) on a dataset split with the same metric code.

A predictor maps a 1x3xHxW float32 batch (the preprocessing contract applied) to logits 1xKxhxw or
labels 1xhxw; predictions are compared at the mask's own resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from edgeseg.data.datasets import SegmentationDataset
from edgeseg.data.transforms import resize_pair
from edgeseg.errors import DataError
from edgeseg.metrics import ConfusionMatrix, SegmentationScores
from edgeseg.progress import track
from edgeseg.runners.labels import labels_from_logits
from edgeseg.zoo.contract import Preprocessing

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
    """The confusion matrix of `predict` over the dataset; matrices of disjoint parts merge into the whole's."""
    confusion = ConfusionMatrix(dataset.label_set.num_classes)
    count = images_to_evaluate(dataset, limit)
    for index in track(range(count), description, total=count):
        image, mask = dataset.load(index)
        resized, _ = resize_pair(image, None, preprocessing.input_size)
        output = predict(preprocessing.normalize(resized))
        confusion.update(mask, labels_at(output, mask.shape))
    return confusion


def torch_predictor(model, device: str = "cpu") -> Predictor:
    import torch

    model.eval().to(device)

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(torch.from_numpy(batch).to(device))
        return logits.float().cpu().numpy()

    return predict


@dataclass(frozen=True)
class EvalConfig:
    model: str
    weights: str | None = None
    dataset: str = "camvid"
    split: str = "test"
    data_root: str | None = None
    size: tuple[int, int] | None = None  # (height, width) fed to the model; default: the model's own
    limit: int | None = None
    device: str = "cpu"
    threads: int | None = None


def evaluate_model(cfg: EvalConfig) -> dict:
    """Evaluate a zoo model (with any --weights spec) on a dataset split; returns a JSON-ready report."""
    import torch

    from edgeseg.data.datasets import open_dataset
    from edgeseg.zoo.weights import load_model

    from edgeseg.zoo.registry import get_entry

    get_entry(cfg.model)  # an unknown name fails before any data is read
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dataset = open_dataset(cfg.dataset, cfg.split, cfg.data_root)
    loaded = load_model(cfg.model, cfg.weights, label_set=dataset.label_set)
    preprocessing = loaded.preprocessing.with_size(cfg.size) if cfg.size else loaded.preprocessing
    scores = evaluate(torch_predictor(loaded.model, cfg.device), dataset, preprocessing, limit=cfg.limit,
                      description=f"eval {cfg.model}")
    return {
        "model": cfg.model,
        "weights": loaded.source,
        "dataset": dataset.name,
        "images": min(len(dataset), cfg.limit or len(dataset)),
        "input_size": list(preprocessing.input_size),
        **scores.to_dict(dataset.label_set.classes),
    }
