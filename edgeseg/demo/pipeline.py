"""The demo's threads and bookkeeping: capture -> inference -> rendering, with the stats the HUD and summary show.

Capture and inference run in worker threads so a slow camera read and a slow model overlap instead of adding up.
The inference thread does nothing but run the model: the capture thread pre-processes each frame it reads, and the
argmax that turns logits into labels runs on the caller's thread with the rendering, so every step that is not the
model overlaps the model. (On a 2-core CPU, pre-processing and argmax in the inference thread cost ~15% of the
frame rate.) Rendering, display and video writing stay on the caller's (main) thread: that is where Ctrl-C arrives
as KeyboardInterrupt, and where GUI toolkits want imshow.

Live sources hand frames over through a 1-slot `LatestSlot`: a new frame replaces one not yet taken (counted as
dropped), so the model always works on the newest frame and latency stays at about one frame. Files and folders
use a bounded queue instead: every frame is processed, the reader just waits when it is ahead.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Generic, Iterator, TypeVar

import numpy as np

from edgeseg.fit import Placement, fit_frame, is_dynamic, labels_to_frame, plan_fit
from edgeseg.demo.stats import STAGES, DemoStats  # noqa: F401 (DemoStats: re-exported for callers)
from edgeseg.runners.labels import labels_from_logits
from edgeseg.zoo.contract import Preprocessing

if TYPE_CHECKING:
    from edgeseg.demo.sources import FrameSource
    from edgeseg.runners.base import Runner

_POLL_S = 0.1  # how often blocked threads look at the stop flag
Item = TypeVar("Item")


@dataclass(frozen=True, eq=False)
class Frame:
    index: int  # position in the source (dropped frames leave gaps)
    image: np.ndarray  # BGR uint8, as read
    batch: np.ndarray  # the model's 1x3xHxW input, made from `image` by the capture thread
    captured_at: float  # time.perf_counter() when the read returned
    capture_ms: float
    preprocess_ms: float
    placement: Placement | None = None  # how `image` was fitted into `batch`; None: squeezed (the resize fit)


@dataclass(frozen=True, eq=False)
class Inference:
    """What the inference thread hands over: the model's raw output (argmax comes later, off that thread)."""

    frame: Frame
    output: np.ndarray
    infer_ms: float


@dataclass(frozen=True, eq=False)
class Prediction:
    frame: Frame
    labels: np.ndarray  # HxW uint8 at the frame's resolution (pad cut off, crop edges VOID)
    infer_ms: float
    postprocess_ms: float  # logits -> labels (argmax) -> frame, on the caller's thread


class ChannelClosed(Exception):
    """The producer has finished and nothing is left to take."""


class LatestSlot(Generic[Item]):
    """A 1-slot buffer for live sources: put() replaces an item not yet taken and counts it in `dropped`."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._item: Item | None = None
        self._full = False
        self._closed = False
        self.dropped = 0

    def put(self, item: Item) -> bool:
        """Store item (never blocks); False once the slot is closed."""
        with self._ready:
            if self._closed:
                return False
            if self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self._ready.notify()
            return True

    def get(self, timeout: float | None = None) -> Item:
        """The newest item; queue.Empty after `timeout`, ChannelClosed once closed and empty."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._full or self._closed, timeout):
                raise queue.Empty
            if not self._full:
                raise ChannelClosed
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


class BoundedChannel(Generic[Item]):
    """A FIFO of at most `capacity` items for files: put() waits for room, so nothing is dropped."""

    dropped = 0

    def __init__(self, capacity: int) -> None:
        self._items: collections.deque[Item] = collections.deque()
        self._capacity = capacity
        self._changed = threading.Condition()
        self._closed = False

    def put(self, item: Item) -> bool:
        """Append item, waiting while full; False once closed (the consumer has gone)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._items) < self._capacity or self._closed)
            if self._closed:
                return False
            self._items.append(item)
            self._changed.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Item:
        with self._changed:
            if not self._changed.wait_for(lambda: self._items or self._closed, timeout):
                raise queue.Empty
            if not self._items:
                raise ChannelClosed
            item = self._items.popleft()
            self._changed.notify_all()
            return item

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


def preprocess(image_bgr: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """BGR frame -> the model's 1x3xHxW input, squeezed to the input size (the `resize` fit)."""
    placement = plan_fit(image_bgr.shape[:2], preprocessing, "resize")
    return fit_frame(image_bgr, placement, preprocessing)


def labels_from_output(output: np.ndarray, output_kind: str) -> np.ndarray:
    """Model output -> HxW uint8 labels at the model's resolution. The argmax runs before any upscaling: resizing
    K channels of logits to the frame costs K times more than resizing one label map."""
    output = np.asarray(output)
    if output_kind == "labels":
        return np.ascontiguousarray(output.reshape(output.shape[-2:]).astype(np.uint8, copy=False))
    return labels_from_logits(output)


