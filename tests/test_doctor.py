"""`edgeseg doctor` on this machine (no GPU, no TensorRT), and with module availability faked both ways in a
subprocess: packages made unimportable by a sys.meta_path blocker, and stand-in tensorrt / pycuda packages put on
PYTHONPATH (TensorRT cannot be installed here; the stand-ins answer the few calls the doctor makes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import pytest

from edgeseg.doctor import DEMO_GST_ELEMENTS, Check, capabilities, jetpack_from_l4t, jetson_checks, video_backends

REPO = Path(__file__).resolve().parent.parent
CHECK_NAMES = ["python", "torch", "onnx", "onnxruntime", "openvino", "tensorrt", "pycuda", "CUDA driver", "GPU",
               "Jetson module", "JetPack", "DLA cores", "OpenCV", "GStreamer elements", "cameras"]

BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
from edgeseg.cli import main
try:
    main({argv!r})
finally:
    loaded = sorted(name for name in sys.modules if name.split('.')[0] in BLOCKED)
    print('LOADED', loaded, file=sys.stderr)
"""


def run_doctor(argv=("doctor", "--json"), blocked=(), extra_path: Path | None = None) -> tuple[int, str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path) if extra_path else None, str(REPO),
                                                              environment.get("PYTHONPATH")]))
    script = BLOCKER.format(blocked=tuple(blocked), argv=list(argv))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=REPO,
                          env=environment, check=False)
    return done.returncode, done.stdout, done.stderr


def checks_of(stdout: str) -> dict[str, dict]:
    report = json.loads(stdout)
    assert report["format"] == "edgeseg-doctor" and report["schema"] == 1
    return {check["name"]: check for check in report["checks"]}


def stages_of(stdout: str) -> dict[str, dict]:
    return {stage["stage"].split(" (")[0]: stage for stage in json.loads(stdout)["stages"]}


# ---------------------------------------------------------------------------------------------------------------
# Without torch, ONNX Runtime, OpenVINO: the core install

def test_doctor_runs_on_the_core_install_without_torch():
    blocked = ("torch", "torchvision", "transformers", "onnx", "onnxruntime", "onnxslim", "openvino", "tensorrt",
               "pycuda")
    code, out, err = run_doctor(blocked=blocked)
    assert code == 0, err
    assert "LOADED []" in err  # nothing blocked was imported, torch included
    checks = checks_of(out)
    assert list(checks) == CHECK_NAMES
    for name, extra in (("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnx"), ("pycuda", "trt")):
        assert checks[name]["status"] == "missing", checks[name]
        assert f"pip install 'edgeseg[{extra}]'" in checks[name]["hint"]
    assert checks["openvino"]["status"] == "missing" and "openvino" in checks["openvino"]["hint"]
    assert checks["tensorrt"]["status"] == "missing" and "JetPack" in checks["tensorrt"]["hint"]
    for check in checks.values():  # every check that is not ok says how to get it
        assert check["status"] in ("ok", "n/a") or check["hint"], check
    stages = stages_of(out)
    assert stages["train, prune, export"] == {"stage": stages["train, prune, export"]["stage"], "can": False,
                                              "missing": ["torch", "onnx"]}
    assert not stages["run ONNX models on the CPU"]["can"]
    assert stages["demo from video files and RTSP"]["can"]  # OpenCV (core) with FFmpeg is all it needs


def test_doctor_on_this_machine_says_what_is_missing():
    """Here: torch, ONNX Runtime (CPU only) and OpenCV with FFmpeg; no TensorRT, GPU, Jetson or camera."""
    code, out, err = run_doctor()
    assert code == 0, err
    checks = checks_of(out)
    assert list(checks) == CHECK_NAMES
    import onnxruntime
    import torch

    assert checks["torch"]["status"] == "ok" and checks["torch"]["detail"] == torch.__version__
    assert checks["onnxruntime"]["detail"].startswith(onnxruntime.__version__ + "; providers: ")
    assert "CPU" in checks["onnxruntime"]["detail"] and "onnxruntime-gpu" in checks["onnxruntime"]["hint"]
    assert checks["tensorrt"]["status"] == "missing" and checks["GPU"]["status"] == "missing"
    assert checks["CUDA driver"]["status"] == "missing"
    assert {checks[name]["status"] for name in ("Jetson module", "JetPack", "DLA cores")} == {"n/a"}
    assert checks["OpenCV"]["detail"].startswith(cv2.__version__)
    stages = stages_of(out)
    assert stages["run ONNX models on the CPU"]["can"] and stages["train, prune, export"]["can"]
    assert stages["build TensorRT engines"] == {**stages["build TensorRT engines"], "can": False,
                                                "missing": ["tensorrt", "GPU"]}


