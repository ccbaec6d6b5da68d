#!/usr/bin/env python3
"""End-to-end `edgeseg demo` FPS on a clip against model-only FPS (runner.infer in a loop on the same input).

    python benchmarks/demo_fps.py --model bundles/fcn-resnet18-cpu --source clip.mp4 --frames 300

The demo runs headless (no window, no --save) over every frame of the clip, so its FPS is what the full pipeline
(decode, preprocess, infer, render with legend and HUD) sustains; the model-only loop is the ceiling it is
compared with. Writes benchmarks/results/demo-fps-<model>-<backend>.json (or --out). Imports no torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))  # runs from a checkout without installing edgeseg

import numpy as np  # noqa: E402

from edgeseg.bench.env import collect_env  # noqa: E402
from edgeseg.demo.app import DemoConfig, format_summary, run_demo  # noqa: E402
from edgeseg.demo.pipeline import preprocess  # noqa: E402
from edgeseg.demo.render import MODES  # noqa: E402
from edgeseg.demo.sources import open_source, parse_source  # noqa: E402
from edgeseg.errors import EdgesegError, UsageError  # noqa: E402
from edgeseg.manifest import write_json  # noqa: E402
from edgeseg.runners import open_runner  # noqa: E402


def first_frame(source: str) -> np.ndarray:
    opened = open_source(parse_source(source), log=lambda message: None)
    try:
        frame = opened.read()
    finally:
        opened.close()
    if frame is None:
        raise UsageError(f"{source} gave no frame")
    return frame


def model_only(model: str, frame: np.ndarray, args: argparse.Namespace) -> dict:
    """runner.infer on the clip's first frame, preprocessed once: the most the demo could reach."""
    with open_runner(model, device=args.device, threads=args.threads) as runner:
        batch = preprocess(frame, runner.preprocessing)
        for _ in range(args.warmup):
            runner.infer(batch)
        times_ms = []
        for _ in range(args.frames):
            started = time.perf_counter()
            runner.infer(batch)
            times_ms.append((time.perf_counter() - started) * 1000.0)
        backend, input_size = runner.backend, list(runner.preprocessing.input_size)
    times = np.asarray(times_ms)
    return {"backend": backend, "input_size": input_size, "iterations": len(times),
            "fps": round(1000.0 * len(times) / times.sum(), 2),
            "ms": {"mean": round(float(times.mean()), 3), "p50": round(float(np.percentile(times, 50)), 3),
                   "p99": round(float(np.percentile(times, 99)), 3)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=".onnx, .engine or build bundle folder")
    parser.add_argument("--source", required=True, help="a video file or image folder (a clip, not a camera)")
    parser.add_argument("--frames", type=int, default=300, help="frames for the demo and iterations for the model")
    parser.add_argument("--warmup", type=int, default=20, help="model-only warm-up iterations")
    parser.add_argument("--mode", default="overlay", choices=MODES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    try:
        if parse_source(args.source).live:
            raise UsageError("--source must be a video file or image folder: a camera's rate caps the demo's FPS")
        # The model alone first, so the demo's run does not warm caches the model-only number then benefits from.
        ceiling = model_only(args.model, first_frame(args.source), args)
        summary = run_demo(DemoConfig(model=args.model, source=args.source, show=False, mode=args.mode,
                                      max_frames=args.frames, device=args.device, threads=args.threads))
    except EdgesegError as exc:
        print(f"demo_fps: error: {exc}", file=sys.stderr)
        return 2
    result = {
        "model": args.model,
        "source": args.source,
        "mode": args.mode,
        "demo": summary,
        "model_only": ceiling,
        # Share of the model-only rate the whole pipeline keeps; near 1 means capture and rendering are hidden.
        "demo_over_model_fps": round(summary["mean_fps"] / ceiling["fps"], 3) if ceiling["fps"] else None,
        "env": collect_env(args.threads),
    }
    out = args.out or (CHECKOUT / "benchmarks" / "results" /
                       f"demo-fps-{Path(args.model.rstrip('/')).stem}-{summary['backend']}.json")
    write_json(out, result)
    print(format_summary(summary))
    kept = result["demo_over_model_fps"]
    print(f"model only: {ceiling['fps']:.1f} FPS (p50 {ceiling['ms']['p50']:.1f} ms)"
          + (f"; the demo keeps {kept:.0%} of it" if kept is not None else ""))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
