#!/usr/bin/env python3
"""End-to-end `edgeseg demo` FPS on a clip against model-only FPS (runner.infer in a loop on the same input).

    python benchmarks/demo_fps.py --model bundles/fcn-resnet18-cpu --source clip.mp4 --frames 300
    python benchmarks/demo_fps.py --model model.int8.onnx --source wide.mp4 --fit letterbox --viewer chromium

The demo runs headless (no window, no --save) over every frame of the clip, so its FPS is what the full pipeline
(decode, preprocess, infer, argmax, render with legend and HUD) sustains; the model-only loop is the ceiling it is
compared with. On a shared, noisy machine one pair of runs can be off by 20% either way, so the two alternate for
--rounds rounds and the result is the median of the per-round ratios (each ratio compares runs seconds apart).
--fit fits the clip's frames as the demo would (the model-only loop runs on the same fitted input), and
--viewer chromium runs the demo with --serve and a headless Chromium watching the page for the whole run.
Writes benchmarks/results/demo-fps-<model>-<backend>.json (or --out). Imports no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))  # runs from a checkout without installing edgeseg

import numpy as np  # noqa: E402

from edgeseg.bench.env import collect_env  # noqa: E402
from edgeseg.demo.app import DemoConfig, format_summary, run_demo  # noqa: E402
from edgeseg.fit import fit_frame, is_dynamic, plan_fit  # noqa: E402
from edgeseg.demo.render import MODES  # noqa: E402
from edgeseg.demo.sources import open_source, parse_source  # noqa: E402
from edgeseg.errors import EdgesegError, UsageError  # noqa: E402
from edgeseg.logs import configure as configure_logging  # noqa: E402
from edgeseg.manifest import write_json  # noqa: E402
from edgeseg.runners import open_runner  # noqa: E402
from edgeseg.zoo.contract import FITS  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def first_frame(source: str) -> np.ndarray:
    opened = open_source(parse_source(source))
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
        placement = plan_fit(frame.shape[:2], runner.preprocessing, args.fit, is_dynamic(runner.input_spec.shape))
        batch = fit_frame(frame, placement, runner.preprocessing)
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


class Viewer(logging.Handler):
    """A headless Chromium on the demo's --serve page for the whole run. It is started from the demo's log line
    that gives the page's address (this handler listens to edgeseg.demo.app while the run lasts), and the run
    waits until the server counts it as a viewer, so every measured frame is also encoded and streamed to a
    browser."""

    def __init__(self, kind: str):
        super().__init__(logging.INFO)
        self.wanted = kind == "chromium"
        self.attached = 0
        self._browser: subprocess.Popen | None = None
        self._profile = None

    def __enter__(self) -> "Viewer":
        if self.wanted and not shutil.which("chromium"):
            raise UsageError("--viewer chromium needs Debian's chromium (apt-get install chromium)")
        logging.getLogger("edgeseg.demo.app").addHandler(self)
        return self

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"serving the live view on (http://\S+)", record.getMessage())
        if not (self.wanted and found):
            return
        url = found.group(1)
        self._profile = tempfile.TemporaryDirectory(prefix="demo-fps-chromium-")
        self._browser = subprocess.Popen(["chromium", *CHROMIUM_ARGS, f"--user-data-dir={self._profile.name}", url],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)  # its own process group, ended by __exit__
        deadline = time.perf_counter() + 60
        while self.attached < 1:
            if time.perf_counter() > deadline:
                raise UsageError("headless Chromium did not open the demo's stream within 60 s")
            time.sleep(0.2)
            with urllib.request.urlopen(url + "stats", timeout=5) as response:
                self.attached = json.loads(response.read())["viewers"]

    def __exit__(self, *exc) -> None:
        logging.getLogger("edgeseg.demo.app").removeHandler(self)
        if self._browser is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._browser.pid, signal.SIGTERM)
            try:
                self._browser.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._browser.pid, signal.SIGKILL)
                self._browser.wait()
        if self._profile is not None:
            self._profile.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=".onnx, .engine or build bundle folder")
    parser.add_argument("--source", required=True, help="a video file or image folder (a clip, not a camera)")
    parser.add_argument("--frames", type=int, default=300, help="frames for the demo and iterations for the model")
    parser.add_argument("--warmup", type=int, default=20, help="model-only warm-up iterations")
    parser.add_argument("--rounds", type=int, default=5, help="alternating model-only / demo pairs")
    parser.add_argument("--mode", default="overlay", choices=MODES)
    parser.add_argument("--fit", default=None, choices=FITS, help="default: the model contract's (letterbox)")
    parser.add_argument("--viewer", default="none", choices=("none", "chromium"),
                        help="chromium: serve the live view and keep a headless Chromium watching it")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    configure_logging()  # the demo's lines on stderr, as `edgeseg demo` shows them (and Viewer hears them)
    try:
        if parse_source(args.source).live:
            raise UsageError("--source must be a video file or image folder: a camera's rate caps the demo's FPS")
        if args.rounds < 1:
            raise UsageError("--rounds must be at least 1")
        frame = first_frame(args.source)
        env = collect_env(args.threads)  # before the runs: its load average describes the machine they met
        rounds = []
        for number in range(1, args.rounds + 1):
            # The model alone first in each round, so the demo does not warm caches the model-only number reuses.
            ceiling = model_only(args.model, frame, args)
            with Viewer(args.viewer) as viewer:
                summary = run_demo(DemoConfig(model=args.model, source=args.source, show=False, mode=args.mode,
                                              max_frames=args.frames, device=args.device, threads=args.threads,
                                              fit=args.fit, serve="127.0.0.1:0" if viewer.wanted else None))
            summary["viewers"] = viewer.attached
            ratio = summary["mean_fps"] / ceiling["fps"] if ceiling["fps"] else float("nan")
            rounds.append({"demo": summary, "model_only": ceiling, "demo_over_model_fps": round(ratio, 3)})
            print(f"round {number}: demo {summary['mean_fps']:.2f} FPS, model only {ceiling['fps']:.2f} FPS, "
                  f"ratio {ratio:.3f}")
    except EdgesegError as exc:
        print(f"demo_fps: error: {exc}", file=sys.stderr)
        return 2
    ratios = [entry["demo_over_model_fps"] for entry in rounds]
    median_round = rounds[int(np.argsort(ratios)[len(ratios) // 2])]  # the round whose ratio is the median
    summary, ceiling = median_round["demo"], median_round["model_only"]
    result = {
        "model": args.model,
        "source": args.source,
        "mode": args.mode,
        "fit": summary["fit"],
        "viewer": args.viewer,
        # Share of the model-only rate the whole pipeline keeps; near 1 means capture and rendering are hidden.
        "demo_over_model_fps": median_round["demo_over_model_fps"],
        "demo_over_model_fps_rounds": ratios,
        "demo_fps_median": round(float(np.median([entry["demo"]["mean_fps"] for entry in rounds])), 2),
        "model_only_fps_median": round(float(np.median([entry["model_only"]["fps"] for entry in rounds])), 2),
        "demo": summary,  # the median round's runs
        "model_only": ceiling,
        "rounds": rounds,
        "env": env,
    }
    out = args.out or (CHECKOUT / "benchmarks" / "results" /
                       f"demo-fps-{Path(args.model.rstrip('/')).stem}-{summary['backend']}.json")
    write_json(out, result)
    print(format_summary(summary))
    print(f"median round: demo {summary['mean_fps']:.1f} FPS, model only {ceiling['fps']:.1f} FPS "
          f"(p50 {ceiling['ms']['p50']:.1f} ms); the demo keeps {result['demo_over_model_fps']:.0%} of it "
          f"(rounds: {', '.join(f'{ratio:.2f}' for ratio in ratios)})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
