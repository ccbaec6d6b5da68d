"""Accuracy and latency of each precision of a bundle, measured side by side, and the report files.

report.json keeps one entry per precision with miou, miou_drop (points vs fp32), latency_p50_ms,
latency_ratio (vs fp32, same run) and size_mb, so other tools can read it without knowing edgeseg. CPU bundles
add `rows` (every backend x precision, edgeseg.cpu_variants) and the `default` variant demo and bench run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.bundle_layout import REPORT_JSON, REPORT_MD
from edgeseg.manifest import write_json

if TYPE_CHECKING:
    from edgeseg.runners.ort import OrtRunner

log = logging.getLogger(__name__)


def measure_precisions(paths: dict[str, Path], dataset_name: str, split: str, data_root: str | os.PathLike | None,
                       limit: int | None, threads: int | None, latency_rounds: int, accuracy: bool = True) -> dict:
    """accuracy=False (no labelled data, e.g. a foreign model calibrated on a plain image folder): latency and
    size only, mIoU recorded as None. Result lines go to this module's logger."""
    from edgeseg.bench.latency import SIDE_BY_SIDE_METHOD, time_runners_side_by_side
    from edgeseg.data.datasets import open_dataset
    from edgeseg.evaluate import evaluate
    from edgeseg.runners.ort import OrtRunner

    runners = {precision: OrtRunner(path, device="cpu", threads=threads) for precision, path in paths.items()}
    if not accuracy:
        return _latency_only(paths, runners, latency_rounds, threads)
    dataset = open_dataset(dataset_name, split, data_root, label_set=next(iter(runners.values())).preprocessing)
    results: dict[str, dict] = {}
    for precision, runner in runners.items():
        scores = evaluate(runner.infer, dataset, runner.preprocessing, limit=limit, description=f"eval {precision}")
        results[precision] = {"miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy,
                              "per_class_iou": scores.to_dict(dataset.label_set.classes)["per_class_iou"],
                              "size_mb": paths[precision].stat().st_size / 1e6}
        images = min(len(dataset), limit or len(dataset))
        log.info(f"{precision}: mIoU {scores.miou:.4f} on {dataset.name} ({images} images)")
    timings = time_runners_side_by_side(runners, latency_rounds)
    reference_miou, reference_ms = results["fp32"]["miou"], timings["fp32"].p50_ms
    for precision, result in results.items():
        result["miou_drop"] = (reference_miou - result["miou"]) * 100
        result["latency_p50_ms"] = timings[precision].p50_ms
        result["latency_ratio"] = timings[precision].p50_ms / reference_ms
        result["latency"] = timings[precision].to_dict()
        log.info(f"{precision}: p50 {result['latency_p50_ms']:.1f} ms ({result['latency_ratio']:.2f}x fp32), "
                 f"mIoU drop {result['miou_drop']:+.2f} points on {dataset.name}, {result['size_mb']:.1f} MB")
    return {"dataset": dataset.name, "images": min(len(dataset), limit or len(dataset)), "backend": "ort-cpu",
            "threads": threads, "latency_method": SIDE_BY_SIDE_METHOD,
            "precisions": results}


def _latency_only(paths: dict[str, Path], runners: dict[str, OrtRunner], latency_rounds: int,
                  threads: int | None) -> dict:
    from edgeseg.bench.latency import SIDE_BY_SIDE_METHOD, time_runners_side_by_side

    timings = time_runners_side_by_side(runners, latency_rounds)
    results = {}
    for precision, path in paths.items():
        results[precision] = {"miou": None, "miou_drop": None, "pixel_accuracy": None, "per_class_iou": None,
                              "size_mb": path.stat().st_size / 1e6, "latency_p50_ms": timings[precision].p50_ms,
                              "latency_ratio": timings[precision].p50_ms / timings["fp32"].p50_ms,
                              "latency": timings[precision].to_dict()}
        log.info(f"{precision}: p50 {results[precision]['latency_p50_ms']:.1f} ms "
                 f"({results[precision]['latency_ratio']:.2f}x fp32), {results[precision]['size_mb']:.1f} MB "
                 f"(no labelled data: accuracy not measured)")
    return {"dataset": None, "images": 0, "backend": "ort-cpu", "threads": threads,
            "latency_method": SIDE_BY_SIDE_METHOD, "precisions": results}


