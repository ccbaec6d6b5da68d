"""Frame sources: a camera (index, /dev/videoN, v4l2:///dev/videoN or a MIPI CSI camera csi://N), a network stream
(rtsp://, http://), a video file or a folder of images. Every source yields BGR uint8 frames from `read()` and None
when it has ended.

CSI cameras, v4l2:// cameras, video files and RTSP streams are opened through a GStreamer pipeline (edgeseg.demo.gst:
nvarguscamerasrc, hardware decode with nvv4l2decoder) when OpenCV has GStreamer and the pipeline's elements exist,
else through OpenCV's own backends (FFmpeg, V4L2); `plan_capture` decides, and the log says which was used.

Live sources (cameras, streams) reconnect with exponential backoff when a read fails, because USB cables wiggle and
Wi-Fi cameras drop; files and folders simply end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import cv2
import numpy as np

from edgeseg.demo import gst
from edgeseg.errors import UsageError

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FOLDER_FPS = 10.0  # an image folder has no frame rate; this is what --save and --realtime use for it
SOURCE_HINT = ("give a camera index (0), /dev/videoN, v4l2:///dev/videoN, csi://N, a video file, an rtsp:// URL or an "
               "image folder")


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSpec:
    """What --source names, resolved: kind is camera, csi, stream, file or folder."""

    kind: str
    target: int | str  # camera index or sensor id, device path, URL (without an options fragment), file or folder
    text: str  # as the user wrote it
    options: tuple[tuple[str, str], ...] = ()  # csi://0?width=1280, v4l2:///dev/video0?format=MJPG, rtsp://..#codec=h265
    v4l2: bool = False  # written v4l2:///dev/videoN: through GStreamer's v4l2src when it can

    @property
    def live(self) -> bool:
        """Live sources produce frames whether or not we read them: keep only the newest, reconnect on loss."""
        return self.kind in ("camera", "csi", "stream")

    @property
    def option_map(self) -> dict[str, str]:
        return dict(self.options)

    def describe(self) -> str:
        if self.kind == "stream":
            # Never echo rtsp://user:password@host into logs.
            return "stream " + re.sub(r"//[^/@]*@", "//***@", self.text)
        return {"camera": "camera", "csi": "CSI camera", "file": "video",
                "folder": "image folder"}[self.kind] + f" {self.text}"


def _check_camera_device(device: str) -> None:
    if not Path(device).exists():
        present = sorted(str(path) for path in Path("/dev").glob("video*"))
        found = f"cameras here: {', '.join(present)}" if present else "no camera is connected (no /dev/video*)"
        raise UsageError(f"camera {device} does not exist; {found}")


def parse_source(text: str | int, check_device: bool = True) -> SourceSpec:
    """Resolve --source; errors here are one line saying what was expected. `check_device` False skips the
    /dev/videoN existence check (--print-pipeline renders a pipeline for a camera plugged in elsewhere)."""
    text = str(text).strip()
    if text.isdigit():
        return SourceSpec("camera", int(text), text)
    lowered = text.lower()
    if lowered.startswith("csi://"):
        sensor, _, query = text[len("csi://"):].partition("?")
        if not sensor.isdigit():
            raise UsageError(f"source {text!r}: write csi://N with the sensor id N, e.g. csi://0?width=1280&height=720")
        options = gst.parse_options(query, gst.CSI_OPTIONS, f"source {text}")
        gst.csi_options(int(sensor), options, f"source {text}")  # validates now, not when the camera opens
        return SourceSpec("csi", int(sensor), text, tuple(options.items()))
    if lowered.startswith("v4l2://"):
        device, _, query = text[len("v4l2://"):].partition("?")
        if not device.startswith("/dev/video"):
            raise UsageError(f"source {text!r}: write v4l2:///dev/videoN (three slashes), e.g. v4l2:///dev/video0")
        options = gst.parse_options(query, gst.V4L2_OPTIONS, f"source {text}")
        gst.v4l2_options(device, options, f"source {text}")
        if check_device:
            _check_camera_device(device)
        return SourceSpec("camera", device, text, tuple(options.items()), v4l2=True)
    if text.startswith("/dev/video"):
        if check_device:
            _check_camera_device(text)
        return SourceSpec("camera", text, text)
    if lowered.startswith(("rtsp://", "rtsps://")) and "#" in text:
        url, _, fragment = text.partition("#")
        options = gst.parse_options(fragment, gst.RTSP_OPTIONS, "source " + gst.mask_credentials(url))
        gst.rtsp_settings(options, "source " + gst.mask_credentials(url))
        return SourceSpec("stream", url, text, tuple(options.items()))
    if lowered.startswith(STREAM_SCHEMES):
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

    def __post_init__(self) -> None:
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
def _quiet_opencv() -> Iterator[None]:
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
                 stop_event: threading.Event | None = None) -> None:
        self.spec = spec
        self.backoff = backoff
        self._factory = capture_factory or opencv_capture
        self._stop_event = stop_event or threading.Event()
        self.reconnects = 0  # reconnect attempts made
        self.capture_backend = "injected" if capture_factory else "opencv"  # open_source says gstreamer
        self.capture_note: str | None = None  # how it was opened, for the log (open_source)
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
        if self.spec.kind == "csi":
            return (f"CSI camera {self.spec.target} could not be opened through nvarguscamerasrc; check the ribbon "
                    "cable and that nvargus-daemon runs ('sudo systemctl restart nvargus-daemon')")
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
            log.warning(f"{self.spec.describe()} dropped; reconnect attempt {attempt}/{len(delays)} in {delay:.2f} s")
            if self._stop_event.wait(delay):  # a stop request (Ctrl-C) must not sit out the backoff
                return None
            self.reconnects += 1
            capture = self._factory(self.spec.target)
            if capture.isOpened():
                ok, frame = capture.read()
                if ok and frame is not None:
                    self._capture = capture
                    log.info(f"{self.spec.describe()} reconnected")
                    return frame
            capture.release()
        self.lost = True
        log.warning(f"{self.spec.describe()} lost: gave up after {len(delays)} reconnect attempts")
        return None

    def close(self) -> None:
        self._capture.release()


class ImageFolderSource:
    """The images of a folder, sorted by file name (so frame_0001.png, frame_0002.png ... play in order)."""

    live = False
    reconnects = 0
    lost = False

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
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
            log.warning(f"skipping {path.name}: not a readable image")
        return None

    def close(self) -> None:
        pass


FrameSource = VideoSource | ImageFolderSource


@dataclass(frozen=True)
class CapturePlan:
    """How a source is opened here: backend gstreamer, opencv or unavailable, the GStreamer pipeline (also when it
    is not used: what it would be) and one line saying why."""

    backend: str
    pipeline: str | None
    note: str


def render_pipeline(spec: SourceSpec, codec: str | None = None, hardware_jpeg: bool = True) -> str | None:
    """The GStreamer pipeline for `spec` (pure); None where there is none (camera index, /dev/videoN written
    plainly, http/udp streams, image folders). `codec` is the video file's, as probe_file_codec reads it."""
    where = f"source {gst.mask_credentials(spec.text)}"
    options = spec.option_map
    if spec.kind == "csi":
        return gst.csi_pipeline(gst.csi_options(int(spec.target), options, where))
    if spec.kind == "camera" and spec.v4l2:
        return gst.v4l2_pipeline(gst.v4l2_options(str(spec.target), options, where), hardware_jpeg)
    if spec.kind == "file":
        return gst.file_pipeline(str(spec.target), codec)
    if spec.kind == "stream" and str(spec.target).lower().startswith(("rtsp://", "rtsps://")):
        codec_name, latency = gst.rtsp_settings(options, where)
        return gst.rtsp_pipeline(str(spec.target), codec_name, latency)
    return None


