"""GStreamer capture pipelines for a Jetson: MIPI CSI cameras (nvarguscamerasrc), V4L2 cameras, and video files
and RTSP streams decoded by the hardware decoder (nvv4l2decoder).

Rendering a pipeline is a pure function of the source and its options, so every variant is tested anywhere;
whether it is used depends on two facts of the machine, read lazily and only when a source is opened:
OpenCV's build has GStreamer (cv2.getBuildInformation) and the elements exist (gst-inspect-1.0 --exists).
Every pipeline ends in BGR frames at an appsink that keeps only the newest buffer (drop=true max-buffers=1),
which is what the demo's latest-frame capture thread wants; the NVMM-to-system-memory copy is nvvidconv's
(VIC hardware), and videoconvert only drops the 4th byte of BGRx (OpenCV takes BGR, nvvidconv cannot output it).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType

from edgeseg.errors import UsageError

# Every element a pipeline from this module may use; `edgeseg doctor` imports it to probe the machine.
GSTREAMER_ELEMENTS = (
    "nvarguscamerasrc", "v4l2src", "filesrc", "rtspsrc",
    "qtdemux", "matroskademux", "avidemux", "tsdemux",
    "h264parse", "h265parse", "vp8parse", "vp9parse", "av1parse", "mpegvideoparse", "mpeg4videoparse", "jpegparse",
    "rtph264depay", "rtph265depay", "rtpvp8depay", "rtpvp9depay", "rtpav1depay",
    "nvv4l2decoder", "jpegdec", "nvvidconv", "videoconvert", "appsink",
)
# What the sample line of a bundle's DeepStream README uses (engine.deepstream).
DEEPSTREAM_ELEMENTS = ("nvstreammux", "nvinfer", "nvsegvisual", "nvvideoconvert", "nveglglessink")

APPSINK = "appsink drop=true max-buffers=1 sync=false"
TO_BGR = "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR"

# codec -> (parser, RTP depayloader); all of them are decoded by nvv4l2decoder (AV1 on Orin only).
CODECS: Mapping[str, tuple[str | None, str]] = {
    "h264": ("h264parse", "rtph264depay"),
    "h265": ("h265parse", "rtph265depay"),
    "vp8": ("vp8parse", "rtpvp8depay"),
    "vp9": ("vp9parse", "rtpvp9depay"),
    "av1": ("av1parse", "rtpav1depay"),
    "mpeg2": ("mpegvideoparse", ""),
    "mpeg4": ("mpeg4videoparse", ""),
}
DEMUXERS = {".mp4": "qtdemux", ".mov": "qtdemux", ".m4v": "qtdemux", ".mkv": "matroskademux",
            ".webm": "matroskademux", ".avi": "avidemux", ".ts": "tsdemux", ".mts": "tsdemux"}
RAW_STREAMS = {".h264": "h264", ".264": "h264", ".h265": "h265", ".265": "h265", ".hevc": "h265"}
# FFmpeg's FOURCC for a file (cv2.CAP_PROP_FOURCC) -> codec
FOURCC_CODECS = {"avc1": "h264", "h264": "h264", "x264": "h264", "hev1": "h265", "hvc1": "h265", "hevc": "h265",
                 "h265": "h265", "vp80": "vp8", "vp90": "vp9", "av01": "av1", "mpg2": "mpeg2", "mp4v": "mpeg4",
                 "fmp4": "mpeg4", "xvid": "mpeg4", "divx": "mpeg4"}

CSI_OPTIONS = ("sensor-mode", "width", "height", "fps", "flip")
V4L2_OPTIONS = ("width", "height", "fps", "format")
RTSP_OPTIONS = ("codec", "latency")
V4L2_FORMATS = {"yuyv": "YUY2", "yuy2": "YUY2", "mjpg": "MJPG", "mjpeg": "MJPG", "nv12": "NV12"}


@dataclass(frozen=True)
class CsiOptions:
    sensor_id: int = 0
    sensor_mode: int | None = None  # None: the driver picks the mode that fits width/height/fps
    width: int = 1920
    height: int = 1080
    fps: int = 30
    flip: int = 0  # nvvidconv flip-method: 0 none, 2 rotate 180, 4 horizontal, 6 vertical ...


@dataclass(frozen=True)
class V4l2Options:
    device: str = "/dev/video0"
    width: int | None = None
    height: int | None = None
    fps: int | None = None
    format: str | None = None  # YUY2, MJPG, NV12; None: whatever the camera offers first


def quote(value: str) -> str:
    """A property value for gst_parse_launch: double-quoted, with \\ and " escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def csi_pipeline(options: CsiOptions) -> str:
    mode = f" sensor-mode={options.sensor_mode}" if options.sensor_mode is not None else ""
    return (f"nvarguscamerasrc sensor-id={options.sensor_id}{mode} ! "
            f"video/x-raw(memory:NVMM),width={options.width},height={options.height},"
            f"framerate={options.fps}/1,format=NV12 ! nvvidconv flip-method={options.flip} ! {TO_BGR} ! {APPSINK}")


