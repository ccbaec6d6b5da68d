#!/usr/bin/env python3
"""edgeseg's CPU deployment vs OpenVINO + NNCF out of the box, measured side by side in one run.

For each built CPU bundle (`edgeseg build --target cpu`), this measures in one process, with interleaved latency
rounds (machine drift hits every row alike, so the ratios hold on a busy machine):

  ort-cpu/fp32            ONNX Runtime FP32, the latency reference (ratio 1.0)
  ort-cpu/int8-edgeseg    the ONNX Runtime INT8 model of the bundle
  <bundle default>        the variant 'edgeseg build' chose and demo/bench run (marked ours), and for an
                          OpenVINO INT8 default the same file with the other float-layer hint (f32 / bf16)
  ablation                for an OpenVINO default, the same variant without the runner's exact graph rewrites
                          (runners/ov_rewrites.py): what they are worth, side by side
  peers, marked peer:     OpenVINO FP32 with its default precision (bf16 on CPUs with AVX512-BF16/AMX, as
                          OpenVINO picks it), and OpenVINO + NNCF defaults: nncf.quantize(model, dataset) with
                          nothing but the dataset, given the bundle's own calibration images, at OpenVINO's
                          default precision. For a bundle whose model.onnx edgeseg rewrote (export_rewrites),
                          also NNCF defaults on a plain export of the same weights (torch.onnx.export + onnxslim,
                          no rewrites): what a user exporting the model themselves would run, and ONNX
                          Runtime FP32 on that plain export: the second latency reference (latency_ratio_plain,
                          the table's last ratio column), since the rewrites speed up the first one too.

mIoU on the whole test split (accuracy is not noisy; --eval-limit to shorten), drop vs ORT FP32 in points.
Every row but the plain-export peer runs the bundle's own model.onnx (with edgeseg's exact export rewrites,
recorded as export_rewrites): those peers get the same graph, so what separates them from ours is the backend,
precision and quantization; the plain-export peer adds what the rewrites are worth.

    EDGESEG_DATA=... python benchmarks/cpu_openvino.py bundles/segformer-b0-cpu bundles/deeplabv3plus-mobilenetv2-cpu
    # -> benchmarks/results/cpu-openvino/<model>-<threads>t.json and results.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))  # runs from a checkout without installing edgeseg

from edgeseg import logs  # noqa: E402
from edgeseg.bundle_layout import (CALIBRATION_MANIFEST, FP32_ONNX, ONNX_FILES, REPORT_JSON,  # noqa: E402
                                   sidecar_name)
from edgeseg.cpu_variants import CpuVariant, best_variant, measure_variants  # noqa: E402
from edgeseg.manifest import write_json  # noqa: E402

RESULTS = CHECKOUT / "benchmarks" / "results" / "cpu-openvino"


def openvino_default_hint() -> str:
    import openvino as ov

    value = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")).lower()
    return "bf16" if "bfloat16" in value or value == "bf16" else "f32"


def nncf_defaults_peer(bundle: Path, work: Path, data_root: str | None, fp32: Path | None = None) -> Path:
    """nncf.quantize(ov_model, nncf.Dataset(images)): NNCF's defaults, the bundle's calibration images, on the
    bundle's model.onnx (or `fp32`)."""
    import nncf
    import openvino as ov

    from edgeseg.calibration import calibration_batches, load_calibration_set
    from edgeseg.export import onnx_preprocessing

    from edgeseg.manifest import sha256_file

    # keyed by the FP32 model's hash: a rebuilt bundle gets a fresh peer, never one quantized from its old model
    fp32 = fp32 or bundle / FP32_ONNX
    out = work / f"{bundle.name}.{sha256_file(fp32)[:12]}.nncf-defaults.xml"
    if out.is_file():
        return out
    _, paths = load_calibration_set(bundle / CALIBRATION_MANIFEST, data_root)
    images = list(calibration_batches(paths, onnx_preprocessing(bundle / FP32_ONNX)))
    quantized = nncf.quantize(ov.Core().read_model(str(fp32)), nncf.Dataset(images))
    work.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def plain_export(bundle: Path, model: str, work: Path, data_root: str | None) -> Path | None:
    """The model as a user's own export gives it (torch.onnx.export + onnxslim, without edgeseg's exact rewrites),
    for bundles whose model.onnx was rewritten; None when there was nothing to rewrite."""
    from edgeseg.export import ExportConfig, export_model, onnx_preprocessing
    from edgeseg.manifest import sha256_file
    from edgeseg.zoo.weights import load_model

    sidecar = bundle / sidecar_name(FP32_ONNX)
    manifest = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    if not manifest.get("rewrites"):
        return None
    plain = work / f"{bundle.name}.{sha256_file(bundle / FP32_ONNX)[:12]}.plain.onnx"
    if not plain.is_file():
        weights = manifest.get("weights")
        weights = weights if isinstance(weights, str) and Path(weights).is_file() else None
        size = tuple(onnx_preprocessing(bundle / FP32_ONNX).input_size)
        work.mkdir(parents=True, exist_ok=True)
        export_model(load_model(model, weights), model, ExportConfig(size=size, rewrite=False, data_root=data_root,
                                                                     threads=1), plain)
    return plain


