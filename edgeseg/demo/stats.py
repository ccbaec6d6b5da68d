"""The demo's one source of truth for frame rate and stage times.

The HUD, the web page and the summary printed at exit all read the same recorder with the same formula: frames
shown minus one over the time between the first and the last of them (so model loading and warm-up do not count).
The HUD and the web page show it over a window of recent frames, the summary over the whole run, and each says
which. Before there is anything to measure (no frame yet for stage times, fewer than two frames for a rate) the
figures are None, shown as "--", never as a misleading 0.0.

`record` runs on the output thread and the web server's threads read snapshots, so every access takes a lock.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

import numpy as np

STAGES = ("capture", "preprocess", "infer", "postprocess", "render")
WINDOW_FRAMES = 30


@dataclass(frozen=True)
class Rates:
    """Frame rate and mean per-stage milliseconds over some frames; None where nothing was measured yet."""

    frames: int
    fps: float | None
    stage_ms: dict[str, float] | None
    label: str  # "last 30 frames" or "whole run": every figure shown says what it covers

    def to_dict(self) -> dict:
        return {"frames": self.frames, "fps": None if self.fps is None else round(self.fps, 2), "label": self.label,
                "stage_ms": None if self.stage_ms is None else {k: round(v, 2) for k, v in self.stage_ms.items()}}


def frame_rate(frames: int, first_at: float | None, last_at: float | None) -> float | None:
    """Frames per second between the first and last of `frames` frames shown (None for fewer than two)."""
    if frames < 2 or first_at is None or last_at is None or last_at <= first_at:
        return None
    return (frames - 1) / (last_at - first_at)


class DemoStats:
    """Per-frame timings: a rolling window for the HUD and the web page, running totals for the summary."""

    def __init__(self, window: int = WINDOW_FRAMES) -> None:
        self.window_frames = window
        self.latencies_ms: list[float] = []
        self.stage_totals_ms = dict.fromkeys(STAGES, 0.0)
        self.recent_ms = {stage: collections.deque(maxlen=window) for stage in STAGES}
        self.rendered_at: collections.deque = collections.deque(maxlen=window)
        self.first_rendered_at: float | None = None
        self.last_rendered_at: float | None = None
        self.frames = 0
        self._lock = threading.Lock()

    def record(self, stage_ms: dict[str, float], captured_at: float, rendered_at: float) -> None:
        with self._lock:
            for stage in STAGES:
                self.stage_totals_ms[stage] += stage_ms[stage]
                self.recent_ms[stage].append(stage_ms[stage])
            self.latencies_ms.append((rendered_at - captured_at) * 1000.0)
            self.rendered_at.append(rendered_at)
            if self.first_rendered_at is None:
                self.first_rendered_at = rendered_at
            self.last_rendered_at = rendered_at
            self.frames += 1

    def window(self) -> Rates:
        """The last `window` frames: what the HUD and the web page show."""
        with self._lock:
            shown = len(self.rendered_at)
            fps = frame_rate(shown, self.rendered_at[0], self.rendered_at[-1]) if shown else None
            stages = {stage: float(np.mean(values)) for stage, values in self.recent_ms.items()} if shown else None
            return Rates(shown, fps, stages, f"last {self.window_frames} frames")

    def whole_run(self) -> Rates:
        """Every frame since the first one shown: what the summary reports."""
        with self._lock:
            fps = frame_rate(self.frames, self.first_rendered_at, self.last_rendered_at)
            stages = ({stage: total / self.frames for stage, total in self.stage_totals_ms.items()}
                      if self.frames else None)
            return Rates(self.frames, fps, stages, "whole run")

    def summary(self) -> dict:
        """frames, mean FPS and mean per-stage times over the whole run, p50/p99 capture->shown latency, and the
        last window's FPS (the HUD's final figure), labelled, so the two can be told apart."""
        run, recent = self.whole_run(), self.window()
        with self._lock:
            latencies = np.asarray(self.latencies_ms) if self.latencies_ms else None
        return {
            "frames": run.frames,
            "mean_fps": None if run.fps is None else round(run.fps, 2),
            "fps_over": run.label,
            "latency_ms": {"p50": None if latencies is None else round(float(np.percentile(latencies, 50)), 2),
                           "p99": None if latencies is None else round(float(np.percentile(latencies, 99)), 2)},
            "stage_ms": {stage: round(value, 2) for stage, value in (run.stage_ms or {}).items()},
            "window": recent.to_dict(),
        }