def v4l2_pipeline(options: V4l2Options, hardware_jpeg: bool = True) -> str:
    """A V4L2 camera; MJPG is decoded by nvv4l2decoder (mjpeg=1) when `hardware_jpeg`, else by jpegdec."""
    caps = [f"{key}={value}" for key, value in (("width", options.width), ("height", options.height))
            if value is not None]
    if options.fps is not None:
        caps.append(f"framerate={options.fps}/1")
    source = f"v4l2src device={quote(options.device)}"
    if options.format == "MJPG":
        head = ",".join(["image/jpeg", *caps])
        if hardware_jpeg:
            return f"{source} ! {head} ! jpegparse ! nvv4l2decoder mjpeg=1 ! nvvidconv ! {TO_BGR} ! {APPSINK}"
        return f"{source} ! {head} ! jpegdec ! videoconvert ! video/x-raw,format=BGR ! {APPSINK}"
    head = ",".join(["video/x-raw", *([f"format={options.format}"] if options.format else []), *caps])
    return f"{source} ! {head} ! videoconvert ! video/x-raw,format=BGR ! {APPSINK}"


def file_pipeline(path: str, codec: str | None) -> str:
    """A video file decoded by nvv4l2decoder; an unknown container or codec goes through decodebin, which
    still picks nvv4l2decoder on a Jetson (it has the highest rank there)."""
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    source = f"filesrc location={quote(path)}"
    if suffix in RAW_STREAMS:
        codec = RAW_STREAMS[suffix]
        return f"{source} ! {CODECS[codec][0]} ! nvv4l2decoder ! nvvidconv ! {TO_BGR} ! {APPSINK}"
    demuxer = DEMUXERS.get(suffix)
    if demuxer is None or codec not in CODECS:
        return f"{source} ! decodebin ! nvvidconv ! {TO_BGR} ! {APPSINK}"
    return f"{source} ! {demuxer} ! {CODECS[codec][0]} ! nvv4l2decoder ! nvvidconv ! {TO_BGR} ! {APPSINK}"


def rtsp_pipeline(url: str, codec: str = "h264", latency_ms: int = 200) -> str:
    """An RTSP stream over TCP (UDP loses packets on Wi-Fi and the frames smear), decoded by nvv4l2decoder."""
    if codec not in CODECS or not CODECS[codec][1]:
        raise UsageError(f"RTSP codec {codec!r} is not one of {', '.join(c for c in CODECS if CODECS[c][1])}")
    parser, depay = CODECS[codec]
    return (f"rtspsrc location={quote(url)} latency={latency_ms} protocols=tcp drop-on-latency=true ! {depay} ! "
            f"{parser} ! nvv4l2decoder ! nvvidconv ! {TO_BGR} ! {APPSINK}")


def pipeline_elements(pipeline: str) -> list[str]:
    """The element factory names of a pipeline string, in order (caps like video/x-raw,... are skipped)."""
    names = []
    for part in pipeline.split("!"):
        word = part.strip().split(" ", 1)[0]
        if word and "/" not in word and "=" not in word:
            names.append(word)
    return list(dict.fromkeys(names))


def mask_credentials(text: str) -> str:
    """rtsp://user:password@host -> rtsp://***@host: a printed or logged pipeline never carries a password."""
    return re.sub(r"(\w+://)[^/@\s\"]*@", r"\1***@", text)


