"""Benchmark results as JSON (the record), CSV (for spreadsheets) and Markdown (for people), rewritten atomically
after every row, so a crash or Ctrl-C midway keeps every finished row and never leaves a half-written file.

results.json: {"schema": 1, "complete": bool, "suite": {...}, "env": {...}, "rows": [...]}; `complete` stays
false until the last row is in, so a reader can tell a finished run from an interrupted one.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.errors import UsageError
from edgeseg.manifest import atomic_path, read_json, write_json

if TYPE_CHECKING:
    from rich.table import Table

RESULTS_SCHEMA = 1
JSON_NAME, CSV_NAME, MD_NAME = "results.json", "results.csv", "results.md"
# benchmarks/device_check.py's result: a results file (same schema and row shape) beside results.json
DEVICE_CHECK_NAME = "device-check.json"

# (column, how to read it from a row); the CSV has them all, Markdown and the terminal a readable subset.
CSV_COLUMNS = (
    ("id", lambda r: r["id"]), ("model", lambda r: r["model"]), ("precision", lambda r: r["precision"]),
    ("backend", lambda r: r["backend"]), ("size", lambda r: size_text(r)), ("status", lambda r: r["status"]),
    ("reason", lambda r: r.get("reason")), ("optional", lambda r: r.get("optional", False)),
    *((f"latency_{key}", (lambda k: lambda r: _get(r, "latency_ms", k))(key))
      for key in ("p50_ms", "mean_ms", "p90_ms", "p99_ms", "std_ms", "runs")),
    *((f"e2e_{key}", (lambda k: lambda r: _get(r, "e2e_latency_ms", k))(key))
      for key in ("p50_ms", "mean_ms", "p90_ms", "p99_ms", "std_ms", "runs")),
    ("fps_batch_1", lambda r: _get(r, "throughput_fps", "batch_1")),
    ("batch", lambda r: r.get("batch")),
    ("fps_batch_n", lambda r: _get(r, "throughput_fps", f"batch_{r.get('batch')}")),
    ("miou", lambda r: _get(r, "accuracy", "miou")), ("miou_drop", lambda r: _get(r, "accuracy", "miou_drop")),
    ("agreement_miou", lambda r: _get(r, "accuracy", "agreement_miou")),
    ("pixel_agreement", lambda r: _get(r, "accuracy", "pixel_agreement")),
    ("reference", lambda r: _get(r, "accuracy", "reference")),
    ("peak_rss_mb", lambda r: _get(r, "memory", "peak_rss_mb")),
    ("baseline_rss_mb", lambda r: _get(r, "memory", "baseline_rss_mb")),
    ("gpu_mb", lambda r: _get(r, "memory", "gpu_mb")),
    ("board_w_mean", lambda r: _get(r.get("power") or {}, "board_w", "mean")),
    ("board_w_peak", lambda r: _get(r.get("power") or {}, "board_w", "peak")),
    ("energy_mj_per_frame", lambda r: _get(r, "power", "energy_per_frame_mj")),
    ("gpu_util_pct", lambda r: _get(r, "power", "gpu_util_pct")),
    ("artifact_mb", lambda r: _get(r, "artifact", "mb")), ("params_m", lambda r: r.get("params_m")),
    ("gflops", lambda r: r.get("gflops")), ("threads", lambda r: _get(r, "runtime", "threads")),
    ("warnings", lambda r: "; ".join(r.get("warnings") or []) or None),
)

# (header, column, format) for Markdown and the terminal
SUMMARY_COLUMNS = (
    ("model", "model", "{}"), ("precision", "precision", "{}"), ("backend", "backend", "{}"), ("input", "size", "{}"),
    ("p50 ms", "latency_p50_ms", "{:.2f}"), ("p90 ms", "latency_p90_ms", "{:.2f}"),
    ("end-to-end p50 ms", "e2e_p50_ms", "{:.2f}"), ("FPS (b=1)", "fps_batch_1", "{:.1f}"),
    ("FPS (b=N)", "fps_batch_n", "{:.1f}"), ("mIoU", "miou", "{:.4f}"), ("drop (points)", "miou_drop", "{:+.2f}"),
    ("agreement mIoU", "agreement_miou", "{:.4f}"), ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
    ("size MB", "artifact_mb", "{:.1f}"), ("params M", "params_m", "{:.2f}"), ("GFLOPs", "gflops", "{:.2f}"),
)


def size_text(row: dict) -> str:
    return "x".join(str(v) for v in row["size"])


def _get(row: dict, section: str, key: str) -> object:
    value = row.get(section)
    return value.get(key) if isinstance(value, dict) else None


def flat_row(row: dict) -> dict:
    return {name: read(row) for name, read in CSV_COLUMNS}


# The terminal's narrower subset (a 160-column log stays readable); reasons are in the log lines above it.
TERMINAL_COLUMNS = (
    ("model", "model", "{}"), ("prec.", "precision", "{}"), ("backend", "backend", "{}"), ("input", "size", "{}"),
    ("status", "status", "{}"), ("p50 ms", "latency_p50_ms", "{:.2f}"), ("e2e p50 ms", "e2e_p50_ms", "{:.2f}"),
    ("FPS b=1", "fps_batch_1", "{:.1f}"), ("FPS b=N", "fps_batch_n", "{:.1f}"), ("mIoU", "miou", "{:.4f}"),
    ("drop", "miou_drop", "{:+.2f}"), ("agree", "agreement_miou", "{:.4f}"), ("RSS MB", "peak_rss_mb", "{:.0f}"),
    ("MB", "artifact_mb", "{:.1f}"),
)


def summary_cells(row: dict, columns: tuple[tuple[str, str], ...] = SUMMARY_COLUMNS) -> list[str]:
    """The row's Markdown/terminal cells; a row that did not run shows its status in the number columns."""
    flat = flat_row(row)
    cells = []
    for _header, column, fmt in columns:
        value = flat[column]
        if column == "fps_batch_n" and value is not None:
            cells.append(f"{value:.1f} (b={flat['batch']})")
        elif value is None:
            shows_status = column == "latency_p50_ms" and row["status"] != "ok" and columns is SUMMARY_COLUMNS
            cells.append(row["status"] if shows_status else "-")
        else:
            cells.append(fmt.format(value))
    return cells