def test_doctor_table_lists_every_check(tmp_path):
    code, out, err = run_doctor(argv=("doctor",), blocked=("torch",))
    assert code == 0, err
    for name in CHECK_NAMES + ["stage by stage", "pip install 'edgeseg[torch]'"]:
        assert name in out, name


# ---------------------------------------------------------------------------------------------------------------
# With stand-in TensorRT and pycuda on the path: a Jetson-like GPU answers

FAKE_PYCUDA_DRIVER = '''
class Error(Exception):
    pass

def init():
    pass

def get_driver_version():
    return 12060

class Device:
    @staticmethod
    def count():
        return 1

    def __init__(self, index):
        self.index = index

    def name(self):
        return "Orin"

    def compute_capability(self):
        return (8, 7)

    def total_memory(self):
        return 8 * 2**30
'''


def fake_packages(root: Path, tensorrt_init: str = "__version__ = '10.3.0.30'\n") -> Path:
    (root / "tensorrt").mkdir(parents=True)
    (root / "tensorrt" / "__init__.py").write_text(tensorrt_init)
    (root / "pycuda").mkdir()
    (root / "pycuda" / "__init__.py").write_text("VERSION_TEXT = '2024.1'\n")
    (root / "pycuda" / "driver.py").write_text(textwrap.dedent(FAKE_PYCUDA_DRIVER))
    return root


def test_doctor_with_tensorrt_pycuda_and_a_gpu(tmp_path):
    code, out, err = run_doctor(blocked=("openvino",), extra_path=fake_packages(tmp_path / "site"))
    assert code == 0, err
    checks = checks_of(out)
    assert checks["tensorrt"] == {**checks["tensorrt"], "status": "ok", "detail": "10.3.0.30", "hint": None}
    assert checks["pycuda"]["status"] == "ok" and checks["pycuda"]["detail"] == "2024.1"
    assert checks["CUDA driver"]["detail"] == "CUDA 12.6"
    assert checks["GPU"]["status"] == "ok" and checks["GPU"]["detail"] == "Orin, compute capability 8.7, 8.0 GB"
    stages = stages_of(out)
    assert stages["build TensorRT engines"]["can"] and stages["run TensorRT engines"]["can"]
    assert not stages["run ONNX models on the GPU"]["can"]  # CPU-only onnxruntime here
    assert stages["run ONNX models on the GPU"]["missing"] == ["onnxruntime CUDA provider"]
    assert not stages["run ONNX models with OpenVINO"]["can"]


def test_a_broken_tensorrt_is_reported_as_broken(tmp_path):
    broken = "raise OSError('libnvinfer.so.10: cannot open shared object file')\n"
    code, out, err = run_doctor(extra_path=fake_packages(tmp_path / "site", tensorrt_init=broken))
    assert code == 0, err
    tensorrt = checks_of(out)["tensorrt"]
    assert tensorrt["status"] == "broken" and "OSError: libnvinfer.so.10" in tensorrt["detail"]


# ---------------------------------------------------------------------------------------------------------------
# The parsers, on recorded text

ORIN_RELEASE = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 2025"
XAVIER_RELEASE = "# R35 (release), REVISION: 5.0, GCID: 35550185, BOARD: t186ref, EABI: aarch64, DATE: Tue Feb 20 2024"


def test_jetpack_from_l4t():
    assert jetpack_from_l4t(ORIN_RELEASE) == ("36.4.3", "6.2")
    assert jetpack_from_l4t(XAVIER_RELEASE) == ("35.5.0", "5.1.3")
    assert jetpack_from_l4t("# R99 (release), REVISION: 1.0") == ("99.1.0", None)
    assert jetpack_from_l4t("") == (None, None)


