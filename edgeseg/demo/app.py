"""`run_demo`: open the source and the model, run the pipeline, render, show and save, and summarise the run."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgeseg.demo.outputs import AtomicVideoWriter, Window
from edgeseg.demo.pipeline import DemoStats, Pipeline
from edgeseg.demo.render import (EFFECTS, MODES, compose, draw_hud, draw_legend, hud_lines, make_style)
from edgeseg.demo.sources import Backoff, CaptureFactory, log_to_stderr, open_source, parse_source
from edgeseg.errors import UsageError
from edgeseg.runners import open_runner

@dataclass(frozen=True)
class DemoConfig:
    model: str  # .onnx, .engine or build bundle directory
    source: str = "0"  # camera index, /dev/videoN, video file, rtsp:// URL or image folder
    show: bool = True
    save: str | None = None  # .mp4 to write the rendered video to
    mode: str = "overlay"  # overlay, mask or side-by-side
    alpha: float = 0.5  # overlay opacity
    classes: tuple[str, ...] = ()  # class names to draw (and keep sharp with blur-background); empty: all
    effect: str = "none"  # none or blur-background
    realtime: bool = False  # files and folders: read at their frame rate and drop frames, like a live source
    max_frames: int | None = None
    device: str = "auto"
    threads: int | None = None
    backend: str = "auto"  # auto (a bundle: its engine, else its default CPU variant), ort-cpu, ov-cpu, ...
    legend: bool = True
    hud: bool = True
    reconnect_attempts: int = 5
    reconnect_delay_s: float = 0.5  # first wait; doubles each attempt
    reconnect_max_delay_s: float = 8.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise UsageError(f"unknown --mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.effect not in EFFECTS:
            raise UsageError(f"unknown --effect {self.effect!r}; choose one of {', '.join(EFFECTS)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha must be between 0 and 1, got {self.alpha}")
        if self.max_frames is not None and self.max_frames < 1:
            raise UsageError("--max-frames must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise UsageError("--threads must be at least 1")
        self.backoff  # validates the reconnect settings

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.reconnect_attempts, self.reconnect_delay_s, self.reconnect_max_delay_s)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """`docker stop` and systemd send SIGTERM: treat it like Ctrl-C so the video is still finalised."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


FrameHook = Callable[[int, np.ndarray], None]  # (frames rendered so far, rendered BGR image)


def run_demo(cfg: DemoConfig, *, log: Callable[[str], None] = log_to_stderr,
             capture_factory: CaptureFactory | None = None, on_frame: FrameHook | None = None) -> dict:
    """Run the demo until the source ends, --max-frames, q/Esc, Ctrl-C or a live source that cannot be reconnected;
    returns the summary, whose stopped_by is end-of-source, max-frames, interrupt, window-closed or
    source-lost. `capture_factory` replaces cv2.VideoCapture and `on_frame` is called after each frame is
    written and shown (both for tests)."""
    spec = parse_source(cfg.source)
    if not Path(cfg.model).exists():
        raise UsageError(f"model {cfg.model} does not exist; give an .onnx, .engine or build bundle folder")
    stop_event = threading.Event()
    window = Window() if cfg.show else None  # before the model loads: a missing display fails fast
    try:
        source = open_source(spec, cfg.backoff, capture_factory=capture_factory, log=log, stop_event=stop_event)
    except BaseException:
        if window:
            window.close()
        raise
    try:
        runner = open_runner(cfg.model, device=cfg.device, threads=cfg.threads, backend=cfg.backend)
        preprocessing = runner.preprocessing
        style = make_style(preprocessing.classes, preprocessing.palette, shown=cfg.classes, mode=cfg.mode,
                           alpha=cfg.alpha, effect=cfg.effect)
        writer = AtomicVideoWriter(cfg.save, source.fps) if cfg.save else None
    except BaseException:
        source.close()
        if window:
            window.close()
        raise

    with runner:
        height, width = preprocessing.input_size
        log(f"demo: {spec.describe()} -> {runner.backend} at {height}x{width}; "
            + ("q, Esc or Ctrl-C stops" if window else "Ctrl-C stops"))
        # Live sources, and files with --realtime, keep only the newest frame; files otherwise lose nothing.
        pipeline = Pipeline(source, runner, stop_event=stop_event, keep_latest_only=spec.live or cfg.realtime,
                            pace_fps=source.fps if cfg.realtime and not spec.live else None)
        stats = DemoStats()
        stopped_by = "end-of-source"
        saved = None
        try:
            with _sigterm_as_interrupt():
                pipeline.start()
                for prediction in pipeline.predictions():
                    started = time.perf_counter()
                    image = compose(prediction.frame.image, prediction.labels, style)
                    if cfg.legend:
                        draw_legend(image, style.legend_entries)
                    if cfg.hud:
                        draw_hud(image, hud_lines(stats.recent_fps(), stats.recent_stage_ms(), runner.backend,
                                                  pipeline.dropped))
                    if writer:
                        writer.write(image)
                    keep_going = window.show(image) if window else True
                    rendered = time.perf_counter()  # "render" is all the output thread does for a frame
                    stats.record(prediction, (rendered - started) * 1000.0, rendered)
                    if on_frame:
                        on_frame(stats.frames, image)
                    if not keep_going:
                        stopped_by = "window-closed"
                        break
                    if cfg.max_frames and stats.frames >= cfg.max_frames:
                        stopped_by = "max-frames"
                        break
                else:
                    if source.lost:
                        stopped_by = "source-lost"
        except KeyboardInterrupt:
            stopped_by = "interrupt"
        finally:
            try:
                if not pipeline.stop():
                    log("demo: a worker thread did not stop in time (blocked in a stream read?); exiting anyway")
            finally:  # even if a second Ctrl-C lands while the threads stop, the video is finalised
                if writer:
                    saved = writer.close()
                if window:
                    window.close()
        if pipeline.error is not None:
            raise pipeline.error

    summary = stats.summary()
    summary.update({
        "captured": pipeline.captured,
        "dropped_frames": pipeline.dropped,
        "reconnects": source.reconnects,
        "stopped_by": stopped_by,
        "source": spec.describe(),
        "model": str(cfg.model),
        "backend": runner.backend,
        "input_size": [height, width],
        "mode": cfg.mode,
        "saved": str(saved) if saved else None,
    })
    return summary


def format_summary(summary: dict) -> str:
    """The summary as two lines for the terminal."""
    latency = summary["latency_ms"]
    stages = ", ".join(f"{stage} {value:.1f}" for stage, value in summary["stage_ms"].items())
    lines = [f"demo: {summary['frames']} frames, {summary['mean_fps']:.1f} FPS, latency p50 {latency['p50']:.1f} ms "
             f"/ p99 {latency['p99']:.1f} ms, dropped {summary['dropped_frames']}, reconnects "
             f"{summary['reconnects']}; stopped: {summary['stopped_by']}",
             f"demo: mean ms per frame: {stages} ({summary['backend']})"]
    if summary["saved"]:
        lines.append(f"demo: wrote {summary['saved']}")
    return "\n".join(lines)