def plan_capture(spec: SourceSpec, opencv_gstreamer: bool, exists: Callable[[str], bool],
                 codec: str | None = None, checker: str | None = "gst-inspect-1.0") -> CapturePlan:
    """Decide GStreamer or OpenCV's own backend for `spec` from the machine's facts (pure): OpenCV's build, which
    elements exist, and what could look them up (`checker`)."""
    if spec.kind == "folder":
        return CapturePlan("opencv", None, "image folder: each file is read with cv2.imread; no pipeline")
    pipeline = render_pipeline(spec, codec, hardware_jpeg=exists("nvv4l2decoder"))
    if pipeline is None:
        how = ("OpenCV's V4L2 backend opens the camera directly; write v4l2:///dev/videoN for a GStreamer pipeline"
               if spec.kind == "camera" else "OpenCV's FFmpeg backend decodes the stream (software)")
        return CapturePlan("opencv", None, how)
    missing = gst.missing_elements(pipeline, exists) if opencv_gstreamer else []
    if opencv_gstreamer and not missing:
        decoder = " with hardware decode (nvv4l2decoder)" if "nvv4l2decoder" in pipeline else ""
        return CapturePlan("gstreamer", pipeline, f"GStreamer{decoder}")
    why = ("this OpenCV has no GStreamer (cv2.getBuildInformation)" if not opencv_gstreamer
           else f"GStreamer elements missing here: {', '.join(missing)}"
           + ("" if checker else " (no gst-inspect-1.0 or PyGObject to look them up: install gstreamer1.0-tools)"))
    if spec.kind == "csi":
        return CapturePlan("unavailable", pipeline, f"a CSI camera needs OpenCV with GStreamer and nvarguscamerasrc "
                                                    f"(JetPack); {why}")
    fallback = {"file": "OpenCV's FFmpeg backend (software decode)", "stream": "OpenCV's FFmpeg backend "
                "(software decode)", "camera": "OpenCV's V4L2 backend"}[spec.kind]
    ignored = f"; options {', '.join(k for k, _ in spec.options)} not applied" if spec.options else ""
    return CapturePlan("opencv", pipeline, f"{fallback}, because {why}{ignored}")