def variants_for(bundle: Path, peer_model: Path, hint: str, plain_peer: Path | None = None,
                 plain_fp32: Path | None = None) -> list[CpuVariant]:
    ours = best_variant(bundle)
    if ours is None:
        raise SystemExit(f"{bundle}: {REPORT_JSON} names no default CPU variant; rebuild with 'edgeseg build "
                         "--target cpu'")
    variants = [CpuVariant("ort-cpu", "fp32", FP32_ONNX),
                CpuVariant("ort-cpu", "int8", ONNX_FILES["int8"], "edgeseg")]
    if ours not in variants:
        variants.append(ours)
    if ours.backend == "ov-cpu" and ours.precision == "int8":  # the same file with the other float-layer hint
        other = "f32" if ours.hint == "bf16" else "bf16"
        if other == "f32" or hint == "bf16":
            variants.append(CpuVariant("ov-cpu", "int8", ours.file, ours.quantizer, other))
    if ours.backend == "ov-cpu":  # ablation: the default without the OpenVINO runner's rewrites
        variants.append(replace(ours, runner_rewrites=False))
    variants += [CpuVariant("ov-cpu", "fp32" if hint == "f32" else "bf16", FP32_ONNX, hint=hint, peer=True),
                 CpuVariant("ov-cpu", "int8", str(peer_model.resolve()), "nncf-defaults", hint, peer=True)]
    if plain_peer is not None:
        variants.append(CpuVariant("ov-cpu", "int8", str(plain_peer.resolve()), "nncf-defaults-plain-export", hint,
                                   peer=True))
    if plain_fp32 is not None:  # the second latency reference: ONNX Runtime FP32 on the user's own export
        variants.append(CpuVariant("ort-cpu", "fp32", str(plain_fp32.resolve()), "plain-export", peer=True))
    return variants


PLAIN_FP32 = "ort-cpu/fp32-plain-export (peer)"


def add_plain_ratios(rows: list[dict]) -> None:
    """latency_ratio_plain: each row's p50 over ONNX Runtime FP32 on the plain export, where that row exists."""
    plain = next((row for row in rows if row["name"] == PLAIN_FP32), None)
    for row in rows:
        if plain is not None:
            row["latency_ratio_plain"] = row["latency_p50_ms"] / plain["latency_p50_ms"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path, help="CPU bundles built by 'edgeseg build --target cpu'")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds (2 runs per row each)")
    parser.add_argument("--eval-limit", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "edgeseg" / "peers")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-plain-peer", dest="plain_peer", action="store_false",
                        help="skip the peer on a plain export (needs torch and the weights) for rewritten bundles")
    args = parser.parse_args(argv)
    logs.configure()  # the rows' result lines and progress on stderr, as the CLI says them
    hint = openvino_default_hint()
    for bundle in args.bundles:
        report = json.loads((bundle / REPORT_JSON).read_text())
        started = time.monotonic()
        peer = nncf_defaults_peer(bundle, args.work, args.data_root)
        plain = plain_export(bundle, report["model"], args.work, args.data_root) if args.plain_peer else None
        plain_peer = nncf_defaults_peer(bundle, args.work, args.data_root, fp32=plain) if plain else None
        variants = variants_for(bundle, peer, hint, plain_peer, plain)
        with logs.nested("  "):
            measured = measure_variants(bundle, variants, "camvid", "test", args.data_root, args.eval_limit,
                                        args.threads, args.rounds)
        ours = best_variant(bundle)
        add_plain_ratios(measured["rows"])
        for row in measured["rows"]:
            row["ours"] = row["name"] == ours.name
            if not Path(row["file"]).is_absolute():
                continue
            row["file"] = Path(row["file"]).name  # peers live in the work folder, not the bundle
        from edgeseg.bench.env import collect_env

        export_sidecar = bundle / sidecar_name(FP32_ONNX)
        export = json.loads(export_sidecar.read_text()) if export_sidecar.is_file() else {}
        result = {"schema": 1, "model": report["model"], "bundle": bundle.name, "threads": args.threads,
                  # exact graph rewrites of the bundle's model.onnx (edgeseg/graph_rewrites.py): every row runs
                  # them, the ORT FP32 reference and the peers (which quantize the same model.onnx) included
                  "export_rewrites": export.get("rewrites", []),
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
    lines = ["| model | variant | who | float layers | mIoU | drop (points) | p50 ms | vs ORT FP32 | "
             "vs ORT FP32, plain export | MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path in result_files:
        result = json.loads(path.read_text())
        for row in result["rows"]:
            who = "peer" if row.get("peer") else ("**edgeseg default**" if row.get("ours") else
                                                  "ablation" if row.get("runner_rewrites") is False else "edgeseg")
            lines.append(f"| {result['model']} ({result['images']} img, {result['threads']} thr) | {row['name']} | "
                         f"{who} | {row.get('inference_precision') or '-'} | {row['miou']:.4f} | "
                         f"{row['miou_drop']:+.2f} | {row['latency_p50_ms']:.1f} | {row['latency_ratio']:.3f}x | "
                         f"{_ratio(row.get('latency_ratio_plain'))} | {row['size_mb']:.1f} |")
    return lines


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"  # three decimals: the targets are ratios like 0.33x


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
