"""`edgeseg doctor`: what this machine can do, component by component and stage by stage.

Each check imports or asks for one thing (a Python package, a driver, a device file, a GStreamer element) and
reports ok / missing / partial / n/a with what it found and, when it is not ok, how to get it. Nothing here
imports torch unless probing torch itself, and no probe raises: a broken install is reported as such, so the
doctor runs on the core install (numpy, OpenCV) of a fresh Jetson. TensorRT, the GPU and the CUDA driver are
read through engine.host (the same probes `edgeseg engine build` uses); the Jetson board through bench.env.
"""

from __future__ import annotations

import glob
import importlib
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from edgeseg.errors import first_line
from edgeseg.bench.env import read_text_quietly, run_quietly  # the same quiet probes the bench env block uses
from edgeseg.demo.gst import GSTREAMER_ELEMENTS
from edgeseg.lazy import EXTRAS

DOCTOR_FORMAT, DOCTOR_SCHEMA = "edgeseg-doctor", 1
OK, MISSING, PARTIAL, NOT_APPLICABLE, BROKEN = "ok", "missing", "partial", "n/a", "broken"

# The GStreamer elements behind the demo's hardware paths on a Jetson: CSI cameras (nvarguscamerasrc), USB
# cameras (v4l2src), RTSP and files decoded by the hardware decoder (nvv4l2decoder), nvvidconv to leave NVMM
# memory, and appsink to hand frames to OpenCV. Keep in step with the demo's pipelines.
# The elements the demo's pipelines use (edgeseg/demo/gst.py renders them).
DEMO_GST_ELEMENTS = GSTREAMER_ELEMENTS

# L4T release (major, minor, patch) -> JetPack, for boards without the nvidia-jetpack meta package.
L4T_JETPACK = {(32, 7): "4.6.x", (35, 1): "5.0.2", (35, 2): "5.1", (35, 3): "5.1.1", (35, 4): "5.1.2",
               (35, 5): "5.1.3", (35, 6): "5.1.4", (36, 2): "6.0 DP", (36, 3): "6.0", (36, 4, 0): "6.1",
               (36, 4, 3): "6.2", (36, 4, 4): "6.2.1"}


@dataclass(frozen=True)
class Check:
    name: str  # what was checked: "torch", "GPU", "cameras", ...
    status: str  # ok, missing, partial, broken, n/a
    detail: str  # what was found (version, device names), or why it is missing
    needed_for: str  # which stages need it
    hint: str | None = None  # how to get it, when it is not ok
    facts: dict = field(default_factory=dict)  # what later decisions read: providers, video backends, ...

    @property
    def ok(self) -> bool:
        return self.status == OK


# ---------------------------------------------------------------------------------------------------------------
# Python packages

def install_hint(package: str, fallback: str | None = None) -> str:
    """The pip line for a package: the edgeseg extra that installs it where there is one."""
    extra = EXTRAS.get(package.split(".")[0])
    return f"pip install 'edgeseg[{extra}]'" if extra else (fallback or f"pip install {package}")


def import_probe(module: str) -> tuple[object | None, str | None]:
    """(module, None) when it imports, (None, why) when it does not: missing, or broken (e.g. a missing .so)."""
    try:
        return importlib.import_module(module), None
    except ImportError as exc:
        name = getattr(exc, "name", None)  # the module that was not found; a dependency's name means broken
        if name and (module == name or module.startswith(name + ".")):
            return None, "not installed"
        return None, f"cannot be imported ({type(exc).__name__}: {first_line(exc)})"
    except Exception as exc:  # a broken install can raise anything at import: OSError, RuntimeError, ...
        return None, f"cannot be imported ({type(exc).__name__}: {first_line(exc)})"


def module_version(module: ModuleType) -> str:
    version = getattr(module, "__version__", None) or getattr(module, "VERSION_TEXT", None)
    if version:
        return str(version)
    try:
        from importlib.metadata import version as dist_version

        return dist_version(module.__name__)
    except Exception:  # a package without distribution metadata (vendored, or a source checkout)
        return "version unknown"


def package_check(module: str, needed_for: str, hint: str | None = None,
                  name: str | None = None) -> tuple[Check, object | None]:
    """Import `module`; the check is named `name` (default: the module) and hints the extra that installs it."""
    name = name or module
    found, problem = import_probe(module)
    if found is None:
        status = MISSING if problem == "not installed" else BROKEN
        return Check(name, status, problem, needed_for, hint or install_hint(module)), None
    top = importlib.import_module(module.split(".")[0])  # versions live on the package, not on its submodules
    return Check(name, OK, module_version(top), needed_for), found


def check_torch() -> Check:
    return package_check("torch", "model zoo, training, pruning, export (host side)")[0]


