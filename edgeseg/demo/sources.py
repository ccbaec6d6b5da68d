"""Frame sources: a camera (index or /dev/videoN), a network stream (rtsp://, http://), a video file or a folder of
images. Every source yields BGR uint8 frames from `read()` and None when it has ended.

Live sources (cameras, streams) reconnect with exponential backoff when a read fails, because USB cables wiggle and
Wi-Fi cameras drop; files and folders simply end.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np

from edgeseg.errors import UsageError

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FOLDER_FPS = 10.0  # an image folder has no frame rate; this is what --save and --realtime use for it
SOURCE_HINT = "give a camera index (0), /dev/videoN, a video file, an rtsp:// URL or an image folder"


def log_to_stderr(message: str) -> None:
    print(f"edgeseg: {message}", file=sys.stderr)


@dataclass(frozen=True)
class SourceSpec:
    """What --source names, resolved: kind is camera, stream, file or folder."""

    kind: str
    target: int | str  # camera index, device path, URL, file or folder path
    text: str  # as the user wrote it

    @property
    def live(self) -> bool:
        """Live sources produce frames whether or not we read them: keep only the newest, reconnect on loss."""
        return self.kind in ("camera", "stream")

    def describe(self) -> str:
        if self.kind == "stream":
            # Never echo rtsp://user:password@host into logs.
            return "stream " + re.sub(r"//[^/@]*@", "//***@", self.text)
        return {"camera": "camera", "file": "video", "folder": "image folder"}[self.kind] + f" {self.text}"


def parse_source(text: str | int) -> SourceSpec:
    """Resolve --source; errors here are one line saying what was expected."""
    text = str(text).strip()
    if text.isdigit():
        return SourceSpec("camera", int(text), text)
    if text.startswith("/dev/video"):
        if not Path(text).exists():
            present = sorted(str(path) for path in Path("/dev").glob("video*"))
            found = f"cameras here: {', '.join(present)}" if present else "no camera is connected (no /dev/video*)"
            raise UsageError(f"camera {text} does not exist; {found}")
        return SourceSpec("camera", text, text)
    if text.lower().startswith(STREAM_SCHEMES):
        return SourceSpec("stream", text, text)
    path = Path(text).expanduser()
    if path.is_dir():
        return SourceSpec("folder", str(path), text)
    if path.is_file():
        return SourceSpec("file", str(path), text)
    raise UsageError(f"source {text!r} not found; {SOURCE_HINT}")


@dataclass(frozen=True)
class Backoff:
    """Reconnect schedule for live sources: `attempts` tries, waiting first_delay_s, then twice as long each time,
    at most max_delay_s (a camera that is replugged comes back in seconds; hammering it does not help)."""

    attempts: int = 5
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def __post_init__(self):
        if self.attempts < 0 or self.first_delay_s < 0 or self.max_delay_s < self.first_delay_s:
            raise UsageError("reconnect settings need attempts >= 0 and 0 <= first delay <= max delay")

    def delays(self) -> list[float]:
        return [min(self.first_delay_s * 2 ** attempt, self.max_delay_s) for attempt in range(self.attempts)]


class Capture(Protocol):
    """The part of cv2.VideoCapture the sources use; tests inject fakes through a capture factory."""

    def isOpened(self) -> bool: ...  # noqa: N802 (OpenCV's name)

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def get(self, prop: int) -> float: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[int | str], Capture]


@contextlib.contextmanager
def _quiet_opencv():
    """OpenCV prints several WARN lines when a camera cannot be opened; our one-line error says it better."""
    try:
        from cv2.utils import logging as cv_logging
    except ImportError:  # builds without the logging module: just let OpenCV talk
        yield
        return
    previous = cv_logging.getLogLevel()
    cv_logging.setLogLevel(cv_logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv_logging.setLogLevel(previous)


STREAM_TIMEOUT_MS = 5000  # a dead network stream fails a read in 5 s (FFmpeg's default wait is far longer)


def opencv_capture(target: int | str) -> Capture:
    with _quiet_opencv():
        if isinstance(target, str) and target.lower().startswith(STREAM_SCHEMES):
            # RTSP over TCP: UDP loses packets on Wi-Fi and the frames smear; an explicit OPENCV_FFMPEG_CAPTURE_OPTIONS
            # from the user still wins.
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
            capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                                                                cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS])
        else:
            capture = cv2.VideoCapture(target)
    if capture.isOpened() and (isinstance(target, int) or str(target).startswith("/dev/video")):
        # A driver-side queue of old frames is latency; ask for one buffered frame (ignored where unsupported).
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return capture


class VideoSource:
    """A camera, stream or video file read through OpenCV (or an injected capture factory)."""

    def __init__(self, spec: SourceSpec, backoff: Backoff = Backoff(), capture_factory: CaptureFactory | None = None,
                 log: Callable[[str], None] = log_to_stderr, stop_event: threading.Event | None = None):
        self.spec = spec
        self.backoff = backoff
        self._factory = capture_factory or opencv_capture
        self._log = log
        self._stop_event = stop_event or threading.Event()
        self.reconnects = 0  # reconnect attempts made
        self.lost = False  # True once a live source could not be reconnected
        self._capture = self._factory(spec.target)
        if not self._capture.isOpened():
            self._capture.release()
            raise UsageError(self._open_error())
        reported = self._capture.get(cv2.CAP_PROP_FPS)
        # Cameras and streams often report 0 or nonsense (90000, the RTP clock); fall back to a common rate.
        self.fps = float(reported) if 1.0 <= reported <= 240.0 else 30.0

    @property
    def live(self) -> bool:
        return self.spec.live

    def _open_error(self) -> str:
        if self.spec.kind == "camera":
            return (f"camera {self.spec.text} could not be opened; check it is connected and not used by another "
                    f"program, or pass a video file with --source")
        if self.spec.kind == "stream":
            return f"{self.spec.describe()} could not be opened; check the URL and that the camera is reachable"
        return f"video {self.spec.text} could not be opened by OpenCV; is it a video file (.mp4, .avi, .mkv)?"

    def read(self) -> np.ndarray | None:
        ok, frame = self._capture.read()
        if ok and frame is not None:
            return frame
        if not self.live:
            return None  # end of file
        return self._reconnect()

    def _reconnect(self) -> np.ndarray | None:
        """Reopen a live source, waiting longer before each attempt; None when it stays gone or we are stopping."""
        self._capture.release()
        delays = self.backoff.delays()
        for attempt, delay in enumerate(delays, start=1):
            self._log(f"{self.spec.describe()} dropped; reconnect attempt {attempt}/{len(delays)} in {delay:.2f} s")
            if self._stop_event.wait(delay):  # a stop request (Ctrl-C) must not sit out the backoff
                return None
            self.reconnects += 1
            capture = self._factory(self.spec.target)
            if capture.isOpened():
                ok, frame = capture.read()
                if ok and frame is not None:
                    self._capture = capture
                    self._log(f"{self.spec.describe()} reconnected")
                    return frame
            capture.release()
        self.lost = True
        self._log(f"{self.spec.describe()} lost: gave up after {len(delays)} reconnect attempts")
        return None

    def close(self) -> None:
        self._capture.release()


class ImageFolderSource:
    """The images of a folder, sorted by file name (so frame_0001.png, frame_0002.png ... play in order)."""

    live = False
    reconnects = 0
    lost = False

    def __init__(self, spec: SourceSpec, log: Callable[[str], None] = log_to_stderr):
        self.spec = spec
        self._log = log
        self.paths = sorted(path for path in Path(spec.target).iterdir()
                            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise UsageError(f"image folder {spec.text} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.fps = FOLDER_FPS
        self._next = 0

    def read(self) -> np.ndarray | None:
        while self._next < len(self.paths):
            path = self.paths[self._next]
            self._next += 1
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is not None:
                return frame
            self._log(f"skipping {path.name}: not a readable image")
        return None

    def close(self) -> None:
        pass


FrameSource = VideoSource | ImageFolderSource


def open_source(spec: SourceSpec, backoff: Backoff = Backoff(), capture_factory: CaptureFactory | None = None,
                log: Callable[[str], None] = log_to_stderr, stop_event: threading.Event | None = None) -> FrameSource:
    if spec.kind == "folder":
        return ImageFolderSource(spec, log=log)
    return VideoSource(spec, backoff=backoff, capture_factory=capture_factory, log=log, stop_event=stop_event)

