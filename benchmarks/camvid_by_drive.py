"""CamVid mIoU per drive: how much of a checkpoint's score transfers to a drive it never trained on.

CamVid's splits are cut from four drives: train = 0001TP + 0006R0 + 0016E5, val = 0016E5 only, test = 0001TP +
Seq05VD. Validation therefore measures a drive the model trained on, and 171 of the 233 test frames come from a
drive it never saw. This script scores each drive separately (and the whole split, from the merged confusion
matrices, which equals `edgeseg eval`) and writes the numbers to benchmarks/results/camvid_by_drive.json.

    EDGESEG_DATA=../shared/data python benchmarks/camvid_by_drive.py segformer-b0 deeplabv3plus-mobilenetv2 \
        --weights segformer-b0=runs/segformer-b0-kd/best.safetensors --threads 2
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from edgeseg.data.datasets import camvid, drive_of, resolve_data_root
from edgeseg.evaluate import confusion_on, torch_predictor
from edgeseg.manifest import now_utc, portable_path, read_json, write_json
from edgeseg.metrics import ConfusionMatrix
from edgeseg.zoo.weights import load_model

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "camvid_by_drive.json"


def scores_by_drive(model: str, weights: str | None, splits: tuple[str, ...], data_root) -> dict:
    loaded = load_model(model, weights)
    predict = torch_predictor(loaded.model)
    # bundled weights as edgeseg/weights/..., never as this checkout's folder
    result = {"weights": portable_path(loaded.source, REPO), "splits": {}}
    for split in splits:
        dataset = camvid(data_root, split)
        by_drive = defaultdict(list)
        for index, sample in enumerate(dataset.samples):
            by_drive[drive_of(sample.image)].append(index)
        whole = ConfusionMatrix(dataset.label_set.num_classes)
        drives = {}
        for drive, indices in sorted(by_drive.items()):
            confusion = confusion_on(predict, dataset.subset(indices, f"{dataset.name}/{drive}"),
                                     loaded.preprocessing, description=f"{model} {split} {drive}")
            whole.merge(confusion)
            drives[drive] = {"images": len(indices), **_summary(confusion, dataset.label_set.classes)}
        result["splits"][split] = {"images": len(dataset), **_summary(whole, dataset.label_set.classes),
                                   "drives": drives}
    return result


def _summary(confusion: ConfusionMatrix, classes) -> dict:
    scores = confusion.scores().to_dict(classes)
    return {key: scores[key] for key in ("miou", "pixel_accuracy", "per_class_iou")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--weights", action="append", default=[], metavar="MODEL=SPEC",
                        help="weights for one model (default: its bundled checkpoint); repeatable")
    parser.add_argument("--splits", default="val,test")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    weights = dict(item.split("=", 1) for item in args.weights)
    data_root = resolve_data_root(None)
    results = read_json(args.out) if args.out.is_file() else {"schema": 1, "models": {}}
    for model in args.models:
        entry = scores_by_drive(model, weights.get(model), tuple(args.splits.split(",")), data_root)
        entry["measured"] = now_utc()
        results["models"][model] = entry
        for split, scores in entry["splits"].items():
            parts = ", ".join(f"{drive} {d['miou']:.4f} ({d['images']})" for drive, d in scores["drives"].items())
            print(f"{model} {split}: mIoU {scores['miou']:.4f} = {parts}")
    write_json(args.out, results)


if __name__ == "__main__":
    main()
