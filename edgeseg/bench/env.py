"""The machine a benchmark ran on: CPU, cores, threads, memory, library versions, GPU and clocks, Jetson power
mode, and the load on the machine, so a published number can be judged and reproduced.

Everything is read from /proc, /sys and the vendors' command-line tools where present; nothing here imports torch,
and a missing tool leaves its field None instead of failing the benchmark.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from edgeseg.manifest import library_versions, now_utc

LIBRARIES = ("numpy", "opencv-python-headless", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxslim", "torch",
             "torchvision", "transformers", "segmentation-models-pytorch", "tensorrt", "pycuda", "matplotlib")


def collect_env(threads: int | None = None) -> dict:
    cores = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    env = {
        "created": now_utc(),
        "host": platform.node(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_cores": cores,
        "cpu_cores_usable": usable,
        "cpu_governor": read_text_quietly("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "threads": threads,  # None: each library's default (ONNX Runtime: physical cores, torch: all cores)
        "memory_gb": _memory_gb(),
        "load_avg_1m_at_start": load_average(),
        "versions": library_versions(*LIBRARIES),
        "ort_providers": _ort_providers(),
        "gpu": gpu_info(),
        "jetson": jetson_info(),
        "edgeseg_commit": _git_commit(),
    }
    env["warnings"] = environment_warnings(env)
    return env


def cpu_model() -> str:
    text = read_text_quietly("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Model", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine() or "unknown cpu"


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def gpu_info() -> dict | None:
    """The first NVIDIA GPU by nvidia-smi: name, driver, memory and clocks (current and maximum); None without."""
    if not shutil.which("nvidia-smi"):
        return None
    fields = ("name", "driver_version", "memory.total", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem",
              "power.limit", "persistence_mode")
    output = run_quietly(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
    if not output:
        return None
    values = [value.strip() for value in output.splitlines()[0].split(",")]
    return dict(zip(("name", "driver", "memory_mb", "clock_sm_mhz", "clock_mem_mhz", "clock_max_sm_mhz",
                     "clock_max_mem_mhz", "power_limit_w", "persistence_mode"), values))


def jetson_info() -> dict | None:
    """A Jetson's board model, L4T release and power mode (nvpmodel -q); None elsewhere."""
    release = read_text_quietly("/etc/nv_tegra_release")
    model = read_text_quietly("/proc/device-tree/model")
    if release is None and (model is None or "jetson" not in model.lower()):
        return None
    power_mode = run_quietly(["nvpmodel", "-q"]) if shutil.which("nvpmodel") else None
    return {"model": model.strip("\x00 \n") if model else None,
            "l4t": release.splitlines()[0] if release else None,
            "power_mode": " ".join(power_mode.split()) if power_mode else None,
            "nvpmodel": parse_nvpmodel_query(power_mode) if power_mode else None,
            "clocks": read_jetson_clocks()}


def parse_nvpmodel_query(output: str) -> dict | None:
    """`nvpmodel -q`: 'NV Power Mode: MAXN' and, on the next line, the mode id (Xavier adds an 'NV Fan Mode' line)."""
    match = re.search(r"NV Power Mode:[ \t]*(\S+)[ \t]*(?:\r?\n\s*(\d+))?", output)
    if match is None:
        return None
    return {"name": match.group(1), "id": int(match.group(2)) if match.group(2) else None}


_GPU_DEVFREQ = re.compile(r"(gpu|ga10b|gv11b|gp10b|gm20b)", re.IGNORECASE)