def probe_file_codec(path: str) -> str | None:
    """The video codec of a file as FFmpeg reports it (cv2.CAP_PROP_FOURCC): h264, h265, vp9, mpeg4, ...;
    None when it cannot be read."""
    with _quiet_opencv():
        capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        code = int(capture.get(cv2.CAP_PROP_FOURCC)) if capture.isOpened() else 0
    finally:
        capture.release()
    fourcc = "".join(chr((code >> (8 * index)) & 0xFF) for index in range(4)).strip("\x00 ").lower()
    return gst.FOURCC_CODECS.get(fourcc)


def capture_plan_here(spec: SourceSpec) -> CapturePlan:
    """plan_capture with this machine's facts (OpenCV's build, gst-inspect-1.0, the file's codec)."""
    has_gstreamer = gst.opencv_has_gstreamer()
    codec = probe_file_codec(str(spec.target)) if spec.kind == "file" else None
    return plan_capture(spec, has_gstreamer, gst.element_exists, codec,
                        gst.element_checker_here() if has_gstreamer else None)


def gstreamer_capture(pipeline: str) -> Capture:
    with _quiet_opencv():
        return cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)


def open_source(spec: SourceSpec, backoff: Backoff = Backoff(), capture_factory: CaptureFactory | None = None,
                stop_event: threading.Event | None = None) -> FrameSource:
    """Open `spec`; without an injected capture_factory, through GStreamer or OpenCV as capture_plan_here decides,
    saying which in the log."""
    if spec.kind == "folder":
        return ImageFolderSource(spec)
    if capture_factory is not None:  # tests: the injected capture stands for the camera, whatever the backend
        return VideoSource(spec, backoff=backoff, capture_factory=capture_factory, stop_event=stop_event)
    plan = capture_plan_here(spec)
    if plan.backend == "unavailable":
        raise UsageError(plan.note)
    if plan.backend == "gstreamer":
        pipeline = plan.pipeline
        capture_factory = lambda _target: gstreamer_capture(pipeline)  # noqa: E731 (reopened on reconnect)
    source = VideoSource(spec, backoff=backoff, capture_factory=capture_factory, stop_event=stop_event)
    source.capture_backend = plan.backend
    # Said by the demo's start line (not here, so that a later error stays the only line of a failed start).
    source.capture_note = plan.note + (f": {gst.mask_credentials(plan.pipeline)}" if plan.backend == "gstreamer"
                                       else "")
    return source


def pipeline_for(text: str) -> str:
    """`edgeseg demo --source SRC --print-pipeline`: the pipeline (credentials masked; the command prints it on
    stdout), whether or not this machine could open it; which backend this machine would use goes to the log."""
    spec = parse_source(text, check_device=False)
    plan = capture_plan_here(spec)
    log.info(f"capture here: {plan.backend}: {plan.note}")
    return gst.mask_credentials(plan.pipeline) if plan.pipeline else f"# no GStreamer pipeline for {spec.describe()}"
