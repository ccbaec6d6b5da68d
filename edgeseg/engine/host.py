"""This machine, as an engine builder or runner: can it build for a target, and what GPU and TensorRT it has.

A TensorRT engine is only valid on the GPU model and TensorRT version that built it, so a host builds an
engine for a target only when it IS that target: TensorRT importable, a CUDA GPU present, and the same compute
capability (for a Jetson, the board itself: aarch64 with the Jetson's GPU). The decision is a pure function of
`HostFacts`, so it is tested on any machine; only `probe_host`, `live_environment` and the probes at the end
(`probe_cuda_device`: pycuda or nvidia-smi; `installed_tensorrt`: package metadata) touch the hardware.
"""

from __future__ import annotations

import contextlib
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from typing import Iterator

from edgeseg.errors import EdgesegError, MissingDependency, UsageError, first_line
from edgeseg.lazy import lazy_import
from edgeseg.target.schema import CudaDevice, Target

JETSON_MACHINES = ("aarch64", "arm64")


@dataclass(frozen=True)
class HostFacts:
    tensorrt: str | None  # the importable TensorRT's version, None when it cannot be imported
    tensorrt_problem: str | None  # why TensorRT cannot be imported (missing, or a broken install)
    device: CudaDevice | None  # None: no CUDA GPU visible
    machine: str  # platform.machine(): x86_64, aarch64, ...


def probe_host() -> HostFacts:
    """Import TensorRT and look for a CUDA GPU (pycuda, else nvidia-smi); never raises."""
    version = problem = None
    try:
        version = str(lazy_import("tensorrt").__version__)
    except MissingDependency:
        problem = "tensorrt is not installed here"
    except Exception as exc:  # a broken install: OSError for a missing libnvinfer, version conflicts, ...
        problem = f"tensorrt cannot be imported here ({type(exc).__name__}: {first_line(exc)})"
    try:
        device = probe_cuda_device()
    except UsageError:
        device = None
    return HostFacts(tensorrt=version, tensorrt_problem=problem, device=device, machine=platform.machine())


def why_host_cannot_build(target: Target, host: HostFacts) -> str | None:
    """One line saying why this host cannot build an engine for `target`, or None when it can."""
    if host.tensorrt is None:
        return host.tensorrt_problem or "tensorrt is not installed here"
    if host.device is None:
        return "no CUDA GPU is visible here"
    if target.kind == "jetson" and host.machine.lower() not in JETSON_MACHINES:
        return f"{target.name} is a Jetson board and this host is {host.machine}, not the board"
    if target.compute_capability != host.device.compute_capability:
        return (f"this host's GPU ({host.device.name}, compute capability {host.device.compute_capability}) "
                f"is not a {target.name} (compute capability {target.compute_capability})")
    return None


def live_environment() -> dict:
    """The GPU and TensorRT an engine would run on here, in the shape of an engine sidecar's fields."""
    trt = lazy_import("tensorrt")
    device = probe_cuda_device()
    return {"tensorrt": str(trt.__version__), "cuda": cuda_driver_version(),
            "gpu": {"name": device.name, "compute_capability": device.compute_capability}}


def cuda_driver_version() -> str | None:
    """The CUDA version the driver supports (e.g. '12.6'), read with pycuda; None without it."""
    try:
        cuda = lazy_import("pycuda.driver")
        cuda.init()
        number = cuda.get_driver_version()  # 12060 for 12.6
    except Exception:  # pycuda missing or no driver: the version is informative only
        return None
    return f"{number // 1000}.{number % 1000 // 10}"


@contextlib.contextmanager
def primary_context(device_index: int = 0) -> Iterator[object]:
    """The device's primary CUDA context, current for the block: the one the TensorRT runtime uses too, so
    pycuda allocations and TensorRT share it (no pycuda.autoinit, which would create a second context)."""
    cuda = lazy_import("pycuda.driver")
    try:
        cuda.init()
        context = cuda.Device(device_index).retain_primary_context()
    except cuda.Error as exc:
        raise EdgesegError(f"cannot open CUDA device {device_index}: {first_line(exc)}") from exc
    context.push()
    try:
        yield context
    finally:
        cuda.Context.pop()



# ---------------------------------------------------------------------------------------------------------------
# Probes: the local GPU and the installed TensorRT (the 'cuda' target is filled from them)

_SMI_CAPABILITY = re.compile(r"^\d+\.\d+$")


def probe_cuda_device() -> CudaDevice:
    """The first CUDA device, read with pycuda if it is installed, else with nvidia-smi."""
    device = _probe_pycuda() or _probe_nvidia_smi()
    if device is None:
        raise UsageError("no CUDA device is visible (checked pycuda and nvidia-smi); "
                         "pick a named target from 'edgeseg targets' or fix the NVIDIA driver")
    return device


def _probe_pycuda() -> CudaDevice | None:
    try:
        import pycuda.driver as cuda  # optional: the 'trt' extra

        cuda.init()
        if cuda.Device.count() == 0:
            return None
        gpu = cuda.Device(0)
        major, minor = gpu.compute_capability()
        return CudaDevice(gpu.name(), f"{major}.{minor}", gpu.total_memory() / 2**30)
    except Exception:  # ImportError, or pycuda.driver.Error when there is no driver or device
        return None


def _probe_nvidia_smi() -> CudaDevice | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else None


def parse_nvidia_smi(output: str) -> CudaDevice | None:
    """The first line of `nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv,noheader,nounits`."""
    for line in output.splitlines():
        parts = [part.strip() for part in line.rsplit(",", 2)]  # GPU names may contain commas; the numbers do not
        if len(parts) == 3 and _SMI_CAPABILITY.match(parts[1]):
            try:
                return CudaDevice(parts[0], parts[1], float(parts[2]) / 1024)  # MiB -> GiB
            except ValueError:
                return None
    return None


def installed_tensorrt() -> str | None:
    """major.minor of the installed TensorRT Python package, read from its metadata (TensorRT is not imported)."""
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return ".".join(version.split(".")[:2])
    return None