def check_onnxruntime() -> Check:
    check, ort = package_check("onnxruntime", "quantization, running ONNX models, bench, demo on ONNX")
    if ort is None:
        return check
    try:
        providers = list(ort.get_available_providers())
    except Exception as exc:  # noqa: BLE001 - an onnxruntime that cannot list providers is broken
        return Check("onnxruntime", BROKEN, f"{check.detail}; providers: {first_line(exc)}", check.needed_for,
                     "reinstall onnxruntime")
    short = [name.replace("ExecutionProvider", "") for name in providers]
    detail = f"{check.detail}; providers: {', '.join(short) or 'none'}"
    facts = {"providers": providers}
    if "CUDAExecutionProvider" not in providers:
        return Check("onnxruntime", OK, detail + " (no CUDA: ONNX models run on the CPU)", check.needed_for,
                     "for CUDA: pip install onnxruntime-gpu (on a Jetson, the wheel from NVIDIA's Jetson AI Lab)",
                     facts)
    return Check("onnxruntime", OK, detail, check.needed_for, facts=facts)


def check_onnx() -> Check:
    return package_check("onnx", "export, quantization (host side)")[0]


def check_openvino() -> Check:
    return package_check("openvino", "the OpenVINO runner (Intel CPUs and GPUs)")[0]


def check_pycuda() -> Check:
    # pycuda.driver, not pycuda: the driver module is what loads libcuda, and what the runner uses
    return package_check("pycuda.driver", "the TensorRT runner, INT8 calibration in TensorRT", name="pycuda")[0]


# ---------------------------------------------------------------------------------------------------------------
# NVIDIA: TensorRT, CUDA driver, GPU (engine.host's probes)

def nvidia_checks() -> tuple[Check, Check, Check]:
    """TensorRT, the CUDA driver and the GPU."""
    from edgeseg.engine.host import cuda_driver_version, probe_host

    host = probe_host()
    checks = []
    if host.tensorrt:
        checks.append(Check("tensorrt", OK, host.tensorrt, "building and running TensorRT engines"))
    else:
        status = MISSING if "not installed" in (host.tensorrt_problem or "not installed") else BROKEN
        checks.append(Check("tensorrt", status, host.tensorrt_problem or "not installed",
                            "building and running TensorRT engines",
                            "on a Jetson, JetPack provides it (sudo apt install nvidia-jetpack); on a desktop GPU: "
                            "pip install 'edgeseg[trt]' (NVIDIA's wheels)"))
    driver = cuda_driver_version() or nvidia_smi_cuda_version()
    checks.append(Check("CUDA driver", OK, f"CUDA {driver}", "anything on the GPU") if driver else
                  Check("CUDA driver", MISSING, "no NVIDIA driver answered (pycuda, nvidia-smi)", "anything on the GPU",
                        "install the NVIDIA driver (a desktop GPU) or flash JetPack (a Jetson)"))
    if host.device is None:
        checks.append(Check("GPU", MISSING, "no CUDA GPU is visible (checked pycuda and nvidia-smi)",
                            "TensorRT, ONNX Runtime CUDA",
                            "needs an NVIDIA GPU and its driver; pycuda (pip install 'edgeseg[trt]') also reads "
                            "a Jetson's GPU, which has no nvidia-smi"))
    else:
        device = host.device
        checks.append(Check("GPU", OK, f"{device.name}, compute capability {device.compute_capability}, "
                                       f"{device.memory_gb:.1f} GB", "TensorRT, ONNX Runtime CUDA"))
    return tuple(checks)


def nvidia_smi_cuda_version() -> str | None:
    """The 'CUDA Version: 12.6' of nvidia-smi's header (what the driver supports)."""
    if not shutil.which("nvidia-smi"):
        return None
    match = re.search(r"CUDA Version:\s*([\d.]+)", run_quietly(["nvidia-smi"]) or "")
    return match.group(1) if match else None


# ---------------------------------------------------------------------------------------------------------------
# Jetson: module, JetPack, DLA