def read_jetson_clocks(root: str | Path = "/") -> dict:
    """Current, minimum and maximum clocks (MHz) of the GPU (devfreq) and each CPU policy (cpufreq), and the EMC
    rate where it is readable without root: what `jetson_clocks --show` prints, from sysfs. With jetson_clocks on,
    current equals maximum; a benchmark with current below maximum ran with dynamic clocks."""
    root = Path(root)
    clocks: dict = {"gpu": None, "cpu": {}, "emc_mhz": None}
    for device in sorted((root / "sys/class/devfreq").glob("*")):
        if _GPU_DEVFREQ.search(device.name):
            clocks["gpu"] = {"device": device.name, "governor": read_text_quietly(str(device / "governor")),
                             **{f"{key}_mhz": _hz_to_mhz(read_text_quietly(str(device / f"{key}_freq")), 1e6)
                                for key in ("cur", "min", "max")}}
            break
    for policy in sorted((root / "sys/devices/system/cpu/cpufreq").glob("policy*")):
        clocks["cpu"][policy.name] = {
            "cpus": read_text_quietly(str(policy / "related_cpus")),
            "governor": read_text_quietly(str(policy / "scaling_governor")),
            **{f"{key}_mhz": _hz_to_mhz(read_text_quietly(str(policy / f"scaling_{key}_freq")), 1e3)
               for key in ("cur", "min", "max")}}
    emc = read_text_quietly(str(root / "sys/kernel/debug/bpmp/debug/clk/emc/rate"))  # root only; None otherwise
    clocks["emc_mhz"] = _hz_to_mhz(emc, 1e6)
    return clocks


def _hz_to_mhz(text: str | None, divisor: float) -> float | None:
    try:
        return round(int(text) / divisor, 1) if text is not None else None
    except ValueError:
        return None


def machine_name(env: dict) -> str:
    """A short, file-name-safe name for the results folder: jetson-<board>, gpu-<gpu> or cpu-<cpu>-<N>c."""
    if env.get("jetson") and env["jetson"].get("model"):
        return "jetson-" + slug(env["jetson"]["model"].lower().replace("nvidia", "").replace("jetson", ""))
    if env.get("gpu") and env["gpu"].get("name"):
        return "gpu-" + slug(env["gpu"]["name"].lower().replace("nvidia", "").replace("geforce", ""))
    return f"cpu-{slug(env.get('cpu_model') or 'unknown')}-{env.get('cpu_cores_usable') or env.get('cpu_cores')}c"


def slug(text: str, limit: int = 40) -> str:
    """'Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz' -> 'intel-xeon-platinum-8375c'."""
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    text = re.sub(r"@.*$", "", text)  # the nominal clock says little and makes names long
    text = re.sub(r"\b(cpu|processor|with radeon graphics|\d+-core)\b", " ", text)
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return text[:limit].rstrip("-") or "unknown"


def environment_warnings(env: dict) -> list[str]:
    """Conditions that make latency numbers unfit to publish, said plainly in the results."""
    warnings = []
    load, usable = env.get("load_avg_1m_at_start"), env.get("cpu_cores_usable") or 1
    if load is not None and load > 0.5 * usable:
        warnings.append(f"load average {load} on {usable} usable cores when the run started: other work shares "
                        f"the CPU, so latencies are inflated")
    if env.get("cpu_governor") and env["cpu_governor"] not in ("performance",):
        warnings.append(f"CPU frequency governor is {env['cpu_governor']!r}, not 'performance': clocks may vary "
                        f"between rows")
    return warnings


def _ort_providers() -> list[str] | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return list(onnxruntime.get_available_providers())


def _memory_gb() -> float | None:
    match = re.search(r"^MemTotal:\s+(\d+) kB", read_text_quietly("/proc/meminfo") or "", re.MULTILINE)
    return round(int(match.group(1)) / 2**20, 1) if match else None


def _git_commit() -> str | None:
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists():
        return None
    commit = run_quietly(["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"])
    if not commit:
        return None
    dirty = run_quietly(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"])
    return commit.strip() + ("-dirty" if dirty else "")


def read_text_quietly(path: str) -> str | None:
    """A small system file's text, stripped; None when it cannot be read (probes never raise)."""
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def run_quietly(command: list[str]) -> str | None:
    """A probe command's stdout, stripped; None when it is missing, fails, times out or prints nothing."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None