class Pipeline:
    """Runs capture and inference threads and yields predictions to the caller's thread.

    The capture thread owns the source and closes it: releasing an OpenCV capture while another thread is inside
    read() can crash FFmpeg."""

    def __init__(self, source: FrameSource, runner: Runner, *, stop_event: threading.Event, keep_latest_only: bool,
                 pace_fps: float | None = None, queue_size: int = 2, fit: str | None = None) -> None:
        self.source = source
        self.runner = runner
        self.fit = fit  # None: the model contract's choice
        self.stop_event = stop_event
        self.pace_fps = pace_fps  # --realtime for files: read at the file's own rate
        self.frames_in: LatestSlot[Frame] | BoundedChannel[Frame] = (LatestSlot() if keep_latest_only
                                                                     else BoundedChannel(queue_size))
        # With live sources a slow renderer must not let predictions pile up: one in hand is enough.
        self.predictions_out: BoundedChannel[Inference] = BoundedChannel(1 if keep_latest_only else queue_size)
        self.captured = 0
        self.error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._guarded(self._capture_loop), name="edgeseg-demo-capture", daemon=True),
            threading.Thread(target=self._guarded(self._inference_loop), name="edgeseg-demo-infer", daemon=True),
        ]

    @property
    def dropped(self) -> int:
        return self.frames_in.dropped

    def start(self) -> "Pipeline":
        for thread in self._threads:
            thread.start()
        return self

    def predictions(self) -> Iterator[Prediction]:
        """Predictions in order until the source ends, a worker fails or stop() is called. The argmax runs here,
        on the caller's thread, while the inference thread already works on the next frame."""
        output_kind = self.runner.output_kind
        while True:
            try:
                item = self.predictions_out.get(timeout=_POLL_S)
            except queue.Empty:
                if self.stop_event.is_set():
                    return
                continue
            except ChannelClosed:
                return
            started = time.perf_counter()
            labels = labels_from_output(item.output, output_kind)
            placement = item.frame.placement or plan_fit(item.frame.image.shape[:2],
                                                         self.runner.preprocessing.with_size(labels.shape), "resize")
            labels = labels_to_frame(labels, placement)
            yield Prediction(item.frame, labels, item.infer_ms, (time.perf_counter() - started) * 1000.0)

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Ask the threads to finish and wait for them; False when one is still stuck (e.g. in a stream read)."""
        self.stop_event.set()
        self.frames_in.close()
        self.predictions_out.close()
        if self._threads[0].ident is None:  # never started: the capture thread cannot close the source
            self.source.close()
        deadline = time.perf_counter() + timeout_s
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(max(0.0, deadline - time.perf_counter()))
        return not any(thread.is_alive() for thread in self._threads)

    def _guarded(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except BaseException as exc:  # noqa: BLE001 (handed to the main thread, which re-raises it)
                self.error = self.error or exc
                self.stop_event.set()
                self.frames_in.close()
                self.predictions_out.close()

        return run

    def _capture_loop(self) -> None:
        preprocessing = self.runner.preprocessing
        dynamic = is_dynamic(getattr(getattr(self.runner, "input_spec", None), "shape", ()))
        placements: dict[tuple[int, int], Placement] = {}  # per frame size: a camera may come back at another
        try:
            started = time.perf_counter()
            while not self.stop_event.is_set():
                if self.pace_fps:
                    due = started + self.captured / self.pace_fps
                    if self.stop_event.wait(max(0.0, due - time.perf_counter())):
                        break
                read_from = time.perf_counter()
                image = self.source.read()
                read_at = time.perf_counter()
                if image is None:
                    break
                size = image.shape[:2]
                placement = placements.get(size) or placements.setdefault(
                    size, plan_fit(size, preprocessing, self.fit, dynamic))
                batch = fit_frame(image, placement, preprocessing)
                frame = Frame(self.captured, image, batch, read_at, (read_at - read_from) * 1000.0,
                              (time.perf_counter() - read_at) * 1000.0, placement)
                self.captured += 1
                if not self.frames_in.put(frame):
                    break
        finally:
            self.frames_in.close()
            self.source.close()

    def _inference_loop(self) -> None:
        try:
            while not self.stop_event.is_set():
                try:
                    frame = self.frames_in.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                except ChannelClosed:
                    break
                started = time.perf_counter()
                output = self.runner.infer(frame.batch)
                inference = Inference(frame, output, (time.perf_counter() - started) * 1000.0)
                if not self.predictions_out.put(inference):
                    break
        finally:
            self.predictions_out.close()