# ---------------------------------------------------------------------------------------------------------------
# Options written in the source text: csi://0?width=1280&height=720, v4l2:///dev/video1?format=MJPG,
# rtsp://cam/stream#codec=h265 (a fragment, never sent to the server, so the URL itself stays untouched)

def parse_options(text: str, allowed: tuple[str, ...], where: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in filter(None, text.split("&")):
        key, sep, value = item.partition("=")
        key = key.strip().lower().replace("_", "-")
        if not sep or not value.strip():
            raise UsageError(f"{where}: option {item!r} is not key=value")
        if key not in allowed:
            raise UsageError(f"{where}: unknown option {key!r}; known: {', '.join(allowed)}")
        options[key] = value.strip()
    return options


def _number(options: dict, key: str, where: str, low: int, high: int) -> int | None:
    if key not in options:
        return None
    value = options[key]
    if not value.isdigit() or not low <= int(value) <= high:
        raise UsageError(f"{where}: {key} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def csi_options(sensor_id: int, options: dict[str, str], where: str) -> CsiOptions:
    defaults = CsiOptions()
    picked = {key: _number(options, key, where, *limits) for key, limits in
              {"sensor-mode": (0, 31), "width": (16, 8192), "height": (16, 8192), "fps": (1, 240),
               "flip": (0, 7)}.items()}
    return CsiOptions(sensor_id=sensor_id, sensor_mode=picked["sensor-mode"],
                      width=picked["width"] or defaults.width, height=picked["height"] or defaults.height,
                      fps=picked["fps"] or defaults.fps, flip=picked["flip"] or 0)


def v4l2_options(device: str, options: dict[str, str], where: str) -> V4l2Options:
    fmt = options.get("format")
    if fmt is not None and fmt.lower() not in V4L2_FORMATS:
        raise UsageError(f"{where}: format {fmt!r} is not one of YUYV, MJPG, NV12")
    return V4l2Options(device=device, width=_number(options, "width", where, 16, 8192),
                       height=_number(options, "height", where, 16, 8192), fps=_number(options, "fps", where, 1, 240),
                       format=V4L2_FORMATS[fmt.lower()] if fmt else None)


def rtsp_settings(options: dict[str, str], where: str) -> tuple[str, int]:
    codec = options.get("codec", "h264").lower().replace("hevc", "h265").replace("avc", "h264")
    if codec not in CODECS or not CODECS[codec][1]:
        raise UsageError(f"{where}: codec {codec!r} is not one of {', '.join(c for c in CODECS if CODECS[c][1])}")
    latency = _number(options, "latency", where, 0, 10000)
    return codec, 200 if latency is None else latency


# ---------------------------------------------------------------------------------------------------------------
# The machine: does OpenCV have GStreamer, and which elements exist (read once, only when a source opens)

def opencv_has_gstreamer(build_information: str | None = None) -> bool:
    """From cv2.getBuildInformation(): the 'GStreamer: YES (1.20.3)' line of the Video I/O section."""
    if build_information is None:
        import cv2

        build_information = cv2.getBuildInformation()
    match = re.search(r"^\s*GStreamer:\s*(\S+)", build_information, re.MULTILINE)
    return bool(match) and match.group(1).upper().startswith("YES")


@functools.cache
def element_exists(name: str) -> bool:
    """gst-inspect-1.0 --exists NAME (GStreamer >= 1.12), else PyGObject's Gst.ElementFactory.find; False when
    neither is installed (element_checker_here says so)."""
    exe = shutil.which("gst-inspect-1.0")
    if exe is not None:
        try:
            return subprocess.run([exe, "--exists", name], capture_output=True, timeout=20,
                                  check=False).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False
    gst = _gi_gst()
    return gst is not None and gst.ElementFactory.find(name) is not None


@functools.cache
def _gi_gst() -> ModuleType | None:
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError):
        return None
    Gst.init(None)
    return Gst


def element_checker_here() -> str | None:
    """What checks elements on this machine (gst-inspect-1.0 or PyGObject); None: nothing can."""
    if shutil.which("gst-inspect-1.0"):
        return "gst-inspect-1.0"
    return "PyGObject" if _gi_gst() is not None else None


def missing_elements(pipeline: str, exists: Callable[[str], bool] = element_exists) -> list[str]:
    return [name for name in pipeline_elements(pipeline) if not exists(name)]