def write_reports(bundle: Path, model: str, target: str, measured: dict, manifest: dict) -> None:
    report = {"schema": 1, "model": model, "target": target, "eval": {"dataset": measured["dataset"],
                                                                     "images": measured["images"]},
              "latency_backend": measured["backend"], "threads": measured["threads"],
              "latency_method": measured["latency_method"], "precisions": measured["precisions"],
              "layers_kept_float": manifest.get("layers_kept_float", []),
              "parity": manifest["checks"].get("parity"), "engine": manifest.get("engine")}
    if "rows" in measured:  # cpu target: every backend x precision, and the default demo/bench run
        report.update({"rows": measured["rows"], "default": measured["default"],
                       "max_miou_drop": measured["max_miou_drop"], "openvino_note": measured.get("openvino_note"),
                       "left_out": measured.get("left_out", []), "runoff": measured.get("runoff")})
    write_json(bundle / REPORT_JSON, report)
    lines = [f"# {model} for {target}", "",
             f"Accuracy on {measured['dataset']} ({measured['images']} images); latency on ONNX Runtime CPU, "
             f"{measured['latency_method']}, measured side by side in one run.", "",
             "| precision | mIoU | drop (points) | p50 latency (ms) | vs fp32 | size (MB) |",
             "| --- | --- | --- | --- | --- | --- |"]
    if measured["dataset"] is None:
        lines[2] = ("No labelled data was given, so accuracy was not measured (mIoU '-'); latency on ONNX Runtime "
                    f"CPU, {measured['latency_method']}, measured side by side in one run.")
    for precision, result in measured["precisions"].items():
        if result["miou"] is None:
            lines.append(f"| {precision} | - | - | {result['latency_p50_ms']:.1f} | {result['latency_ratio']:.2f}x | "
                         f"{result['size_mb']:.1f} |")
            continue
        lines.append(f"| {precision} | {result['miou']:.4f} | {result['miou_drop']:+.2f} | "
                     f"{result['latency_p50_ms']:.1f} | {result['latency_ratio']:.2f}x | {result['size_mb']:.1f} |")
    if "rows" in measured:
        lines += ["", "Every CPU backend x precision, side by side in the same run (latency vs ONNX Runtime fp32; "
                  "OpenVINO float layers run in the recorded precision hint):", "",
                  "| variant | backend | precision | float layers | mIoU | drop (points) | p50 latency (ms) "
                  "| vs ORT fp32 | size (MB) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in measured["rows"]:
            lines.append(f"| {row['name']}{' **default**' if row['name'] == measured['default']['name'] else ''} "
                         f"| {row['backend']} | {row['precision']} | {row.get('inference_precision') or '-'} "
                         f"| {row['miou']:.4f} | {row['miou_drop']:+.2f} | {row['latency_p50_ms']:.1f} "
                         f"| {row['latency_ratio']:.2f}x | {row['size_mb']:.1f} |")
        budget = measured["max_miou_drop"]
        within = f"fastest within {budget:g} points of mIoU" if budget is not None else "fastest"
        lines += ["", f"Default ({within}, run by demo and bench on this bundle): {measured['default']['name']}."]
        if measured.get("runoff"):
            runoff = measured["runoff"]
            timed = sorted((row for row in measured["rows"] if "runoff" in row),
                           key=lambda row: row["runoff"]["p50_ms"])
            listed = ", ".join(f"{row['name']} {row['runoff']['p50_ms']:.1f} ms ({row['runoff']['latency_ratio']:.2f}x)"
                               for row in timed)
            lines.append(f"Runoff: the rows within {runoff['margin']:.0%} of the fastest, timed again side by side "
                         f"with ORT fp32 ({runoff['rounds']} rounds); the default is the fastest of them: {listed}.")
        if measured.get("openvino_note"):
            lines.append(f"OpenVINO: {measured['openvino_note']}.")
        for record in measured.get("left_out", []):
            lines.append(f"Left out: {record['name']}: OpenVINO {record['why']} (tried in a separate process).")
    kept = manifest.get("layers_kept_float") or []
    lines += ["", f"INT8 layers kept in float: {', '.join(kept) if kept else 'none'}."]
    engine = manifest.get("engine") or {}
    if engine.get("engine"):
        lines.append(f"TensorRT engine: {engine['engine']}.")
    elif engine.get("reason"):
        lines.append(f"Engine: not built here ({engine['reason']}).")
    family = engine.get("family")
    if family:
        modules = ", ".join(f"{name} (workspace {entry['workspace_mb']} MiB, {entry['dla_cores']} DLA)"
                            for name, entry in family["modules"].items())
        lines.append(f"Module: {family['name']} is a family; the module is resolved on the device and its plan "
                     f"applied: {modules}.")
    deepstream = engine.get("deepstream") or {}
    if deepstream.get("config"):
        lines.append(f"DeepStream: {deepstream['config']} runs {deepstream['onnx']} ({deepstream['normalisation']}).")
    (bundle / REPORT_MD).write_text("\n".join(lines) + "\n")
