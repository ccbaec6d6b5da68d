#!/usr/bin/env python3
"""How training and evaluation scale with torchrun processes: 1 process against N (CPU/gloo here, GPUs/NCCL
where there are GPUs).

    python benchmarks/distributed_scaling.py                      # 1 and 2 CPU processes, short
    python benchmarks/distributed_scaling.py --processes 1 2 4 8 --device cuda   # one node, N GPUs

For each process count the script launches itself under torchrun (`--worker`) and measures, inside the ranks:
  train: images/s of the second epoch of `edgeseg.train.train` (unet-mobilenetv2, generated scenes, --batch-size
         per process fixed, so the global batch grows with the processes: weak scaling, as DDP is used), read from
         rank 0's log (every epoch ends in an all-reduce, so rank 0's clock covers all ranks);
  eval:  images/s of the sharded evaluation (`edgeseg.evaluate.confusion_on`, CamVid val, the bundled
         unet-mobilenetv2 checkpoint, the model's 360x480), timed between barriers, with the summed confusion
         matrix's mIoU (identical for every process count).
Every process gets --threads torch threads. Writes benchmarks/results/distributed/scaling-<machine>.json
(cpu-<model>-<N>c, gpu-<name>).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))  # runs from a checkout without installing edgeseg


def worker(args: argparse.Namespace) -> None:
    """One rank: eval timing, then a short training run; rank 0 writes the numbers to args.result."""
    import torch

    from edgeseg.data.datasets import open_dataset
    from edgeseg.distributed import barrier, process_group
    from edgeseg.evaluate import confusion_on, torch_predictor
    from edgeseg.train import TrainConfig, train
    from edgeseg.zoo.weights import load_model

    torch.set_num_threads(args.threads)
    result: dict = {}
    dataset = open_dataset("camvid", "val", args.data_root)
    loaded = load_model("unet-mobilenetv2", None, label_set=dataset.label_set)
    with process_group(args.device, "auto") as ctx:
        predict = torch_predictor(loaded.model, ctx.device)
        confusion_on(predict, dataset, loaded.preprocessing, limit=ctx.world_size, description="warm-up")
        barrier("eval start")
        started = time.perf_counter()
        confusion = confusion_on(predict, dataset, loaded.preprocessing, limit=args.eval_images, description="eval")
        seconds = time.perf_counter() - started  # confusion_on ends in an all-reduce: every rank has finished
        result["eval"] = {"images": args.eval_images, "seconds": round(seconds, 3),
                          "images_per_s": round(args.eval_images / seconds, 3), "miou": confusion.scores().miou,
                          "input_size": list(loaded.preprocessing.input_size)}
        out = Path(args.scratch) / f"run-{ctx.world_size}"
        cfg = TrainConfig(model="unet-mobilenetv2", out_dir=str(out), data_root=args.train_data, epochs=2,
                          batch_size=args.batch_size, lr=1e-3, warmup_iters=2, crop_size=(128, 160),
                          scale_range=(0.9, 1.1), eval_every=0, eval_limit=ctx.world_size, threads=args.threads,
                          device=args.device)
        train(cfg)
        if ctx.is_main:
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            images = (log[-1]["iteration"] - log[-2]["iteration"]) * args.batch_size * ctx.world_size
            result["train"] = {"images_per_epoch": images, "global_batch": args.batch_size * ctx.world_size,
                               "epoch_seconds": log[-1]["epoch_seconds"],
                               "images_per_s": round(images / log[-1]["epoch_seconds"], 3),
                               "crop": [128, 160]}
            result.update(processes=ctx.world_size, backend=ctx.backend or "none (one process)")
            Path(args.result).write_text(json.dumps(result))


def make_train_scenes(root: Path, count: int) -> None:
    """Generated toy driving scenes (tests/conftest.py's generator) at 128x160: training cost, not accuracy."""
    from tests.conftest import make_camvid

    make_camvid(root, per_split=count, size=(128, 160))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--batch-size", type=int, default=2, help="per process")
    parser.add_argument("--train-images", type=int, default=32)
    parser.add_argument("--eval-images", type=int, default=16)
    parser.add_argument("--data-root", default=os.environ.get("EDGESEG_DATA"), help="holds CamVid/ (val split)")
    parser.add_argument("--note", default="", help="what else ran on the machine, recorded with the numbers")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--train-data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.data_root:
        sys.exit("distributed_scaling.py: error: set EDGESEG_DATA or --data-root to the folder holding CamVid/")

    from edgeseg.bench.env import collect_env, machine_name
    from edgeseg.manifest import write_json

    runs = []
    with tempfile.TemporaryDirectory(prefix="edgeseg-scaling-") as scratch:
        make_train_scenes(Path(scratch) / "scenes", args.train_images)
        for processes in args.processes:
            result = Path(scratch) / f"result-{processes}.json"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={processes}", __file__, "--worker", "--scratch", scratch,
                       "--train-data", str(Path(scratch) / "scenes"), "--result", str(result),
                       "--device", args.device, "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                       "--eval-images", str(args.eval_images), "--data-root", args.data_root]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(CHECKOUT))
            completed = subprocess.run(command, env=env, capture_output=True, text=True)
            if completed.returncode != 0:
                sys.exit(f"{processes} processes failed:\n{completed.stderr[-3000:]}")
            runs.append(json.loads(result.read_text()))
            print(f"{processes} process(es): train {runs[-1]['train']['images_per_s']:.2f} img/s, "
                  f"eval {runs[-1]['eval']['images_per_s']:.2f} img/s")
    base = runs[0]
    for run in runs:
        for part in ("train", "eval"):
            speedup = run[part]["images_per_s"] / base[part]["images_per_s"]
            run[part]["speedup"] = round(speedup, 3)
            run[part]["efficiency"] = round(speedup * base["processes"] / run["processes"], 3)
    env = collect_env(threads=args.threads)
    report = {"schema": 1, "benchmark": "distributed_scaling", "device": args.device,
              "model": "unet-mobilenetv2", "threads_per_process": args.threads,
              "cpu_count": os.cpu_count(), "note": args.note, "runs": runs, "environment": env}
    out = args.out or CHECKOUT / "benchmarks" / "results" / "distributed" / \
        f"scaling-{machine_name(env)}.json"
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
