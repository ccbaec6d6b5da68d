#!/usr/bin/env python3
"""edgeseg's CPU deployment vs OpenVINO + NNCF out of the box, measured side by side in one run.

For each built CPU bundle (`edgeseg build --target cpu`), this measures in one process, with interleaved latency
rounds (machine drift hits every row alike, so the ratios hold on a busy machine):

  ort-cpu/fp32            ONNX Runtime FP32, the latency reference (ratio 1.0)
  ort-cpu/int8-edgeseg    the ONNX Runtime INT8 model of the bundle
  <bundle default>        the variant 'edgeseg build' chose and demo/bench run (marked ours)
  peers, marked peer:     OpenVINO FP32 with its default precision (bf16 on CPUs with AVX512-BF16/AMX, as
                          OpenVINO picks it), and OpenVINO + NNCF defaults: nncf.quantize(model, dataset) with
                          nothing but the dataset, given the bundle's own calibration images, at OpenVINO's
                          default precision.

mIoU on the whole test split (accuracy is not noisy; --eval-limit to shorten), drop vs ORT FP32 in points.

    EDGESEG_DATA=... python benchmarks/cpu_openvino.py bundles/segformer-b0-cpu bundles/deeplabv3plus-mobilenetv2-cpu
    # -> benchmarks/results/cpu-openvino/<model>-<threads>t.json and results.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))  # runs from a checkout without installing edgeseg

from edgeseg.bundle_layout import CALIBRATION_MANIFEST, FP32_ONNX, ONNX_FILES, REPORT_JSON  # noqa: E402
from edgeseg.cpu_variants import CpuVariant, best_variant, measure_variants  # noqa: E402
from edgeseg.manifest import write_json  # noqa: E402

RESULTS = CHECKOUT / "benchmarks" / "results" / "cpu-openvino"


def openvino_default_hint() -> str:
    import openvino as ov

    value = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")).lower()
    return "bf16" if "bfloat16" in value or value == "bf16" else "f32"


def nncf_defaults_peer(bundle: Path, work: Path, data_root: str | None) -> Path:
    """nncf.quantize(ov_model, nncf.Dataset(images)): NNCF's defaults, the bundle's calibration images."""
    import nncf
    import openvino as ov

    from edgeseg.calibration import calibration_batches, load_calibration_set
    from edgeseg.export import onnx_preprocessing

    out = work / f"{bundle.name}.nncf-defaults.xml"
    if out.is_file():
        return out
    _, paths = load_calibration_set(bundle / CALIBRATION_MANIFEST, data_root)
    images = list(calibration_batches(paths, onnx_preprocessing(bundle / FP32_ONNX)))
    quantized = nncf.quantize(ov.Core().read_model(str(bundle / FP32_ONNX)), nncf.Dataset(images))
    work.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def variants_for(bundle: Path, peer_model: Path, hint: str) -> list[CpuVariant]:
    ours = best_variant(bundle)
    if ours is None:
        raise SystemExit(f"{bundle}: {REPORT_JSON} names no default CPU variant; rebuild with 'edgeseg build "
                         "--target cpu'")
    variants = [CpuVariant("ort-cpu", "fp32", FP32_ONNX),
                CpuVariant("ort-cpu", "int8", ONNX_FILES["int8"], "edgeseg")]
    if ours not in variants:
        variants.append(ours)
    variants += [CpuVariant("ov-cpu", "fp32" if hint == "f32" else "bf16", FP32_ONNX, hint=hint, peer=True),
                 CpuVariant("ov-cpu", "int8", str(peer_model.resolve()), "nncf-defaults", hint, peer=True)]
    return variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path, help="CPU bundles built by 'edgeseg build --target cpu'")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds (2 runs per row each)")
    parser.add_argument("--eval-limit", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "edgeseg" / "peers")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    hint = openvino_default_hint()
    for bundle in args.bundles:
        report = json.loads((bundle / REPORT_JSON).read_text())
        started = time.monotonic()
        peer = nncf_defaults_peer(bundle, args.work, args.data_root)
        variants = variants_for(bundle, peer, hint)
        measured = measure_variants(bundle, variants, "camvid", "test", args.data_root, args.eval_limit,
                                    args.threads, args.rounds, log=lambda line: print("  " + line, flush=True))
        ours = best_variant(bundle)
        for row in measured["rows"]:
            row["ours"] = row["name"] == ours.name
            if not Path(row["file"]).is_absolute():
                continue
            row["file"] = Path(row["file"]).name  # peers live in the work folder, not the bundle
        from edgeseg.bench.env import collect_env

        result = {"schema": 1, "model": report["model"], "bundle": bundle.name, "threads": args.threads,
                  "openvino_default_precision": hint, "rounds": args.rounds, **measured,
                  "peers": "OpenVINO defaults (precision hint left to OpenVINO: recorded); NNCF defaults given the "
                           "bundle's calibration images", "seconds": round(time.monotonic() - started, 1),
                  "env": collect_env(args.threads)}
        out = args.out / f"{report['model']}-{args.threads}t.json"
        write_json(out, result)
        print(f"wrote {out}")
    write_markdown(args.out)
    return 0


def write_markdown(folder: Path) -> Path:
    lines = ["# edgeseg CPU vs OpenVINO + NNCF defaults", "",
             "Side by side in one run per model (benchmarks/cpu_openvino.py): p50 latency, batch 1, model only, "
             "interleaved rounds; ratio vs ONNX Runtime FP32 of the same run; mIoU on CamVid test.", ""]
    lines += table_lines(sorted(folder.glob("*.json")))
    path = folder / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def table_lines(result_files: list[Path]) -> list[str]:
    lines = ["| model | variant | who | float layers | mIoU | drop (points) | p50 ms | vs ORT FP32 | MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path in result_files:
        result = json.loads(path.read_text())
        for row in result["rows"]:
            who = "peer" if row.get("peer") else ("**edgeseg default**" if row.get("ours") else "edgeseg")
            lines.append(f"| {result['model']} ({result['images']} img, {result['threads']} thr) | {row['name']} | "
                         f"{who} | {row.get('inference_precision') or '-'} | {row['miou']:.4f} | "
                         f"{row['miou_drop']:+.2f} | {row['latency_p50_ms']:.1f} | {row['latency_ratio']:.2f}x | "
                         f"{row['size_mb']:.1f} |")
    return lines


START, END = "<!-- cpu-openvino-table:start -->", "<!-- cpu-openvino-table:end -->"


def render_readme(readme: Path, folder: Path = RESULTS, check: bool = False) -> bool:
    """Put the table of `folder`'s results between the README's cpu-openvino markers; True when it changed."""
    files = sorted(folder.glob("*.json"))
    text = readme.read_text()
    if not files or START not in text or END not in text:
        return False
    body = "\n".join([f"<!-- generated by benchmarks/render_readme_table.py from {folder.relative_to(CHECKOUT)}; "
                      "do not edit by hand -->", "", *table_lines(files)])
    head, rest = text.split(START, 1)
    updated = f"{head}{START}\n{body}\n{END}{rest.split(END, 1)[1]}"
    if updated != text and not check:
        readme.write_text(updated)
    return updated != text


if __name__ == "__main__":
    sys.exit(main())