def markdown_table(rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(header for header, _, _ in SUMMARY_COLUMNS) + " |",
             "|" + "|".join(" --- " for _ in SUMMARY_COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in summary_cells(row)) + " |" for row in rows]
    return lines


def read_device_check(folder: Path) -> dict | None:
    """The device check's results in `folder` (benchmarks/results/<machine>/), or None when it has none."""
    path = Path(folder) / DEVICE_CHECK_NAME
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or data.get("schema") != RESULTS_SCHEMA or not isinstance(data.get("rows"), list):
        raise UsageError(f"{path} is not a device check result (results schema {RESULTS_SCHEMA})")
    return data


def merge_device_check(results: dict, device_check: dict | None) -> dict:
    """A results dict with the device check's measured rows added after the bench's own (a row id the bench
    measured itself stays the bench's). Merged rows carry source = device-check.json, which the notes name."""
    if not device_check:
        return results
    own = {row["id"] for row in results["rows"]}
    extra = [{**row, "source": DEVICE_CHECK_NAME} for row in device_check["rows"]
             if row["id"] not in own and row.get("status") == "ok"]
    return {**results, "rows": results["rows"] + extra,
            "device_check": {"created": device_check.get("created"), "passed": device_check.get("passed"),
                             "device": device_check.get("device"), "rows": len(extra)}}


def row_notes(rows: list[dict]) -> list[str]:
    """Why rows did not run, and what a row's figures mean beyond the table (batch-1-only throughput, noise)."""
    notes = []
    for row in rows:
        if row.get("source") == DEVICE_CHECK_NAME:
            check = row.get("check") or {}
            notes.append(f"- `{row['id']}`: from the device check ({DEVICE_CHECK_NAME}, "
                         f"benchmarks/device_check.py): batch 1, accuracy on {row['accuracy'].get('images')} images"
                         + (f", pixel agreement with ONNX Runtime FP32 {check['value']:.4f} (needs "
                            f"{check['threshold']})" if check.get("value") is not None else ""))
        if row["status"] != "ok":
            notes.append(f"- `{row['id']}`: {row['status']}: {row.get('reason')}")
        elif row.get("throughput_note"):
            notes.append(f"- `{row['id']}`: {row['throughput_note']}")
        power = row.get("power") or {}
        if power.get("available"):  # on a Jetson: tegrastats or jtop during the model-only timing
            energy = power.get("energy_per_frame_mj")
            notes.append(f"- `{row['id']}`: board {power['board_w']['mean']:.2f} W mean, {power['board_w']['peak']:.2f}"
                         f" W peak ({power['board']}, {power['source']}, {power['samples']} samples)"
                         + (f", {energy:.1f} mJ/frame" if energy is not None else "")
                         + (f", GPU {power['gpu_util_pct']:.0f}%" if power.get("gpu_util_pct") is not None else ""))
        for warning in row.get("warnings") or []:
            notes.append(f"- `{row['id']}`: {warning}")
    return notes