def jetpack_from_l4t(release_text: str | None) -> tuple[str | None, str | None]:
    """(L4T version, JetPack) from /etc/nv_tegra_release ('# R36 (release), REVISION: 4.3, ...')."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", release_text or "")
    if not match:
        return None, None
    major, minor, patch = (int(group) for group in match.groups())
    jetpack = L4T_JETPACK.get((major, minor, patch)) or L4T_JETPACK.get((major, minor))
    return f"{major}.{minor}.{patch}", jetpack


def installed_jetpack() -> str | None:
    """The version of the nvidia-jetpack meta package, when apt installed it."""
    if not shutil.which("dpkg-query"):
        return None
    text = run_quietly(["dpkg-query", "-W", "-f", "${Version}", "nvidia-jetpack"])
    return text.split("-")[0].split("+")[0] if text else None


def jetson_checks(device_tree_model: str | None = None, tegra_release: str | None = None,
                  dla_devices: list[str] | None = None) -> list[Check]:
    """The module, its JetPack and DLA cores; the arguments replace what is read from the machine (tests)."""
    model = device_tree_model if device_tree_model is not None else read_text_quietly("/proc/device-tree/model")
    release = tegra_release if tegra_release is not None else read_text_quietly("/etc/nv_tegra_release")
    model = (model or "").strip("\x00 \n")
    if "jetson" not in model.lower() and not release:
        why = "not a Jetson" + (f" ({model})" if model else f" ({platform.machine()})")
        return [Check("Jetson module", NOT_APPLICABLE, why, "Jetson targets"),
                Check("JetPack", NOT_APPLICABLE, why, "TensorRT, CUDA and the nv* GStreamer elements on a Jetson"),
                Check("DLA cores", NOT_APPLICABLE, "DLA exists only on Jetson Xavier and Orin modules",
                      "engines on the DLA (--dla-core)")]
    l4t, jetpack = jetpack_from_l4t(release)
    jetpack = (installed_jetpack() if tegra_release is None else None) or jetpack
    checks = [Check("Jetson module", OK, model or "a Jetson (no /proc/device-tree/model)", "Jetson targets")]
    if jetpack:
        checks.append(Check("JetPack", OK, f"JetPack {jetpack} (L4T {l4t})" if l4t else f"JetPack {jetpack}",
                            "TensorRT, CUDA and the nv* GStreamer elements on a Jetson"))
    else:
        checks.append(Check("JetPack", PARTIAL, f"L4T {l4t}, JetPack release not known to edgeseg" if l4t
                            else "no /etc/nv_tegra_release", "TensorRT, CUDA and the nv* GStreamer elements",
                            "sudo apt install nvidia-jetpack"))
    needed_for = "engines on the DLA (--dla-core)"
    counted = tensorrt_dla_cores() if dla_devices is None else None
    if counted is not None:
        checks.append(Check("DLA cores", OK, f"{counted} (TensorRT's Builder.num_DLA_cores)", needed_for))
        return checks
    dla = dla_devices if dla_devices is not None else sorted(glob.glob(DLA_DEVICES))
    checks.append(Check("DLA cores", OK, f"{len(dla)} ({', '.join(Path(path).name for path in dla)})" if dla
                        else f"0 (no {DLA_DEVICES}): a module without DLA (e.g. Orin Nano), engines run on the GPU",
                        needed_for))
    return checks


DLA_DEVICES = "/sys/bus/platform/devices/*nvdla*"


def tensorrt_dla_cores() -> int | None:
    """The DLA cores TensorRT sees (the authoritative count); None without a working TensorRT."""
    try:
        import tensorrt as trt

        return int(trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores)
    except Exception:  # noqa: BLE001 - no TensorRT, no GPU, or an older API: the device files are read instead
        return None


# ---------------------------------------------------------------------------------------------------------------
# OpenCV, GStreamer, cameras

def video_backends(build_information: str) -> dict[str, str]:
    """{'GStreamer': 'YES (1.20.3)', 'FFMPEG': 'YES', ...} from the Video I/O section of cv2.getBuildInformation()."""
    found: dict[str, str] = {}
    section_indent = None
    for line in build_information.splitlines():
        indent = len(line) - len(line.lstrip())
        if line.strip() == "Video I/O:":
            section_indent = indent
            continue
        if section_indent is None or not line.strip():
            continue
        if indent <= section_indent:
            break  # the next section
        match = re.match(r"\s+(GStreamer|FFMPEG|v4l/v4l2|V4L/V4L2):\s*(.+)", line)
        if match:
            found[{"V4L/V4L2": "v4l/v4l2"}.get(match.group(1), match.group(1))] = match.group(2).strip()
    return found


def check_opencv() -> Check:
    import cv2

    backends = video_backends(cv2.getBuildInformation())
    has = {name: value.upper().startswith("YES") for name, value in backends.items()}
    detail = f"{cv2.__version__}; GStreamer: {backends.get('GStreamer', 'NO')}, FFmpeg: {backends.get('FFMPEG', 'NO')}"
    facts = {"gstreamer": bool(has.get("GStreamer")), "ffmpeg": bool(has.get("FFMPEG"))}
    if has.get("GStreamer") and has.get("FFMPEG"):
        return Check("OpenCV", OK, detail, "demo (video files, RTSP, cameras)", facts=facts)
    hint = ("the pip wheel has no GStreamer: on a Jetson use JetPack's OpenCV (sudo apt install python3-opencv) "
            "for CSI cameras and hardware decoding; files and RTSP still work through FFmpeg")
    if not has.get("FFMPEG"):
        hint = "pip install opencv-python-headless (its wheel includes FFmpeg for video files and RTSP)"
    return Check("OpenCV", PARTIAL, detail, "demo (video files, RTSP, cameras)", hint, facts)


def check_gstreamer(elements: tuple[str, ...] = DEMO_GST_ELEMENTS) -> Check:
    needed_for = "demo: CSI cameras, hardware video decode (Jetson)"
    inspect = shutil.which("gst-inspect-1.0")
    if inspect is None:
        return Check("GStreamer elements", MISSING, "gst-inspect-1.0 not found", needed_for,
                     "sudo apt install gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-bad; "
                     "the nv* elements come with JetPack")
    present = [element for element in elements if _element_exists(inspect, element)]
    missing = [element for element in elements if element not in present]
    if not missing:
        return Check("GStreamer elements", OK, ", ".join(present), needed_for)
    detail = (f"present: {', '.join(present)}; " if present else "") + f"missing: {', '.join(missing)}"
    return Check("GStreamer elements", PARTIAL if present else MISSING, detail, needed_for,
                 "the nv* elements come with JetPack (nvidia-l4t-gstreamer); the others with "
                 "gstreamer1.0-plugins-good/-bad")


def _element_exists(inspect: str, element: str) -> bool:
    try:
        return subprocess.run([inspect, "--exists", element], capture_output=True, timeout=20,
                              check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def check_cameras(pattern: str = "/dev/video*") -> Check:
    devices = sorted(glob.glob(pattern), key=lambda path: (len(path), path))
    needed_for = "demo --source 0 / /dev/videoN"
    if not devices:
        return Check("cameras", MISSING, "no /dev/video* device", needed_for,
                     "connect a USB or CSI camera; the demo also takes video files, image folders and rtsp:// URLs")
    named = []
    for device in devices:
        name = read_text_quietly(f"/sys/class/video4linux/{Path(device).name}/name")
        named.append(f"{device} ({name.strip()})" if name else device)
    return Check("cameras", OK, ", ".join(named), needed_for)


# ---------------------------------------------------------------------------------------------------------------
# All of it

def run_checks() -> list[Check]:
    tensorrt, driver, gpu = nvidia_checks()
    checks = [Check("python", OK, f"{platform.python_version()} ({sys.executable})", "everything"),
              check_torch(), check_onnx(), check_onnxruntime(), check_openvino(), tensorrt, check_pycuda(), driver,
              gpu]
    checks += jetson_checks()
    checks += [check_opencv(), check_gstreamer(), check_cameras()]
    return checks


def capabilities(checks: list[Check]) -> list[dict]:
    """Stage by stage, what this machine can do and, where it cannot, what is missing (pure: from the checks)."""
    by_name = {check.name: check for check in checks}

    def have(name: str) -> tuple[str, bool]:
        return name, name in by_name and by_name[name].ok

    def fact(name: str, key: str) -> Any:
        return by_name[name].facts.get(key) if name in by_name else None

    ort_cuda = ("onnxruntime CUDA provider", "CUDAExecutionProvider" in (fact("onnxruntime", "providers") or ()))
    stages = [
        ("train, prune, export (edgeseg train / prune / export)", [have("torch"), have("onnx")]),
        ("quantize an ONNX model to FP16/INT8 (edgeseg quantize)", [have("onnx"), have("onnxruntime")]),
        ("the whole host pipeline (edgeseg build)", [have("torch"), have("onnx"), have("onnxruntime")]),
        ("run ONNX models on the CPU (bench, demo)", [have("onnxruntime")]),
        ("run ONNX models on the GPU (ort-cuda)", [ort_cuda, have("GPU")]),
        ("run ONNX models with OpenVINO", [have("openvino")]),
        ("build TensorRT engines (edgeseg engine build)", [have("tensorrt"), have("GPU")]),
        ("run TensorRT engines (trt runner, demo, bench)", [have("tensorrt"), have("pycuda"), have("GPU")]),
        ("demo from video files and RTSP", [("OpenCV with FFmpeg", bool(fact("OpenCV", "ffmpeg")))]),
        ("demo from a camera", [have("cameras")]),
    ]
    return [{"stage": stage, "can": all(met for _, met in needs), "missing": [name for name, met in needs if not met]}
            for stage, needs in stages]


def doctor_report(checks: list[Check] | None = None) -> dict:
    checks = run_checks() if checks is None else checks
    return {"format": DOCTOR_FORMAT, "schema": DOCTOR_SCHEMA, "machine": platform.machine(),
            "node": platform.node(), "checks": [asdict(check) for check in checks],
            "stages": capabilities(checks)}



