"""Charts of a benchmark run (matplotlib, Agg backend, imported only here and only when plotting):

latency_vs_miou.png  one point per model x precision (its fastest backend), labelled, with the Pareto front:
                     the points no other point beats on both latency and mIoU, i.e. the only sensible choices.
per_class_iou_change.png  per-class IoU change of every measured row against its FP32 torch reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.lazy import lazy_import
from edgeseg.manifest import atomic_path

if TYPE_CHECKING:
    from types import ModuleType

    from matplotlib.figure import Figure

LATENCY_PLOT, CLASS_PLOT = "latency_vs_miou.png", "per_class_iou_change.png"


def _pyplot() -> ModuleType:
    matplotlib = lazy_import("matplotlib")
    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    return lazy_import("matplotlib.pyplot")


def plot_points(rows: list[dict]) -> list[dict]:
    """The fastest measured backend of each model x precision (x size): [{label, latency_ms, miou, row}]."""
    sizes = {tuple(row["size"]) for row in rows}
    best: dict[tuple, dict] = {}
    for row in rows:
        if row["status"] != "ok" or (row.get("accuracy") or {}).get("miou") is None:
            continue
        key = (row["model"], row["precision"], tuple(row["size"]))
        if key not in best or row["latency_ms"]["p50_ms"] < best[key]["latency_ms"]["p50_ms"]:
            best[key] = row
    points = []
    for (model, precision, size), row in best.items():
        label = f"{model} {precision} ({row['backend']}" + (f", {size[0]}x{size[1]})" if len(sizes) > 1 else ")")
        points.append({"label": label, "latency_ms": row["latency_ms"]["p50_ms"], "miou": row["accuracy"]["miou"],
                       "id": row["id"]})
    return points


def pareto_front(points: list[dict]) -> list[dict]:
    """Points not dominated by another (faster or as fast, and as accurate or more, one strictly), by latency."""
    front = []
    for point in sorted(points, key=lambda p: (p["latency_ms"], -p["miou"])):
        if not front or point["miou"] > front[-1]["miou"]:
            front.append(point)
    return front


def plot_latency_vs_miou(rows: list[dict], path: Path, title: str) -> Path | None:
    points = plot_points(rows)
    if not points:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 5.5), dpi=120)
    front = pareto_front(points)
    on_front = {p["id"] for p in front}
    for point in points:
        axes.scatter(point["latency_ms"], point["miou"] * 100, s=40, zorder=3,
                     color="tab:blue" if point["id"] in on_front else "tab:gray")
        axes.annotate(point["label"], (point["latency_ms"], point["miou"] * 100), textcoords="offset points",
                      xytext=(5, 4), fontsize=7)
    axes.step([p["latency_ms"] for p in front], [p["miou"] * 100 for p in front], where="post", color="tab:blue",
              linewidth=1.2, label="Pareto front", zorder=2)
    latencies = [p["latency_ms"] for p in points]
    if max(latencies) / max(min(latencies), 1e-9) > 20:
        axes.set_xscale("log")
    axes.margins(x=0.2, y=0.1)  # room for the labels of the outermost points
    axes.set_xlabel("model-only latency, p50 (ms, batch 1; fastest backend of each)")
    axes.set_ylabel("mIoU (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    _save(plt, figure, path)
    return path


def plot_class_iou_change(rows: list[dict], path: Path, title: str) -> Path | None:
    measured = [row for row in rows if row["status"] == "ok" and (row.get("accuracy") or {}).get("reference")
                and row["accuracy"]["reference"] != row["id"] and row["accuracy"].get("per_class_iou_change")]
    if not measured:
        return None
    plt = _pyplot()
    classes = list(measured[0]["accuracy"]["per_class_iou_change"])
    height = 0.8 / len(measured)
    figure, axes = plt.subplots(figsize=(8, max(3.0, 0.35 * len(classes) * max(1, len(measured) / 3))), dpi=120)
    for index, row in enumerate(measured):
        change = row["accuracy"]["per_class_iou_change"]
        values = [change.get(name) or 0.0 for name in classes]  # a class absent from both has no change
        positions = [c + index * height - 0.4 + height / 2 for c in range(len(classes))]
        axes.barh(positions, values, height=height, label=f"{row['model']} {row['precision']} {row['backend']}")
    axes.set_yticks(range(len(classes)), classes, fontsize=8)
    axes.invert_yaxis()
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel("IoU change vs FP32 torch reference (points; negative = worse)")
    axes.set_ylabel("class")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7, loc="best")
    axes.grid(True, axis="x", alpha=0.3)
    _save(plt, figure, path)
    return path


def write_plots(rows: list[dict], out_dir: Path, title: str) -> list[Path]:
    written = [plot_latency_vs_miou(rows, Path(out_dir) / LATENCY_PLOT, title),
               plot_class_iou_change(rows, Path(out_dir) / CLASS_PLOT, title)]
    return [path for path in written if path is not None]


def _save(plt: ModuleType, figure: Figure, path: Path) -> None:
    figure.tight_layout()
    with atomic_path(path) as tmp:  # a crash mid-save never leaves a truncated PNG
        figure.savefig(tmp, format="png")
    plt.close(figure)
