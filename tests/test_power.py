"""tegrastats parsing on lines in each board's format (tests/fixtures/tegrastats), the power summary, and the
Jetson env block."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeseg.bench.env import parse_nvpmodel_query, read_jetson_clocks
from edgeseg.bench.power import TegraSample, jtop_sample, parse_tegrastats, summarize_power

FIXTURES = Path(__file__).parent / "fixtures" / "tegrastats"


def fixture_lines(name: str) -> list[TegraSample]:
    samples = [parse_tegrastats(line) for line in (FIXTURES / name).read_text().splitlines()]
    assert len(samples) == 3 and all(samples)
    return samples


def test_agx_orin_jetpack5_has_no_total_rail_so_the_rails_are_summed():
    first = fixture_lines("agx-orin-jp5.txt")[0]
    assert (first.ram_used_mb, first.ram_total_mb) == (5821, 30536)
    assert len(first.cpu_load_pct) == 12 and first.cpu_load_pct[4] == 21 and set(first.cpu_mhz) == {2201}
    assert first.gpu_load_pct == 97 and first.gpu_mhz == 1300 and first.emc_load_pct == 18
    assert first.rails_mw == {"VDD_GPU_SOC": 14794, "VDD_CPU_CV": 2382, "VIN_SYS_5V0": 5348,
                              "VDDQ_VDD2_1V8AO": 2117}  # the two NC (not connected) channels are left out
    assert first.board_mw == 14794 + 2382 + 5348 + 2117
    assert first.board_source == "sum of VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0+VDDQ_VDD2_1V8AO"
    assert first.temperatures_c["GPU"] == 53.437 and "CV0" not in first.temperatures_c  # -256C: sensor off


def test_orin_nano_jetpack6_reads_vdd_in_and_a_gpu_load_without_clock():
    first = fixture_lines("orin-nano-jp6.txt")[0]
    assert first.board_mw == 9012 and first.board_source == "VDD_IN"
    assert first.gpu_load_pct == 94 and first.gpu_mhz is None and first.emc_load_pct is None
    assert first.cpu_load_pct == (14, 9, 6, 11, 4, 2) and first.ram_total_mb == 7620


def test_orin_nx_jetpack5():
    first = fixture_lines("orin-nx-jp5.txt")[0]
    assert first.board_mw == 14216 and first.gpu_load_pct == 92 and first.gpu_mhz == 918
    assert first.rails_mw["VDD_CPU_GPU_CV"] == 6384


def test_xavier_nx_offline_cores_are_not_counted_as_idle():
    first = fixture_lines("xavier-nx-jp5.txt")[0]
    assert first.cpu_load_pct == (18, 11, 9, 13)  # 'off,off': cores the power mode switched off
    assert first.cpu_load_mean_pct == pytest.approx(12.75)
    assert first.board_mw == 9832 and first.gpu_mhz == 1109


def test_agx_xavier_jetpack4_rails_without_units():
    first = fixture_lines("agx-xavier-jp4.txt")[0]
    assert first.rails_mw == {"GPU": 11542, "CPU": 1241, "SOC": 3257, "CV": 0, "VDDRQ": 1862, "SYS5V": 3542}
    assert first.board_mw == 21444 and first.board_source.startswith("sum of GPU+CPU")
    assert first.gpu_load_pct == 99 and first.gpu_mhz == 1377 and len(first.cpu_load_pct) == 8


def test_old_nano_format_and_non_tegrastats_lines():
    old = parse_tegrastats("RAM 1409/3964MB (lfb 28x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
                           "CPU [22%@518,67%@518,off,off] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 PLL@28.5C "
                           "CPU@32C POM_5V_IN 2003/2003 POM_5V_GPU 0/0 POM_5V_CPU 320/320")
    assert old.board_mw == 2003 and old.board_source == "POM_5V_IN" and old.gpu_mhz == 76
    assert parse_tegrastats("") is None and parse_tegrastats("tegrastats: permission denied") is None


def test_summary_over_a_row_and_energy_per_frame():
    samples = fixture_lines("orin-nano-jp6.txt")
    summary = summarize_power(samples, mean_latency_ms=12.5, source="tegrastats")
    mean_w = (9012 + 9293 + 8851) / 3 / 1000
    assert summary["available"] and summary["samples"] == 3 and summary["board"] == "VDD_IN"
    assert summary["board_w"] == {"mean": pytest.approx(mean_w, abs=1e-3), "peak": 9.293}
    # mJ per frame = W x ms: 9.052 W for 12.5 ms
    assert summary["energy_per_frame_mj"] == pytest.approx(mean_w * 12.5, abs=0.01)
    assert summary["gpu_util_pct"] == pytest.approx((94 + 99 + 96) / 3, abs=0.05)
    assert summary["ram_used_mb_peak"] == 3143
    assert summary["rails_mean_w"]["VDD_SOC"] == pytest.approx((2610 + 2651 + 2570) / 3000, abs=1e-3)


def test_summary_without_samples_says_why():
    assert summarize_power([], 10.0, "tegrastats") == {"available": False, "source": "tegrastats", "samples": 0,
                                                        "reason": "no samples during the row"}


def test_jtop_values_become_a_sample():
    sample = jtop_sample({"rail": {"VDD_CPU_GPU_CV": {"power": 3400}, "VDD_SOC": {"power": 2600}},
                          "tot": {"power": 9100}}, {"CPU1": 14, "CPU2": 9, "GPU": 95.0, "RAM": 0.41})
    assert sample.board_mw == 9100 and sample.board_source == "VDD_IN"
    assert sample.cpu_load_pct == (14.0, 9.0) and sample.gpu_load_pct == 95.0
    assert jtop_sample({}, {}) is None


@pytest.mark.parametrize("output, expected", [
    ("NV Power Mode: MAXN\n0\n", {"name": "MAXN", "id": 0}),
    ("NV Fan Mode:quiet\nNV Power Mode: MODE_15W_6CORE\n2\n", {"name": "MODE_15W_6CORE", "id": 2}),
    ("NV Power Mode: 15W\n", {"name": "15W", "id": None}),
    ("nvpmodel: permission denied", None),
])
def test_nvpmodel_query(output, expected):
    assert parse_nvpmodel_query(output) == expected


def test_clocks_from_a_sysfs_tree(tmp_path):
    gpu = tmp_path / "sys/class/devfreq/17000000.ga10b"
    gpu.mkdir(parents=True)
    for name, value in {"cur_freq": "1300500000", "min_freq": "306000000", "max_freq": "1300500000",
                        "governor": "nvhost_podgov"}.items():
        (gpu / name).write_text(value + "\n")
    (tmp_path / "sys/class/devfreq/15340000.vic").mkdir()
    policy = tmp_path / "sys/devices/system/cpu/cpufreq/policy0"
    policy.mkdir(parents=True)
    for name, value in {"scaling_cur_freq": "1510400", "scaling_min_freq": "115200", "scaling_max_freq": "1510400",
                        "scaling_governor": "schedutil", "related_cpus": "0 1 2 3"}.items():
        (policy / name).write_text(value + "\n")
    clocks = read_jetson_clocks(tmp_path)
    assert clocks["gpu"] == {"device": "17000000.ga10b", "governor": "nvhost_podgov", "cur_mhz": 1300.5,
                             "min_mhz": 306.0, "max_mhz": 1300.5}
    assert clocks["cpu"]["policy0"]["cur_mhz"] == 1510.4 and clocks["cpu"]["policy0"]["cpus"] == "0 1 2 3"
    assert clocks["emc_mhz"] is None
    assert read_jetson_clocks(tmp_path / "nothing") == {"gpu": None, "cpu": {}, "emc_mhz": None}


def test_sampler_runs_tegrastats_and_parses_what_it_prints(tmp_path, monkeypatch):
    """A stand-in tegrastats on the PATH replays the Orin Nano fixture lines, as the real one prints them."""
    from edgeseg.bench.power import start_sampler

    tool = tmp_path / "tegrastats"
    tool.write_text("#!/bin/sh\n[ \"$1\" = --interval ] || exit 2\n"
                    f"while true; do cat {FIXTURES / 'orin-nano-jp6.txt'}; sleep 0.05; done\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    sampler = start_sampler(interval_ms=50)
    assert sampler is not None and sampler.source == "tegrastats"
    import time

    time.sleep(0.3)
    samples = sampler.stop()
    assert len(samples) >= 3 and {s.board_mw for s in samples} <= {9012, 9293, 8851}
    summary = summarize_power(samples, 20.0, sampler.source)
    assert summary["available"] and 8.8 < summary["board_w"]["mean"] < 9.3
    assert sampler._process.poll() is not None  # the subprocess is gone


def test_no_sampler_off_a_jetson(monkeypatch, tmp_path):
    from edgeseg.bench.power import start_sampler

    monkeypatch.setenv("PATH", str(tmp_path))
    if not __import__("os").path.exists("/usr/bin/tegrastats"):
        assert start_sampler() is None  # jtop is not installed here either: no power numbers, no failure


def test_results_notes_and_env_line_carry_power_and_clocks():
    from edgeseg.bench.outputs import environment_line, flat_row, row_notes

    power = summarize_power(fixture_lines("orin-nano-jp6.txt"), 12.5, "tegrastats")
    row = {"id": "segformer-b0/int8/trt/360x480", "status": "ok", "power": power, "size": [360, 480]}
    assert row_notes([row]) == ["- `segformer-b0/int8/trt/360x480`: board 9.05 W mean, 9.29 W peak (VDD_IN, "
                                "tegrastats, 3 samples), 113.2 mJ/frame, GPU 96%"]
    flat = flat_row({**row, "model": "m", "precision": "int8", "backend": "trt"})
    assert flat["board_w_peak"] == 9.293 and flat["energy_mj_per_frame"] == power["energy_per_frame_mj"]
    env = {"cpu_model": "ARMv8 Processor rev 1 (v8l)", "cpu_cores_usable": 6, "threads": None,
           "jetson": {"power_mode": "NV Power Mode: 15W 2", "clocks": {"gpu": {"cur_mhz": 624.8, "max_mhz": 624.8}}},
           "versions": {}}
    assert "power mode: NV Power Mode: 15W 2" in environment_line(env)
    assert "GPU clock 624.8/624.8 MHz" in environment_line(env)
