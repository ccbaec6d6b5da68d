"""Publish a training run's best checkpoint as a bundled CamVid reference (fp16 safetensors + recipe JSON).

Evaluates the checkpoint on the whole CamVid test split (233 images, 360x480), stores the weights in
edgeseg/weights/<model>.safetensors with the recipe and the measured scores in the sidecar, and records the
numbers in benchmarks/results/reference_checkpoints.json (the README's checkpoint table is generated from it).

    EDGESEG_DATA=../shared/data python benchmarks/publish_reference.py runs/segformer-b0 --model segformer-b0 \
        --note "50-epoch schedule shortened to 35 at epoch 7"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeseg.checkpoint import read_checkpoint_sidecar, save_checkpoint
from edgeseg.evaluate import EvalConfig, evaluate_model
from edgeseg.manifest import read_json, write_json
from edgeseg.zoo.weights import BUNDLED_DIR, load_model

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "reference_checkpoints.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", default="best.safetensors")
    parser.add_argument("--note", default="")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    source = args.run_dir / args.checkpoint
    sidecar = read_checkpoint_sidecar(source)
    report = evaluate_model(EvalConfig(model=args.model, weights=str(source), split="test", threads=args.threads))
    log = [json.loads(line) for line in (args.run_dir / "log.jsonl").read_text().splitlines()]
    loaded = load_model(args.model, str(source))
    target = BUNDLED_DIR / f"{args.model}.safetensors"
    metrics = {"camvid_test": {k: report[k] for k in ("miou", "pixel_accuracy", "mean_class_accuracy",
                                                       "per_class_iou", "images", "input_size")},
               "camvid_val": sidecar["metrics"].get("val"), "epoch": sidecar.get("epoch")}
    save_checkpoint(loaded.model, target, model_name=args.model, preprocessing=loaded.preprocessing,
                    label_set="camvid", recipe={**sidecar["recipe"], "note": args.note,
                                                "epochs_run": log[-1]["epoch"],
                                                "train_seconds": sum(r["epoch_seconds"] for r in log)},
                    metrics=metrics, half=True)
    results = read_json(RESULTS) if RESULTS.is_file() else {"schema": 1, "checkpoints": {}}
    results["checkpoints"][args.model] = {
        "test_miou": report["miou"], "test_pixel_accuracy": report["pixel_accuracy"],
        "per_class_iou": report["per_class_iou"], "best_epoch": sidecar.get("epoch"),
        "val_miou": (sidecar["metrics"].get("val") or {}).get("miou"), "epochs_run": log[-1]["epoch"],
        "train_hours_cpu": round(sum(r["epoch_seconds"] for r in log) / 3600, 2),
        "recipe": {k: sidecar["recipe"].get(k) for k in ("epochs", "batch_size", "lr", "crop_size", "scale_range",
                                                          "loss", "weight_decay", "warmup_iters")},
        "note": args.note, "bytes": target.stat().st_size}
    write_json(RESULTS, results)
    print(f"{args.model}: CamVid test mIoU {report['miou']:.4f} -> {target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
