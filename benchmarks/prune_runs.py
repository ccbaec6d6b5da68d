"""Prune SegFormer-b0 and a CNN, fine-tune them back, and publish the numbers under benchmarks/results/prune/.

For each model: channel pruning at --ratio (uniform, l1, channels rounded to 8) which must remove at least 30% of
the GFLOPs at the model's 360x480 input, then a recovery fine-tune distilled from the unpruned model. Recorded per
model, in one JSON each plus a markdown table:
  GFLOPs and parameters before/after and `gflops_reduction` (fraction),
  ONNX Runtime CPU latency (p50) of both models measured side by side and `latency_reduction` (fraction),
  CamVid test mIoU before pruning, right after pruning, after fine-tuning, and `miou_drop` (points, before minus
  after fine-tuning).

    EDGESEG_DATA=../shared/data python benchmarks/prune_runs.py --device cuda --finetune-epochs 40
    python benchmarks/prune_runs.py --models segformer-b0 --weights segformer-b0=runs/segformer-b0/best.safetensors

The pruned checkpoints go to runs/prune/ (not committed); the fine-tune runs beside them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeseg.bench.env import collect_env
from edgeseg.logs import configure as configure_logging
from edgeseg.manifest import write_json
from edgeseg.prune import PruneConfig, prune

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "prune"
DEFAULT_MODELS = ("segformer-b0", "deeplabv3plus-mobilenetv2")
MIN_GFLOPS_REDUCTION = 0.30
REPORTED = ("input_size", "params_before", "params_after", "gflops_before", "gflops_after", "gflops_reduction",
            "latency_before_ms", "latency_after_ms", "latency_reduction", "latency_threads", "miou_before",
            "miou_pruned", "miou_finetuned", "miou_drop", "sparsity_2to4_fraction", "layers_resized",
            "prune_seconds")


def parse_weights(pairs: list[str]) -> dict[str, str]:
    weights = {}
    for pair in pairs:
        model, sep, spec = pair.partition("=")
        if not sep:
            raise SystemExit(f"--weights {pair!r}: write MODEL=WEIGHTS, e.g. segformer-b0=runs/x/best.safetensors")
        weights[model] = spec
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--weights", nargs="*", default=[], help="MODEL=WEIGHTS (default: the bundled checkpoint)")
    parser.add_argument("--ratio", type=float, default=0.3, help="channel ratio; 0.3 removes ~45%% of the GFLOPs")
    parser.add_argument("--importance", default="l1")
    parser.add_argument("--sparsity", default=None, help="2:4 to also sparsify (recorded for TensorRT)")
    parser.add_argument("--finetune-epochs", type=int, default=40)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-distill", action="store_true", help="fine-tune on labels only")
    parser.add_argument("--device", default="auto", help="fine-tune device")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (latency and evaluation)")
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "prune")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    configure_logging()  # the prune stage's findings on stderr, as `edgeseg prune` shows them

    weights = parse_weights(args.weights)
    for model in args.models:
        cfg = PruneConfig(model=model, weights=weights.get(model), ratio=args.ratio, importance=args.importance,
                          sparsity=args.sparsity, data_root=args.data_root, eval_limit=args.eval_limit,
                          threads=args.threads, finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                          finetune_batch_size=args.batch_size, distill=not args.no_distill and args.finetune_epochs > 0,
                          device=args.device)
        checkpoint = args.work_dir / f"{model}-r{args.ratio:g}.safetensors"
        artifact = prune(cfg, checkpoint)
        metrics = artifact.manifest["metrics"]
        row = {"model": model, "weights": artifact.manifest.get("pruned_from"), "ratio": args.ratio,
               "importance": args.importance, "finetune_epochs": args.finetune_epochs, "distill": cfg.distill,
               **{key: metrics.get(key) for key in REPORTED},
               "meets_gflops_target": metrics["gflops_reduction"] >= MIN_GFLOPS_REDUCTION}
        record = {"schema": 1, "result": row, "settings": artifact.manifest["recipe"],
                  "spec_layers": sorted(artifact.manifest["spec"]["modules"]), "env": collect_env(args.threads),
                  "finetune": metrics.get("finetune"), "miou_skipped": metrics.get("miou_skipped")}
        write_json(args.out_dir / f"{model}-r{args.ratio:g}.json", record)
        print(json.dumps(row, indent=2))
        if not row["meets_gflops_target"]:
            print(f"warning: {model} at ratio {args.ratio} removes only {metrics['gflops_reduction']:.0%} of the "
                  f"GFLOPs (< {MIN_GFLOPS_REDUCTION:.0%}); raise --ratio")
    # The table covers every result in the folder, so running one model at a time keeps the others' rows.
    rows = [json.loads(path.read_text())["result"] for path in sorted(args.out_dir.glob("*.json"))]
    write_table(args.out_dir / "README.md", rows)


def _percent(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def _number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_table(path: Path, rows: list[dict]) -> None:
    lines = ["# Pruning results", "",
             "Channel pruning (Torch-Pruning DepGraph, l1, channels rounded to 8) + distilled fine-tune; ONNX Runtime "
             "CPU latency p50 measured side by side; CamVid test mIoU. Written by benchmarks/prune_runs.py.", "",
             "| model | ratio | GFLOPs | GFLOPs cut | latency ms (ORT CPU) | latency cut | mIoU before | pruned | "
             "fine-tuned | drop (points) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['ratio']:g} | {_number(row['gflops_before'])} -> {_number(row['gflops_after'])} "
            f"| {_percent(row['gflops_reduction'])} | {_number(row['latency_before_ms'], 1)} -> "
            f"{_number(row['latency_after_ms'], 1)} | {_percent(row['latency_reduction'])} | "
            f"{_number(row['miou_before'], 4)} | {_number(row['miou_pruned'], 4)} | "
            f"{_number(row['miou_finetuned'], 4)} | {_number(row['miou_drop'])} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
