"""This machine, as an engine builder or runner: can it build for a target, and what GPU and TensorRT it has.

A TensorRT engine is only valid on the GPU model and TensorRT version that built it, so a host builds an
engine for a target only when it IS that target: TensorRT importable, a CUDA GPU present, and the same compute
capability (for a Jetson, the board itself: aarch64 with the Jetson's GPU). The decision is a pure function of
`HostFacts`, so it is tested on any machine; only `probe_host` and `live_environment` touch the hardware.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from typing import Iterator

from edgeseg.errors import EdgesegError, MissingDependency, UsageError
from edgeseg.lazy import lazy_import
from edgeseg.target_registry import CudaDevice, Target, probe_cuda_device

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
        problem = f"tensorrt cannot be imported here ({type(exc).__name__}: {_first_line(exc)})"
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
        raise EdgesegError(f"cannot open CUDA device {device_index}: {_first_line(exc)}") from exc
    context.push()
    try:
        yield context
    finally:
        cuda.Context.pop()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