def environment_line(env: dict) -> str:
    gpu = env.get("gpu") or {}
    jetson = env.get("jetson") or {}
    parts = [f"{env.get('cpu_model')} ({env.get('cpu_cores_usable')} usable cores)",
             f"threads {env['threads'] if env.get('threads') else 'library default'}"]
    if gpu.get("name"):
        parts.append(f"{gpu['name']} (SM {gpu.get('clock_sm_mhz')}/{gpu.get('clock_max_sm_mhz')} MHz)")
    if jetson.get("power_mode"):
        parts.append(f"power mode: {jetson['power_mode']}")
    jetson_gpu = (jetson.get("clocks") or {}).get("gpu") or {}
    if jetson_gpu.get("cur_mhz"):
        parts.append(f"GPU clock {jetson_gpu['cur_mhz']:g}/{jetson_gpu.get('max_mhz') or 0:g} MHz")
    versions = env.get("versions", {})
    parts.append(", ".join(f"{name} {versions[name]}" for name in ("onnxruntime", "torch", "tensorrt")
                           if name in versions))
    return "; ".join(parts)


class ResultsWriter:
    """Holds the run's rows and rewrites results.json/.csv/.md after each one."""

    def __init__(self, out_dir: Path, env: dict, suite: dict) -> None:
        self.out_dir = Path(out_dir)
        self.env, self.suite = env, suite
        self.rows: list[dict] = []
        self.complete = False
        self.started = False  # nothing is written until a row was measured: no results file when nothing ran

    @property
    def json_path(self) -> Path:
        return self.out_dir / JSON_NAME

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.started = self.started or row["status"] == "ok"
        if self.started:
            self.flush()

    def finish(self) -> None:
        self.complete = True
        if self.started:
            self.flush()

    def flush(self) -> None:
        write_json(self.json_path, {"schema": RESULTS_SCHEMA, "complete": self.complete, "suite": self.suite,
                                    "env": self.env, "rows": self.rows})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[name for name, _ in CSV_COLUMNS], lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in flat_row(row).items()})
        _write_text(self.out_dir / CSV_NAME, buffer.getvalue())
        _write_text(self.out_dir / MD_NAME, self.markdown())

    def markdown(self) -> str:
        """results.md: the bench's rows, then the rows of a device check in the same folder (merged)."""
        suite = self.suite
        try:
            merged, device_check_problem = merge_device_check({"rows": self.rows},
                                                              read_device_check(self.out_dir)), None
        except UsageError as exc:  # a broken device-check.json must not stop the bench that is running
            merged, device_check_problem = {"rows": self.rows}, str(exc)
        lines = [f"# edgeseg bench: {suite.get('name')}", "",
                 f"Machine: {environment_line(self.env)}.", "",
                 f"Accuracy on {suite.get('dataset')}/{suite.get('split')}"
                 + (f" (first {suite['eval_limit']} images)" if suite.get("eval_limit") else "")
                 + "; drop and agreement are against the FP32 torch predictions. Latency: batch 1, model only "
                   "and end-to-end (uint8 frame to colourised labels), each timed for at least "
                   f"{suite.get('min_seconds')} s after {suite.get('warmup')} warm-up runs. Peak RSS: a fresh "
                   "process per row.", ""]
        if not self.complete:
            lines += ["**Incomplete run**: rows are still running or the run was interrupted.", ""]
        for warning in self.env.get("warnings") or []:
            lines += [f"> warning: {warning}", ""]
        if device_check_problem:
            lines += [f"> warning: not merged: {device_check_problem}", ""]
        if merged.get("device_check"):
            check = merged["device_check"]
            device = check.get("device") or {}
            lines += [f"With the device check of {str(check.get('created'))[:10]} "
                      f"({'passed' if check.get('passed') else 'FAILED'}; TensorRT {device.get('tensorrt')} on "
                      f"{(device.get('gpu') or {}).get('name')}): {check['rows']} more rows, marked in the notes.", ""]
        lines += markdown_table(merged["rows"])
        notes = row_notes(merged["rows"])
        if notes:
            lines += ["", "Notes:", "", *notes]
        return "\n".join(lines) + "\n"


def terminal_table(rows: list[dict], title: str) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for header, column, _ in TERMINAL_COLUMNS:
        table.add_column(header, justify="left" if column in ("model", "precision", "backend", "size", "status")
                         else "right", overflow="fold")
    style = {"ok": None, "unsupported": "dim", "error": "red"}
    for row in rows:
        table.add_row(*summary_cells(row, TERMINAL_COLUMNS), style=style.get(row["status"]))
    return table


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
