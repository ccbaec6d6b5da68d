"""Power and energy on a Jetson: sample `tegrastats` (or jtop, when tegrastats is not on the PATH and jetson-stats
is installed) while a benchmark row is timed, and report board power, GPU/CPU/RAM use and energy per frame.

Parsing is pure and tested on lines of each format (tests/fixtures/tegrastats/):
- Orin, JetPack 5 and 6: `RAM 5821/30536MB ... CPU [12%@2201,...] GR3D_FREQ 97%@[1300,1300] ... VDD_GPU_SOC
  14794mW/14203mW ...` (AGX Orin) or `... GR3D_FREQ 94% ... VDD_IN 9012mW/8844mW ...` (Orin Nano / NX, JetPack 6);
- Xavier, JetPack 4 and 5: `... GR3D_FREQ 99%@1377 ... GPU 11542/10987 CPU 1241/1190 ...` (AGX Xavier, milliwatts
  without a unit) or `... VDD_IN 5079mW/5079mW ...` (Xavier NX).
A rail reads `NAME now/average`, in milliwatts. Board power is the module's input rail where tegrastats has one
(VDD_IN; POM_5V_IN on Nano/TX2); AGX Orin and AGX Xavier have none, so there it is the sum of the rails they
report, and the record says which. The carrier board, fan and peripherals are never included.

The sampler only runs a subprocess (or jtop's client); nothing is imported or started off a Jetson.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # the module's input, where tegrastats reports it
SAMPLE_INTERVAL_MS = 100

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?", re.IGNORECASE)
_GPU = re.compile(r"\bGR3D(?:_FREQ)? (\d+)%(?:@\[?([\d,]+)\]?)?")
_EMC = re.compile(r"\bEMC(?:_FREQ)? (\d+)%(?:@(\d+))?")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "NC"}  # NC: an unconnected monitor channel (AGX Orin lists two)


@dataclass(frozen=True)
class TegraSample:
    ram_used_mb: int | None
    ram_total_mb: int | None
    cpu_load_pct: tuple[float, ...]  # online cores only
    cpu_mhz: tuple[int, ...]
    gpu_load_pct: float | None
    gpu_mhz: int | None
    emc_load_pct: float | None
    rails_mw: dict[str, int]  # instantaneous milliwatts per rail
    temperatures_c: dict[str, float] = field(default_factory=dict)

    @property
    def board_mw(self) -> int | None:
        for name in TOTAL_RAILS:
            if name in self.rails_mw:
                return self.rails_mw[name]
        return sum(self.rails_mw.values()) if self.rails_mw else None

    @property
    def board_source(self) -> str | None:
        for name in TOTAL_RAILS:
            if name in self.rails_mw:
                return name
        return "sum of " + "+".join(self.rails_mw) if self.rails_mw else None

    @property
    def cpu_load_mean_pct(self) -> float | None:
        return sum(self.cpu_load_pct) / len(self.cpu_load_pct) if self.cpu_load_pct else None


def parse_tegrastats(line: str) -> TegraSample | None:
    """One tegrastats line (any JetPack since 4.x, with or without its leading timestamp); None for a line that
    is not tegrastats output."""
    ram = _RAM.search(line)
    if ram is None:
        return None
    loads, mhz = [], []
    cpu = _CPU.search(line)
    if cpu:
        for entry in cpu.group(1).split(","):
            match = re.match(r"\s*(\d+)%(?:@(\d+))?", entry)
            if match:  # 'off': a core powered down by the power mode, not idle
                loads.append(float(match.group(1)))
                frequency = match.group(2) or cpu.group(2)
                if frequency:
                    mhz.append(int(frequency))
    gpu = _GPU.search(line)
    gpu_mhz = None
    if gpu and gpu.group(2):
        gpu_mhz = max(int(value) for value in gpu.group(2).split(",") if value)  # one figure per GPC on Orin
    emc = _EMC.search(line)
    rails = {name: int(now) for name, now, _ in _RAIL.findall(line) if name not in _NOT_RAILS}
    temperatures = {name: float(value) for name, value in _TEMP.findall(line) if float(value) > -200}  # -256: off
    return TegraSample(ram_used_mb=int(ram.group(1)), ram_total_mb=int(ram.group(2)), cpu_load_pct=tuple(loads),
                       cpu_mhz=tuple(mhz), gpu_load_pct=float(gpu.group(1)) if gpu else None, gpu_mhz=gpu_mhz,
                       emc_load_pct=float(emc.group(1)) if emc else None, rails_mw=rails,
                       temperatures_c=temperatures)


def summarize_power(samples: list[TegraSample], mean_latency_ms: float | None, source: str) -> dict:
    """Average and peak board power (W), GPU/CPU use, peak RAM and energy per frame over a timed row.

    Energy per frame (mJ) = average board power (W) x mean time per frame (ms): the whole board's draw while the
    row ran, idle parts included, which is what a battery pays per frame at this frame rate."""
    powered = [sample for sample in samples if sample.board_mw is not None]
    if not powered:
        return {"available": False, "source": source, "samples": len(samples),
                "reason": "no power rails in the samples" if samples else "no samples during the row"}
    watts = [sample.board_mw / 1000.0 for sample in powered]
    mean_w = sum(watts) / len(watts)
    gpu = [sample.gpu_load_pct for sample in samples if sample.gpu_load_pct is not None]
    cpu = [sample.cpu_load_mean_pct for sample in samples if sample.cpu_load_mean_pct is not None]
    ram = [sample.ram_used_mb for sample in samples if sample.ram_used_mb is not None]
    rails = sorted({name for sample in powered for name in sample.rails_mw})
    return {
        "available": True,
        "source": source,
        "samples": len(samples),
        "board": powered[-1].board_source,
        "board_w": {"mean": round(mean_w, 3), "peak": round(max(watts), 3)},
        "rails_mean_w": {name: round(sum(s.rails_mw.get(name, 0) for s in powered) / len(powered) / 1000.0, 3)
                         for name in rails},
        "gpu_util_pct": round(sum(gpu) / len(gpu), 1) if gpu else None,
        "gpu_mhz_max": max((s.gpu_mhz for s in samples if s.gpu_mhz), default=None),
        "cpu_util_pct": round(sum(cpu) / len(cpu), 1) if cpu else None,
        "ram_used_mb_peak": max(ram) if ram else None,
        "energy_per_frame_mj": round(mean_w * mean_latency_ms, 2) if mean_latency_ms else None,
    }


# ---------------------------------------------------------------------------------------------------------------
# Sampling (device only)

class TegrastatsSampler:
    """Runs `tegrastats --interval N` and keeps its parsed lines until stop()."""

    source = "tegrastats"

    def __init__(self, executable: str, interval_ms: int = SAMPLE_INTERVAL_MS) -> None:
        self._process = subprocess.Popen([executable, "--interval", str(interval_ms)], stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
        self.samples: list[TegraSample] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._process.stdout:
            sample = parse_tegrastats(line)
            if sample is not None:
                self.samples.append(sample)

    def stop(self) -> list[TegraSample]:
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._thread.join(timeout=5)
        return list(self.samples)


class JtopSampler:
    """Polls jetson-stats' jtop service (`pip install jetson-stats`) for the total power and GPU/CPU/RAM use."""

    source = "jtop"

    def __init__(self, interval_ms: int = SAMPLE_INTERVAL_MS) -> None:
        from jtop import jtop  # optional, and only on a Jetson with the jtop service running

        self._jetson = jtop(interval=max(interval_ms, 100) / 1000.0)
        self._jetson.start()
        self.samples: list[TegraSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(interval_ms / 1000.0,), daemon=True)
        self._thread.start()

    def _poll(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            sample = jtop_sample(self._jetson.power, self._jetson.stats)
            if sample is not None:
                self.samples.append(sample)

    def stop(self) -> list[TegraSample]:
        self._stop.set()
        self._thread.join(timeout=5)
        self._jetson.close()
        return list(self.samples)


def jtop_sample(power: dict, stats: dict) -> TegraSample | None:
    """A TegraSample from jtop's `power` ({'rail': {...: {'power': mW}}, 'tot': {'power': mW}}) and `stats`."""
    rails = {str(name): int(values.get("power", 0)) for name, values in (power.get("rail") or {}).items()}
    total = (power.get("tot") or {}).get("power")
    if total is not None:
        rails = {"VDD_IN": int(total), **{k: v for k, v in rails.items() if k != "VDD_IN"}}
    if not rails:
        return None
    cpu = [float(value) for key, value in stats.items() if re.fullmatch(r"CPU\d+", str(key))
           and isinstance(value, (int, float))]
    gpu = stats.get("GPU")
    return TegraSample(ram_used_mb=None, ram_total_mb=None, cpu_load_pct=tuple(cpu), cpu_mhz=(),
                       gpu_load_pct=float(gpu) if isinstance(gpu, (int, float)) else None, gpu_mhz=None,
                       emc_load_pct=None, rails_mw=rails)


def start_sampler(interval_ms: int = SAMPLE_INTERVAL_MS) -> TegrastatsSampler | JtopSampler | None:
    """A running sampler on a Jetson (tegrastats, else jtop), or None where there is neither."""
    executable = shutil.which("tegrastats") or ("/usr/bin/tegrastats" if os.path.exists("/usr/bin/tegrastats")
                                                else None)
    if executable:
        try:
            sampler = TegrastatsSampler(executable, interval_ms)
            time.sleep(interval_ms / 1000.0)  # the first line comes after one interval
            return sampler
        except OSError:
            pass
    try:
        return JtopSampler(interval_ms)
    except Exception:  # jetson-stats missing, or its service not running: no power numbers, the row still runs
        return None


def unavailable(reason: str = "no tegrastats or jtop here (not a Jetson)") -> dict:
    return {"available": False, "source": None, "reason": reason}
