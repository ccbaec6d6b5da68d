#!/usr/bin/env python3
"""What edgeseg's exact export rewrites (edgeseg/graph_rewrites.py) are worth, per architecture: the same weights
exported twice, plain (torch.onnx.export + onnxslim, what a user's own export gives) and rewritten, then both run
by ONNX Runtime FP32 on the CPU in interleaved rounds (each round in a new seeded order).

Latency does not depend on the weights, so models without bundled weights run with random ones (recorded); the
two graphs' outputs on one random input are compared as well (max |difference| of the logits, argmax agreement),
on top of the export's own parity check against torch.

    python benchmarks/export_rewrites.py segformer-b0 segformer-b2 --size 256x320 --threads 1
    # -> benchmarks/results/export-rewrites/<size>-<threads>t.json and results.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))  # runs from a checkout without installing edgeseg

from edgeseg import logs  # noqa: E402
from edgeseg.manifest import write_json  # noqa: E402

RESULTS = CHECKOUT / "benchmarks" / "results" / "export-rewrites"


def measure_model(model: str, size: tuple[int, int], threads: int, rounds: int, work: Path) -> dict:
    import numpy as np
    import torch

    from edgeseg.bench.latency import measure_interleaved, shuffled_rounds
    from edgeseg.export import ExportConfig, export_model
    from edgeseg.runners import open_runner
    from edgeseg.zoo.weights import bundled_weights, load_model

    weights = "bundled" if bundled_weights(model) else "random"
    paths, rewrites = {}, []
    for kind, rewrite in (("plain", False), ("rewritten", True)):
        torch.manual_seed(0)  # the same random weights both times
        loaded = load_model(model, None if weights == "bundled" else "random")
        artifact = export_model(loaded, model, ExportConfig(size=size, rewrite=rewrite, parity_images=2,
                                                            threads=threads), work / f"{model}.{kind}.onnx")
        paths[kind] = artifact.path
        if rewrite:
            rewrites = artifact.manifest.get("rewrites", [])
    runners = {kind: open_runner(path, device="cpu", threads=threads) for kind, path in paths.items()}
    batch = np.random.default_rng(0).normal(size=(1, 3, *size)).astype(np.float32)
    plain, rewritten = runners["plain"].infer(batch), runners["rewritten"].infer(batch)
    timings = measure_interleaved({kind: (lambda r=r: r.infer(batch)) for kind, r in runners.items()},
                                  rounds=rounds, per_round=2, shuffle=shuffled_rounds())
    return {"model": model, "weights": weights, "rewrites": rewrites,
            "max_abs_difference": float(np.abs(plain - rewritten).max()),
            "argmax_agreement": float((plain.argmax(1) == rewritten.argmax(1)).mean()),
            "plain": timings["plain"].to_dict(), "rewritten": timings["rewritten"].to_dict(),
            "speedup": timings["plain"].p50_ms / timings["rewritten"].p50_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--size", default="256x320", help="HxW")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (2 runs per graph each)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logs.configure()
    height, width = (int(side) for side in args.size.lower().split("x"))
    from edgeseg.bench.env import collect_env

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgeseg-rewrites-") as work:
        rows = [measure_model(model, (height, width), args.threads, args.rounds, Path(work))
                for model in args.models]
    for row in rows:
        print(f"{row['model']}: plain {row['plain']['p50_ms']:.1f} ms, rewritten {row['rewritten']['p50_ms']:.1f} ms "
              f"({row['speedup']:.2f}x), max |diff| {row['max_abs_difference']:.1e}")
    result = {"schema": 1, "backend": "ort-cpu", "precision": "fp32", "size": [height, width],
              "threads": args.threads, "rounds": args.rounds, "rows": rows,
              "seconds": round(time.monotonic() - started, 1), "env": collect_env(args.threads)}
    out = args.out / f"{height}x{width}-{args.threads}t.json"
    write_json(out, result)
    lines = ["# What the exact export rewrites are worth (ONNX Runtime FP32, CPU)", "",
             "Same weights exported plain and rewritten, p50 ms in interleaved rounds (benchmarks/export_rewrites.py).",
             "", "| model | input | weights | plain p50 ms | rewritten p50 ms | speed-up | max abs diff | rewrites |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path in sorted(args.out.glob("*.json")):
        data = json.loads(path.read_text())
        for row in data["rows"]:
            lines.append(f"| {row['model']} | {data['size'][0]}x{data['size'][1]}, {data['threads']} thr | "
                         f"{row['weights']} | {row['plain']['p50_ms']:.1f} | {row['rewritten']['p50_ms']:.1f} | "
                         f"{row['speedup']:.2f}x | {row['max_abs_difference']:.1e} | {len(row['rewrites'])} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