def test_jetson_checks_from_recorded_boards():
    orin = {c.name: c for c in jetson_checks("NVIDIA Jetson AGX Orin Developer Kit\x00", ORIN_RELEASE,
                                             ["/sys/bus/platform/devices/15880000.nvdla0",
                                              "/sys/bus/platform/devices/158c0000.nvdla1"])}
    assert orin["Jetson module"].detail == "NVIDIA Jetson AGX Orin Developer Kit"
    assert orin["JetPack"].ok and orin["JetPack"].detail == "JetPack 6.2 (L4T 36.4.3)"
    assert orin["DLA cores"].detail.startswith("2 (15880000.nvdla0, 158c0000.nvdla1)")
    nano = {c.name: c for c in jetson_checks("NVIDIA Jetson Orin Nano Developer Kit", ORIN_RELEASE, [])}
    assert nano["DLA cores"].detail.startswith("0 (no /sys/bus/platform/devices/*nvdla*): a module without DLA")
    unknown = {c.name: c for c in jetson_checks("NVIDIA Jetson Thor", "# R99 (release), REVISION: 1.0", [])}
    assert unknown["JetPack"].status == "partial" and unknown["JetPack"].hint
    desktop = jetson_checks("", "", [])
    assert [c.status for c in desktop] == ["n/a"] * 3


def test_video_backends_from_build_information():
    jetpack_opencv = textwrap.dedent("""\
      Video I/O:
        DC1394:                      YES (2.2.6)
        FFMPEG:                      YES
          avcodec:                   YES (58.54.100)
        GStreamer:                   YES (1.20.3)
        v4l/v4l2:                    YES (linux/videodev2.h)

      Parallel framework:            pthreads
        GStreamer:                   NO
    """)
    assert video_backends(jetpack_opencv) == {"FFMPEG": "YES", "GStreamer": "YES (1.20.3)",
                                              "v4l/v4l2": "YES (linux/videodev2.h)"}
    here = video_backends(cv2.getBuildInformation())  # the pip wheel: FFmpeg, no GStreamer
    assert here["FFMPEG"].startswith("YES") and here.get("GStreamer", "NO").startswith("NO")


def test_capabilities_are_derived_from_the_checks():
    def check(name, ok=True, **facts):
        return Check(name, "ok" if ok else "missing", "", "", None if ok else "hint", facts)

    everything = [check("torch"), check("onnx"), check("onnxruntime", providers=["CUDAExecutionProvider"]),
                  check("openvino"), check("tensorrt"), check("pycuda"), check("GPU"), check("OpenCV", ffmpeg=True),
                  check("cameras")]
    assert all(stage["can"] and not stage["missing"] for stage in capabilities(everything))
    without_gpu = [c if c.name != "GPU" else check("GPU", ok=False) for c in everything]
    cannot = {stage["stage"].split(" (")[0]: stage["missing"] for stage in capabilities(without_gpu)
              if not stage["can"]}
    assert cannot == {"run ONNX models on the GPU": ["GPU"], "build TensorRT engines": ["GPU"],
                      "run TensorRT engines": ["GPU"]}


def test_gstreamer_elements_cover_the_jetson_camera_and_decoder():
    assert {"nvarguscamerasrc", "nvv4l2decoder", "nvvidconv", "appsink"} <= set(DEMO_GST_ELEMENTS)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /dev")
def test_cameras_check_on_a_pattern(tmp_path):
    from edgeseg.doctor import check_cameras

    assert check_cameras(str(tmp_path / "video*")).status == "missing"
    (tmp_path / "video0").touch()
    found = check_cameras(str(tmp_path / "video*"))
    assert found.ok and found.detail == str(tmp_path / "video0")


def test_dla_cores_from_tensorrt_first(monkeypatch):
    import types

    from edgeseg.doctor import tensorrt_dla_cores

    fake = types.ModuleType("tensorrt")

    class Logger:
        ERROR = 1

        def __init__(self, severity):
            pass

    class Builder:
        num_DLA_cores = 2

        def __init__(self, logger):
            pass

    fake.Logger, fake.Builder = Logger, Builder
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    assert tensorrt_dla_cores() == 2
    orin = {c.name: c for c in jetson_checks("NVIDIA Jetson AGX Orin Developer Kit", ORIN_RELEASE)}
    assert orin["DLA cores"].detail == "2 (TensorRT's Builder.num_DLA_cores)"
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not importable: the device files are read instead
    assert tensorrt_dla_cores() is None
