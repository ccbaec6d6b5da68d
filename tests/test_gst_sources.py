"""GStreamer capture pipelines (edgeseg.demo.gst) and how a source picks GStreamer or OpenCV (demo.sources)."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgeseg.demo import gst
from edgeseg.demo.sources import parse_source, plan_capture, probe_file_codec, render_pipeline
from edgeseg.errors import UsageError

def ALL_THERE(name):
    return True


def NOTHING(name):
    return False


def jetson_without(*missing):
    return lambda name: name not in missing


@pytest.mark.parametrize("text, expected", [
    ("csi://0", "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1,"
                "format=NV12 ! nvvidconv flip-method=0 ! video/x-raw,format=BGRx ! videoconvert ! "
                "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"),
    ("csi://1?sensor-mode=4&width=1280&height=720&fps=60&flip=2",
     "nvarguscamerasrc sensor-id=1 sensor-mode=4 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=60/1,"
     "format=NV12 ! nvvidconv flip-method=2 ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
     "appsink drop=true max-buffers=1 sync=false"),
    ("csi://0?sensor_mode=0", "nvarguscamerasrc sensor-id=0 sensor-mode=0 ! "),  # mode 0 is a mode, not "unset"
])
def test_csi_pipelines(text, expected):
    assert render_pipeline(parse_source(text)).startswith(expected)


@pytest.mark.parametrize("text, hardware_jpeg, expected", [
    ("v4l2:///dev/video0", True, 'v4l2src device="/dev/video0" ! video/x-raw ! videoconvert ! '
                                 "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"),
    ("v4l2:///dev/video2?format=YUYV&width=640&height=480&fps=30", True,
     'v4l2src device="/dev/video2" ! video/x-raw,format=YUY2,width=640,height=480,framerate=30/1 ! videoconvert ! '),
    ("v4l2:///dev/video1?format=MJPG&width=1280&height=720", True,
     'v4l2src device="/dev/video1" ! image/jpeg,width=1280,height=720 ! jpegparse ! nvv4l2decoder mjpeg=1 ! '
     "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink"),
    ("v4l2:///dev/video1?format=mjpeg", False,
     'v4l2src device="/dev/video1" ! image/jpeg ! jpegdec ! videoconvert ! video/x-raw,format=BGR ! appsink'),
])
def test_v4l2_pipelines(text, hardware_jpeg, expected):
    spec = parse_source(text, check_device=False)
    assert spec.kind == "camera" and spec.v4l2 and spec.live
    assert render_pipeline(spec, hardware_jpeg=hardware_jpeg).startswith(expected)


@pytest.mark.parametrize("name, codec, expected", [
    ("drive.mp4", "h264", 'filesrc location="{}" ! qtdemux ! h264parse ! nvv4l2decoder ! nvvidconv ! '),
    ("drive.mkv", "h265", 'filesrc location="{}" ! matroskademux ! h265parse ! nvv4l2decoder ! nvvidconv ! '),
    ("drive.avi", "mpeg4", 'filesrc location="{}" ! avidemux ! mpeg4videoparse ! nvv4l2decoder ! '),
    ("drive.h264", None, 'filesrc location="{}" ! h264parse ! nvv4l2decoder ! '),
    ("drive.mp4", None, 'filesrc location="{}" ! decodebin ! nvvidconv ! '),  # codec unknown: decodebin picks
    ("drive.flv", "h264", 'filesrc location="{}" ! decodebin ! nvvidconv ! '),  # no demuxer we know
])
def test_file_pipelines(tmp_path, name, codec, expected):
    path = tmp_path / "with space" / name
    path.parent.mkdir()
    path.write_bytes(b"\0")
    pipeline = render_pipeline(parse_source(str(path)), codec=codec)
    assert pipeline.startswith(expected.format(path))
    assert pipeline.endswith("video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")


def test_file_path_with_quotes_is_escaped():
    assert gst.file_pipeline('/v/a "b".mp4', "h264").startswith('filesrc location="/v/a \\"b\\".mp4" ! qtdemux')


@pytest.mark.parametrize("text, expected", [
    ("rtsp://10.0.0.5:554/stream1", 'rtspsrc location="rtsp://10.0.0.5:554/stream1" latency=200 protocols=tcp '
                                    "drop-on-latency=true ! rtph264depay ! h264parse ! nvv4l2decoder ! nvvidconv ! "),
    ("rtsp://cam/live#codec=h265&latency=50", 'rtspsrc location="rtsp://cam/live" latency=50 protocols=tcp '
                                              "drop-on-latency=true ! rtph265depay ! h265parse ! nvv4l2decoder ! "),
    ("rtsp://cam/live#codec=HEVC", 'rtspsrc location="rtsp://cam/live" latency=200 protocols=tcp '
                                   "drop-on-latency=true ! rtph265depay ! h265parse ! "),
])
def test_rtsp_pipelines(text, expected):
    spec = parse_source(text)
    assert "#" not in str(spec.target)  # the options fragment never reaches the camera or FFmpeg
    assert render_pipeline(spec).startswith(expected)


def test_credentials_are_masked_when_printed():
    pipeline = render_pipeline(parse_source("rtsp://admin:secret@10.0.0.5/s"))
    assert "secret" in pipeline  # what is opened has them ...
    assert "secret" not in gst.mask_credentials(pipeline)  # ... what is printed or logged does not
    assert 'location="rtsp://***@10.0.0.5/s"' in gst.mask_credentials(pipeline)


@pytest.mark.parametrize("text, message", [
    ("csi://front", "csi://N with the sensor id"),
    ("csi://0?zoom=2", "unknown option 'zoom'"),
    ("csi://0?width=wide", "width must be a whole number"),
    ("csi://0?flip=9", "flip must be a whole number from 0 to 7"),
    ("v4l2://dev/video0", "three slashes"),
    ("v4l2:///dev/video0?format=H264", "format 'H264' is not one of"),
    ("rtsp://u:pw@cam/live#codec=mjpeg", "codec 'mjpeg'"),
    ("rtsp://cam/live#latency", "is not key=value"),
])
def test_bad_source_options_are_one_line_errors(text, message):
    with pytest.raises(UsageError, match=message) as error:
        parse_source(text, check_device=False)
    assert "pw" not in str(error.value)


def test_missing_v4l2_device_is_checked_unless_only_printing():
    with pytest.raises(UsageError, match="camera /dev/video97 does not exist"):
        parse_source("v4l2:///dev/video97")
    assert parse_source("v4l2:///dev/video97", check_device=False).target == "/dev/video97"


def test_every_rendered_element_is_in_the_published_list():
    pipelines = [gst.csi_pipeline(gst.CsiOptions()), gst.v4l2_pipeline(gst.V4l2Options(format="MJPG")),
                 gst.v4l2_pipeline(gst.V4l2Options(format="MJPG"), hardware_jpeg=False),
                 gst.v4l2_pipeline(gst.V4l2Options(format="YUY2"))]
    pipelines += [gst.rtsp_pipeline("rtsp://c/s", codec) for codec, (_, depay) in gst.CODECS.items() if depay]
    pipelines += [gst.file_pipeline(f"v{suffix}", codec) for suffix in [*gst.DEMUXERS, *gst.RAW_STREAMS]
                  for codec in gst.CODECS]
    used = {name for pipeline in pipelines for name in gst.pipeline_elements(pipeline)}
    assert used - {"decodebin"} <= set(gst.GSTREAMER_ELEMENTS)
    assert gst.pipeline_elements(pipelines[0]) == ["nvarguscamerasrc", "nvvidconv", "videoconvert", "appsink"]


# ---------------------------------------------------------------------------------------------------------------
# GStreamer or OpenCV

def test_gstreamer_is_used_on_a_jetson_with_every_element():
    plan = plan_capture(parse_source("rtsp://cam/live"), opencv_gstreamer=True, exists=ALL_THERE)
    assert plan.backend == "gstreamer" and "nvv4l2decoder" in plan.pipeline
    assert "hardware decode" in plan.note


def test_opencv_without_gstreamer_falls_back_and_says_why():
    plan = plan_capture(parse_source("rtsp://cam/live#codec=h265"), opencv_gstreamer=False, exists=ALL_THERE)
    assert plan.backend == "opencv" and "FFmpeg" in plan.note and "no GStreamer" in plan.note
    assert "codec not applied" in plan.note.replace("options ", "")
    assert plan.pipeline.startswith("rtspsrc")  # what it would have been, for --print-pipeline


def test_missing_hardware_decoder_falls_back_naming_it(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0")
    plan = plan_capture(parse_source(str(video)), True, jetson_without("nvv4l2decoder"), codec="h264")
    assert plan.backend == "opencv" and "missing here: nvv4l2decoder" in plan.note


def test_csi_has_no_fallback():
    plan = plan_capture(parse_source("csi://0"), opencv_gstreamer=True, exists=jetson_without("nvarguscamerasrc"))
    assert plan.backend == "unavailable" and "nvarguscamerasrc" in plan.note


def test_plain_cameras_http_streams_and_folders_stay_on_opencv(tmp_path):
    for text in ("0", "http://cam/mjpg/video.mjpg", str(tmp_path)):
        plan = plan_capture(parse_source(text), opencv_gstreamer=True, exists=ALL_THERE)
        assert plan.backend == "opencv" and plan.pipeline is None


def test_v4l2_mjpg_uses_jpegdec_without_the_hardware_decoder():
    plan = plan_capture(parse_source("v4l2:///dev/video0?format=MJPG", check_device=False), True,
                        jetson_without("nvv4l2decoder", "jpegparse"))
    assert plan.backend == "gstreamer" and "jpegdec" in plan.pipeline and "nvv4l2decoder" not in plan.pipeline


def test_opencv_build_information_is_read():
    assert gst.opencv_has_gstreamer("  Video I/O:\n    FFMPEG:   YES\n    GStreamer:      YES (1.20.3)\n")
    assert not gst.opencv_has_gstreamer("  Video I/O:\n    GStreamer:                   NO\n")
    assert gst.opencv_has_gstreamer() == ("GStreamer:" in cv2.getBuildInformation()
                                          and gst.opencv_has_gstreamer(cv2.getBuildInformation()))


def test_file_codec_is_probed_from_a_real_video(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    assert writer.isOpened()
    for index in range(5):
        writer.write(np.full((48, 64, 3), index * 40, np.uint8))
    writer.release()
    assert probe_file_codec(str(path)) == "mpeg4"
    assert probe_file_codec(str(tmp_path / "missing.mp4")) is None


def test_print_pipeline_command_prints_and_exits_zero_without_a_model():
    done = subprocess.run([sys.executable, "-m", "edgeseg", "demo", "--source",
                           "csi://0?width=1280&height=720&fps=60", "--print-pipeline"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == render_pipeline(parse_source("csi://0?width=1280&height=720&fps=60"))
    assert "capture here:" in done.stderr and "Traceback" not in done.stderr
    bad = subprocess.run([sys.executable, "-m", "edgeseg", "demo", "--source", "csi://0"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode != 0 and "demo needs --model" in bad.stderr


def test_open_source_records_how_a_real_file_was_opened(tmp_path):
    from edgeseg.demo.sources import open_source

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for index in range(3):
        writer.write(np.full((48, 64, 3), index * 40, np.uint8))
    writer.release()
    source = open_source(parse_source(str(path)))
    try:
        assert source.read().shape == (48, 64, 3)
        expected = "gstreamer" if gst.opencv_has_gstreamer() and gst.element_exists("nvv4l2decoder") else "opencv"
        assert source.capture_backend == expected
        assert ("FFmpeg" in source.capture_note) == (expected == "opencv")
    finally:
        source.close()


def test_no_element_checker_is_said():
    plan = plan_capture(parse_source("rtsp://cam/live"), True, NOTHING, checker=None)
    assert plan.backend == "opencv" and "install gstreamer1.0-tools" in plan.note
