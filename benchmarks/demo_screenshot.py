#!/usr/bin/env python3
"""Render one frame of `edgeseg demo` (overlay, legend and HUD) from a model and an image, to a PNG for the README.

    python benchmarks/demo_screenshot.py --model bundles/fcn-resnet18-cpu --image \\
        $EDGESEG_DATA/CamVid/test/Seq05VD_f02370.png --out docs/demo.png

The HUD shows this machine's measured times for the frame (median of --repeats runs after a warm-up), so the
screenshot tells the truth about the backend it was made with. Imports no torch: the demo's own code renders it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))  # runs from a checkout without installing edgeseg

import cv2  # noqa: E402

from edgeseg.demo.pipeline import labels_from_output, preprocess  # noqa: E402
from edgeseg.demo.render import EFFECTS, MODES, compose, draw_hud, draw_legend, hud_lines, make_style  # noqa: E402
from edgeseg.demo.stats import Rates  # noqa: E402
from edgeseg.errors import EdgesegError, UsageError  # noqa: E402
from edgeseg.runners import open_runner  # noqa: E402


def median_ms(action, repeats: int) -> tuple[float, object]:
    """Median wall time of `action()` in ms over `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = action()
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times), result


def render_screenshot(args: argparse.Namespace) -> Path:
    frame = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if frame is None:
        raise UsageError(f"{args.image} is not a readable image")
    if args.width and frame.shape[1] != args.width:
        height = round(frame.shape[0] * args.width / frame.shape[1])
        frame = cv2.resize(frame, (args.width, height), interpolation=cv2.INTER_AREA)
    classes = tuple(name.strip() for name in (args.classes or "").split(",") if name.strip())
    with open_runner(args.model, device=args.device, threads=args.threads) as runner:
        preprocessing = runner.preprocessing
        style = make_style(preprocessing.classes, preprocessing.palette, shown=classes, mode=args.mode,
                           alpha=args.alpha, effect=args.effect)
        preprocess_ms, batch = median_ms(lambda: preprocess(frame, preprocessing), args.repeats)
        for _ in range(args.warmup):  # first runs allocate and tune; they are not what the demo sees
            runner.infer(batch)
        infer_ms, output = median_ms(lambda: runner.infer(batch), args.repeats)
        postprocess_ms, labels = median_ms(lambda: labels_from_output(output, runner.output_kind), args.repeats)
        render_ms, image = median_ms(lambda: compose(frame, labels, style), args.repeats)
        draw_legend(image, style.legend_entries)
        # One frame has no capture time of its own; a camera read is ~1 ms, left out rather than invented.
        stage_ms = {"capture": 0.0, "preprocess": preprocess_ms, "infer": infer_ms, "postprocess": postprocess_ms,
                    "render": render_ms}
        # Pipelined (capture+preprocess | infer | postprocess+render): the slowest thread sets the rate.
        fps = 1000.0 / max(infer_ms, preprocess_ms, postprocess_ms + render_ms)
        draw_hud(image, hud_lines(Rates(1, fps, stage_ms, "modelled"), runner.backend, dropped=0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), image):
        raise UsageError(f"cannot write {args.out}; give a .png path in a writable folder")
    return args.out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=".onnx, .engine or build bundle folder")
    parser.add_argument("--image", required=True, type=Path, help="a driving scene, e.g. a CamVid test frame")
    parser.add_argument("--out", type=Path, default=CHECKOUT / "docs" / "demo.png")
    parser.add_argument("--mode", default="overlay", choices=MODES)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--classes", help="comma-separated class names to draw (default: all)")
    parser.add_argument("--effect", default="none", choices=EFFECTS)
    parser.add_argument("--width", type=int, default=None, help="resize the image to this width first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        out = render_screenshot(args)
    except EdgesegError as exc:
        print(f"demo_screenshot: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
