"""`run_demo`: open the source and the model, run the pipeline, render, show and save, and summarise the run."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from edgeseg.demo.outputs import AtomicVideoWriter, Window
from edgeseg.fit import is_dynamic
from edgeseg.demo.pipeline import Pipeline
from edgeseg.demo.render import (EFFECTS, MODES, compose, draw_hud, draw_legend, hud_lines, make_style)
from edgeseg.demo.sources import Backoff, CaptureFactory, open_source, parse_source
from edgeseg.demo.stats import DemoStats
from edgeseg.errors import UsageError
from edgeseg.zoo.contract import FITS
from edgeseg.runners import open_runner

if TYPE_CHECKING:
    from types import FrameType

    from edgeseg.demo.render import RenderStyle
    from edgeseg.demo.serve import DemoServer

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
    fit: str | None = None  # letterbox, crop or resize; None: the model contract's choice (letterbox by default)
    serve: str | None = None  # HOST:PORT to serve the live view on (edgeseg.demo.serve)

    def __post_init__(self) -> None:
        if self.fit is not None and self.fit not in FITS:
            raise UsageError(f"unknown --fit {self.fit!r}; choose one of {', '.join(FITS)}")
        if self.serve is not None:
            from edgeseg.demo.serve import parse_address

            parse_address(self.serve)
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
        _ = self.backoff  # validates the reconnect settings

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.reconnect_attempts, self.reconnect_delay_s, self.reconnect_max_delay_s)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`docker stop` and systemd send SIGTERM: treat it like Ctrl-C so the video is still finalised."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


log = logging.getLogger(__name__)

FrameHook = Callable[[int, np.ndarray], None]  # (frames rendered so far, rendered BGR image)


def run_demo(cfg: DemoConfig, *, capture_factory: CaptureFactory | None = None,
             on_frame: FrameHook | None = None) -> dict:
    """Run the demo until the source ends, --max-frames, q/Esc, Ctrl-C or a live source that cannot be reconnected;
    returns the summary, whose stopped_by is end-of-source, max-frames, interrupt, window-closed or
    source-lost. `capture_factory` replaces cv2.VideoCapture and `on_frame` is called after each frame is
    written and shown (both for tests). Its start line and the source's reconnects go to the module loggers
    (edgeseg.demo.app, edgeseg.demo.sources)."""
    spec = parse_source(cfg.source)
    if not Path(cfg.model).exists():
        raise UsageError(f"model {cfg.model} does not exist; give an .onnx, .engine or build bundle folder")
    stop_event = threading.Event()
    window = Window() if cfg.show else None  # before the model loads: a missing display fails fast
    try:
        source = open_source(spec, cfg.backoff, capture_factory=capture_factory, stop_event=stop_event)
    except BaseException:
        if window:
            window.close()
        raise
    server = None
    try:
        runner = open_runner(cfg.model, device=cfg.device, threads=cfg.threads, backend=cfg.backend)
        preprocessing = runner.preprocessing
        fit = cfg.fit or preprocessing.fit

        def style_for(mode: str, alpha: float) -> RenderStyle:
            return make_style(preprocessing.classes, preprocessing.palette, shown=cfg.classes, mode=mode,
                              alpha=alpha, effect=cfg.effect)

        style = style_for(cfg.mode, cfg.alpha)
        writer = AtomicVideoWriter(cfg.save, source.fps) if cfg.save else None
        stats = DemoStats()
        pipeline = None
        if cfg.serve:
            server = _start_server(cfg, style_for, style, stats, lambda: pipeline, runner.backend, fit)
    except BaseException:
        source.close()
        if window:
            window.close()
        raise

    with runner:
        height, width = preprocessing.input_size
        dynamic = is_dynamic(runner.input_spec.shape)
        size_note = f"~{height * width} pixels at the frame's aspect (dynamic input)" if dynamic else \
            f"{height}x{width}"
        # Live sources, and files with --realtime, keep only the newest frame; files otherwise lose nothing.
        pipeline = Pipeline(source, runner, stop_event=stop_event, keep_latest_only=spec.live or cfg.realtime,
                            pace_fps=source.fps if cfg.realtime and not spec.live else None, fit=cfg.fit)
        stopped_by = "end-of-source"
        saved = None
        try:
            via = f" (capture: {source.capture_note})" if getattr(source, "capture_note", None) else ""
            log.info(f"demo: {spec.describe()}{via} -> {runner.backend} at {size_note}, fit {fit}; "
                     + ("q, Esc or Ctrl-C stops" if window else "Ctrl-C stops"))
            if server:
                log.info(f"demo: serving the live view on {server.url}")
            with _sigterm_as_interrupt():
                pipeline.start()
                for prediction in pipeline.predictions():
                    started = time.perf_counter()
                    if server:
                        style = server.controls.style  # the page may have switched mode or alpha
                    image = compose(prediction.frame.image, prediction.labels, style)
                    if cfg.legend:
                        draw_legend(image, style.legend_entries)
                    if cfg.hud:
                        draw_hud(image, hud_lines(stats.window(), runner.backend, pipeline.dropped))
                    if writer:
                        writer.write(image)
                    if server:
                        server.broadcaster.publish(image)  # hands the image over; encoding is another thread's
                    keep_going = window.show(image) if window else True
                    rendered = time.perf_counter()  # "render" is all the output thread does for a frame
                    stats.record({"capture": prediction.frame.capture_ms,
                                  "preprocess": prediction.frame.preprocess_ms, "infer": prediction.infer_ms,
                                  "postprocess": prediction.postprocess_ms, "render": (rendered - started) * 1000.0},
                                 prediction.frame.captured_at, rendered)
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
                    log.warning("demo: a worker thread did not stop in time (blocked in a stream read?); "
                                "exiting anyway")
            finally:  # even if a second Ctrl-C lands while the threads stop, the video is finalised
                if writer:
                    saved = writer.close()
                if window:
                    window.close()
                if server:
                    server.close()
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
        "fit": fit,
        "mode": cfg.mode,
        "saved": str(saved) if saved else None,
        "served": server.url if server else None,
    })
    return summary


def _start_server(cfg: DemoConfig, style_for: Callable[[str, float], RenderStyle], style: RenderStyle,
                  stats: DemoStats, pipeline_now: Callable[[], Pipeline | None], backend: str,
                  fit: str) -> DemoServer:
    """Start the --serve web page; its /stats reads the same recorder as the HUD and the summary."""
    from edgeseg.demo.serve import DemoServer, FrameBroadcaster, LiveControls, parse_address

    def snapshot() -> dict:
        pipeline = pipeline_now()
        return {"frames": stats.frames, "window": stats.window().to_dict(), "whole_run": stats.whole_run().to_dict(),
                "dropped": pipeline.dropped if pipeline else 0, "backend": backend, "fit": fit}

    broadcaster = FrameBroadcaster()
    try:
        server = DemoServer(parse_address(cfg.serve), broadcaster=broadcaster,
                            controls=LiveControls(style_for, cfg.mode, cfg.alpha), stats=snapshot,
                            legend=style.legend_entries, modes=MODES)
    except BaseException:
        broadcaster.close()
        raise
    return server.start()


def format_summary(summary: dict) -> str:
    """The summary as two lines for the terminal."""
    def figure(value: float | None) -> str:
        return "--" if value is None else f"{value:.1f}"

    latency, recent = summary["latency_ms"], summary["window"]
    stages = ", ".join(f"{stage} {value:.1f}" for stage, value in summary["stage_ms"].items()) or "no frame"
    lines = [f"demo: {summary['frames']} frames, {figure(summary['mean_fps'])} FPS ({summary['fps_over']}; "
             f"{recent['label']}: {figure(recent['fps'])} FPS), latency p50 {figure(latency['p50'])} ms / p99 "
             f"{figure(latency['p99'])} ms, dropped {summary['dropped_frames']}, reconnects "
             f"{summary['reconnects']}; stopped: {summary['stopped_by']}",
             f"demo: mean ms per frame ({summary['fps_over']}): {stages} ({summary['backend']}, fit {summary['fit']})"]
    if summary["saved"]:
        lines.append(f"demo: wrote {summary['saved']}")
    return "\n".join(lines)
