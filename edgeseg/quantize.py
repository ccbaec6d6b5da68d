"""Stage: precision into the ONNX graph. FP16 with overflow-prone ops kept in FP32, and INT8 Q/DQ post-training
quantization calibrated on a calibration manifest, with an optional accuracy budget that keeps the most
sensitive layers in float until the mIoU drop fits.

Precision lives in the graph (FP16 casts, Q/DQ nodes) because TensorRT 10+ strongly-typed builds and
TensorRT 11 take it from there; the same graphs run on ONNX Runtime.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeseg.calibration import calibration_batches, load_calibration_set
from edgeseg.distributed import is_main_process
from edgeseg.errors import EdgesegError, UsageError
from edgeseg.export import onnx_preprocessing, read_onnx_metadata
from edgeseg.manifest import Artifact, atomic_path, input_record, sha256_file, stage_manifest, write_json
from edgeseg.progress import ProgressLines

if TYPE_CHECKING:
    import onnx

    from edgeseg.card import ModelCard
    from edgeseg.zoo.contract import Preprocessing

log = logging.getLogger(__name__)

PROFILES = ("cpu", "trt")
METHODS = ("minmax", "entropy", "percentile")

# FP16 overflows in these (SegFormer's LayerNorm variance is the classic case), so they stay FP32 with casts
# around them; matmuls and convolutions, where the time goes, run in FP16.
FP16_KEEP_FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceL2", "Pow", "Sqrt", "Exp",
                      "Log", "Erf", "Div", "InstanceNormalization", "GroupNormalization", "Resize")

# TensorRT fuses Q/DQ into the inputs of these; quantizing other ops only adds reformatting.
TRT_QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


class QuantizeError(EdgesegError):
    """Quantization could not produce a model that meets what was asked."""


@dataclass(frozen=True)
class QuantizeConfig:
    profile: str = "cpu"  # cpu: uint8 activations, what ORT's CPU kernels run fastest; trt: symmetric int8
    method: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    max_miou_drop: float | None = None  # points of mIoU (e.g. 1.0); None: no accuracy loop
    eval_dataset: str = "camvid"
    eval_split: str = "val"
    eval_limit: int | None = None
    data_root: str | None = None
    keep_float: tuple[str, ...] = ()  # node names the user keeps in float
    max_fallback_rounds: int = 8
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise UsageError(f"unknown quantization profile {self.profile!r}; choose {', '.join(PROFILES)}")
        if self.method not in METHODS:
            raise UsageError(f"unknown calibration method {self.method!r}; choose {', '.join(METHODS)}")
        if self.max_miou_drop is not None and self.max_miou_drop < 0:
            raise UsageError("--max-miou-drop must be zero or positive (points of mIoU)")


def _require_edgeseg_onnx(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    metadata = read_onnx_metadata(path)
    if metadata.get("edgeseg.precision", "fp32") != "fp32":
        raise UsageError(f"{path} is already {metadata['edgeseg.precision']}; quantize the FP32 model.onnx")
    return metadata


def _with_card(fp32_path: Path, card: ModelCard | None, scratch: Path) -> Path:
    """A foreign FP32 graph plus its model card -> a copy carrying the card in its metadata (checked against the
    graph), so the quantized graph carries it on; without a card the graph must carry edgeseg metadata already."""
    if card is None:
        return fp32_path
    from edgeseg.card import write_carded_onnx

    if not fp32_path.is_file():
        raise UsageError(f"{fp32_path} does not exist")
    carded = scratch / fp32_path.name
    write_carded_onnx(fp32_path, card, carded, model_name=card.name or fp32_path.stem)
    return carded


def _card_record(card: ModelCard | None) -> dict:
    return {"card": {"origin": card.origin, **card.to_dict()}} if card is not None else {}


def convert_fp16(fp32_path: str | Path, out_path: str | Path, card: ModelCard | None = None) -> Artifact:
    """FP32 ONNX -> FP16 ONNX with float32 inputs/outputs and overflow-prone ops kept in FP32. A foreign graph
    comes with its model card (edgeseg.card.ModelCard), which the FP16 graph then carries."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    with tempfile.TemporaryDirectory(prefix="edgeseg-fp16-") as scratch:
        source = _with_card(fp32_path, card, Path(scratch))
        _require_edgeseg_onnx(source)
        graph = onnx.load(str(source))
    converted = convert_float_to_float16(graph, keep_io_types=True, op_block_list=list(FP16_KEEP_FP32_OPS))
    _set_precision(converted, "fp16")
    with atomic_path(out_path) as tmp:
        onnx.save(converted, str(tmp))
    manifest = stage_manifest("quantize", inputs={"onnx": input_record(fp32_path, out_path.parent)},
                              settings={"precision": "fp16", "fp32_ops": list(FP16_KEEP_FP32_OPS),
                                        "keep_io_types": True}, libraries=("onnx", "onnxruntime"))
    manifest.update({"precision": "fp16", "artifact": _artifact_record(out_path), **_card_record(card)})
    write_json(out_path.with_name(out_path.name + ".json"), manifest)
    return Artifact(out_path, manifest)


def _set_precision(graph: onnx.ModelProto, precision: str) -> None:
    for prop in graph.metadata_props:
        if prop.key == "edgeseg.precision":
            prop.value = precision
            return
    entry = graph.metadata_props.add()
    entry.key, entry.value = "edgeseg.precision", precision


def _artifact_record(path: Path) -> dict:
    return {"path": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


class _ManifestReader:
    """ONNX Runtime CalibrationDataReader over calibration images, supporting strided (chunked) collection so
    histogram calibrators never hold every activation of every image in memory at once."""

    def __init__(self, paths: list[Path], preprocessing: Preprocessing, input_name: str) -> None:
        self.paths, self.preprocessing, self.input_name = paths, preprocessing, input_name
        self.set_range(0, len(paths))

        self.progress: ProgressLines | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._batches = calibration_batches(self.paths[start_index:end_index], self.preprocessing)

    def start_pass(self) -> None:
        """A new calibration pass over all images (one per quantization: the budget loop re-quantizes)."""
        self.set_range(0, len(self.paths))
        self.progress = ProgressLines("INT8 calibration", len(self.paths), log)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        if self.progress is not None:
            self.progress.advance()
        return {self.input_name: batch}


def _quantize_once(prepared: Path, out_path: Path, reader: _ManifestReader, cfg: QuantizeConfig, exclude: list[str],
                   cache: Path, float_tail: list[str]) -> None:
    """One quantize_static pass; `exclude` (the user's and the budget loop's layers) and `float_tail`
    (logits_tail) stay in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    trt = cfg.profile == "trt"
    extra = {"ActivationSymmetric": trt, "WeightSymmetric": True, "CalibPercentile": cfg.percentile,
             "CalibStridedMinMax": _stride(len(reader)),
             # TensorRT takes biases in float and folds them itself; int32 bias Q/DQ only gets in its way.
             "QuantizeBias": not trt}
    reader.start_pass()
    with _ort_quantizer_warnings_silenced():
        quantize_static(
            str(prepared), str(out_path), reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(TRT_QUANTIZED_OPS) if trt else None,
            per_channel=cfg.per_channel, reduce_range=False,
            activation_type=QuantType.QInt8 if trt else QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=[*exclude, *float_tail], calibrate_method=method, extra_options=extra,
            calibration_cache_path=str(cache))
    if not trt:
        import onnx

        graph = onnx.load(str(out_path))
        if float_softmax_inputs(graph):
            onnx.save(graph, str(out_path))


@contextmanager
def _ort_quantizer_warnings_silenced() -> Iterator[None]:
    """ORT logs a root-logger warning per 1-D weight (LayerNorm) it cannot quantize per channel: expected, noise.
    Drop exactly those records (warnings logged on the root logger from onnxruntime's quantization package) while
    quantizing, instead of disabling logging for everyone, edgeseg's own progress lines included."""

    def keep(record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.WARNING and "onnxruntime" in record.pathname
                    and "quantization" in record.pathname)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def float_softmax_inputs(graph: onnx.ModelProto) -> int:
    """Remove the QuantizeLinear -> DequantizeLinear pair in front of each Softmax; returns how many.

    quantize_static quantizes the attention MatMuls on both sides of Softmax, so Softmax ends up between a DQ and
    a Q, which ONNX Runtime fuses into QLinearSoftmax: a lookup-table kernel that took 15-20% of SegFormer-B0's
    INT8 time on a 2-core AVX-512 CPU, more than the float Softmax and all the MatMuls around it. Without the pair
    the scores MatMul becomes MatMulIntegerToFloat (int8 inputs, float output) and Softmax runs MLAS's float
    kernel: INT8 SegFormer-B0 went from 0.61x to 0.50x ORT FP32 latency in the same run, and no activation is
    rounded that was not before (one rounding fewer)."""
    producers = {output: node for node in graph.graph.node for output in node.output}
    consumers: dict[str, int] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    removed = []
    for node in graph.graph.node:
        if node.op_type != "Softmax":
            continue
        dequantize = producers.get(node.input[0])
        quantize = producers.get(dequantize.input[0]) if dequantize is not None else None
        if (dequantize is None or quantize is None or dequantize.op_type != "DequantizeLinear"
                or quantize.op_type != "QuantizeLinear" or consumers.get(dequantize.output[0]) != 1
                or consumers.get(quantize.output[0]) != 1):
            continue
        node.input[0] = quantize.input[0]
        removed += [quantize, dequantize]
    for node in removed:
        graph.graph.node.remove(node)
    used = {name for node in graph.graph.node for name in node.input}
    unused = [init for init in graph.graph.initializer if init.name not in used]
    for init in unused:  # the pairs' scales and zero points
        graph.graph.initializer.remove(init)
    return len(removed) // 2


# What a segmentation graph does to its logits after the last weighted layer: upsample them to the input size,
# cut off the padding a stride needed, reshape. See logits_tail.
_TAIL_OPS = ("Resize", "Upsample", "Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity")


def logits_tail(graph: onnx.ModelProto) -> list[str]:
    """Names of the nodes between the last weighted layer and a graph output when they only resize, crop or
    reshape the logits: the cpu profile leaves them in float (the graph's logits come out unquantized).

    quantize_static would quantize that upsample and crop and re-quantize the full-size logits: one rounding
    more of what the argmax reads, and on OpenVINO it pins the tail to its slow form (the resize channels-last,
    then a full-size reorder and a reference Slice), which the OpenVINO runner otherwise splits per axis
    (runners/ov_rewrites): DeepLabV3+ INT8 ~34 -> ~32 ms on one core. ONNX Runtime runs the float tail as fast
    as the quantized one (37.6 vs 38.5 ms, same run)."""
    producers = {output: node for node in graph.graph.node for output in node.output}
    tail: list[str] = []
    for output in graph.graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type in _TAIL_OPS and node.name:
            tail.append(node.name)
            node = producers.get(node.input[0])
    return list(dict.fromkeys(tail))


def _stride(count: int) -> int:
    """The largest chunk of at most 16 images that divides the set (ORT requires an exact division)."""
    return max(d for d in range(1, min(16, count) + 1) if count % d == 0)


@contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    """ORT's symbolic shape inference saves its partial graph (sym_shape_infer_temp.onnx and a weights file) into
    the working directory when it cannot finish (e.g. on Col2Im): that litter stays in the scratch folder."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def quantize_int8(fp32_path: str | Path, calibration_path: str | Path, cfg: QuantizeConfig,
                  out_path: str | Path, card: ModelCard | None = None) -> Artifact:
    """FP32 ONNX + calibration manifest -> INT8 Q/DQ ONNX (+ manifest with the accuracy loop's record). A foreign
    graph comes with its model card, which the INT8 graph then carries; its FP32 reference is ONNX Runtime's.
    Result lines go to this module's logger (under torchrun from rank 0 only: the others repeat what it says)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    original, out_path = Path(fp32_path), Path(out_path)
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="edgeseg-quant-") as scratch:
        scratch = Path(scratch)
        (scratch / "card").mkdir()
        fp32_path = _with_card(original, card, scratch / "card")
        _require_edgeseg_onnx(fp32_path)
        preprocessing = onnx_preprocessing(fp32_path)
        calibration, paths = load_calibration_set(calibration_path, cfg.data_root)
        if not paths:
            raise UsageError(f"{calibration_path} lists no images")
        input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
        prepared = scratch / "prepared.onnx"
        try:  # symbolic shape inference + ORT graph clean-up, as ORT recommends before quantizing
            with _working_dir(scratch):
                quant_pre_process(str(Path(fp32_path).resolve()), str(prepared), skip_symbolic_shape=False)
        except Exception as exc:  # fall back to the exported graph, which is already simplified
            _say(f"quantization pre-processing skipped ({type(exc).__name__}); quantizing the exported graph")
            prepared.write_bytes(fp32_path.read_bytes())
        # trt quantizes only weighted layers: its tail is float already
        float_tail = logits_tail(onnx.load(str(prepared), load_external_data=False)) if cfg.profile == "cpu" else []
        cache = scratch / "ranges.json"
        candidate = scratch / "int8.onnx"
        reader = _ManifestReader(paths, preprocessing, input_name)
        excluded = list(cfg.keep_float)
        _quantize_once(prepared, candidate, reader, cfg, excluded, cache, float_tail)
        accuracy = None
        if cfg.max_miou_drop is not None:
            accuracy = _fit_accuracy_budget(fp32_path, prepared, candidate, reader, cfg, excluded, cache, paths,
                                            float_tail)
        if not is_main_process():  # under torchrun the other ranks only shared the budget's evaluation
            return Artifact(out_path, {"layers_kept_float": accuracy["kept_float"] if accuracy else excluded})
        graph = onnx.load(str(candidate))
        _set_precision(graph, "int8")
        with atomic_path(out_path) as tmp:
            onnx.save(graph, str(tmp))

    settings = {**cfg.__dict__, "keep_float": list(cfg.keep_float), "format": "QDQ",
                "activation_type": "int8 symmetric" if cfg.profile == "trt" else "uint8 asymmetric",
                "weight_type": "int8 symmetric" + (" per-channel" if cfg.per_channel else " per-tensor"),
                "quantized_ops": list(TRT_QUANTIZED_OPS) if cfg.profile == "trt" else "onnxruntime default",
                "float_logits_tail": float_tail}
    manifest = stage_manifest("quantize",
                              inputs={"onnx": input_record(original, out_path.parent),
                                      "calibration": input_record(calibration_path, out_path.parent)},
                              settings=settings, checks={"accuracy": accuracy} if accuracy else {},
                              libraries=("onnx", "onnxruntime"))
    manifest.update({"precision": "int8", "calibration": {"count": calibration["count"],
                                                          "strategy": calibration["strategy"]},
                     "layers_kept_float": accuracy["kept_float"] if accuracy else list(cfg.keep_float),
                     "seconds": round(time.monotonic() - started, 1), "artifact": _artifact_record(out_path),
                     **_card_record(card)})
    write_json(out_path.with_name(out_path.name + ".json"), manifest)
    return Artifact(out_path, manifest)


def _fit_accuracy_budget(fp32_path: Path, prepared: Path, candidate: Path, reader: _ManifestReader,
                         cfg: QuantizeConfig, excluded: list[str], cache: Path, calib_paths: list[Path],
                         float_tail: list[str]) -> dict:
    """Evaluate INT8 vs FP32; while the drop exceeds the budget, keep the most sensitive layers in float."""
    from edgeseg.quant_sensitivity import evaluate_onnx, rank_sensitivity

    fp32_miou = evaluate_onnx(fp32_path, cfg)
    int8_miou = evaluate_onnx(candidate, cfg)
    rounds = [{"kept_float": len(excluded), "miou": int8_miou, "drop": (fp32_miou - int8_miou) * 100}]
    _say(f"INT8 mIoU {int8_miou:.4f} vs FP32 {fp32_miou:.4f} on {_budget_split(cfg)}: drop {rounds[-1]['drop']:.2f} "
        f"points (budget {cfg.max_miou_drop})")
    ranking = None
    step = 1
    while rounds[-1]["drop"] > cfg.max_miou_drop and len(rounds) <= cfg.max_fallback_rounds:
        if ranking is None:
            _say(f"ranking the quantized layers by the error each adds, on {len(calib_paths[:4])} calibration images")
            ranking = [name for name, _ in rank_sensitivity(prepared, candidate, calib_paths[:4], reader.preprocessing,
                                                            reader.input_name) if name not in excluded]
        if not ranking:
            break
        newly, ranking = ranking[:step], ranking[step:]
        excluded.extend(newly)
        log.debug("budget round %d: keeping in float %s", len(rounds), ", ".join(newly))
        step *= 2  # 1, 2, 4, 8 ... layers: few rounds even when many layers matter
        _quantize_once(prepared, candidate, reader, cfg, excluded, cache, float_tail)
        int8_miou = evaluate_onnx(candidate, cfg)
        rounds.append({"kept_float": len(excluded), "added": newly, "miou": int8_miou,
                       "drop": (fp32_miou - int8_miou) * 100})
        _say(f"kept {len(excluded)} layers in float: INT8 mIoU {int8_miou:.4f} on {_budget_split(cfg)}, "
            f"drop {rounds[-1]['drop']:.2f} points")
    met = rounds[-1]["drop"] <= cfg.max_miou_drop
    if not met:
        raise QuantizeError(f"INT8 mIoU drop {rounds[-1]['drop']:.2f} points still exceeds --max-miou-drop "
                            f"{cfg.max_miou_drop} with {len(excluded)} layers in float; raise the budget, try "
                            f"--method entropy/percentile, or deploy FP16")
    return {"fp32_miou": fp32_miou, "int8_miou": int8_miou, "drop_points": rounds[-1]["drop"],
            "budget_points": cfg.max_miou_drop, "eval": f"{cfg.eval_dataset}/{cfg.eval_split}",
            "rounds": rounds, "kept_float": list(excluded), "met": met}


def _say(line: str) -> None:
    """A result line, from one process: under torchrun every rank runs the budget loop and reaches the same
    numbers, so only rank 0 says them."""
    if is_main_process():
        log.info(line)


def _budget_split(cfg: QuantizeConfig) -> str:
    """Where the budget's mIoU was measured, as its result lines name it: "camvid/val (first 20 images)"."""
    return f"{cfg.eval_dataset}/{cfg.eval_split}" + (f" (first {cfg.eval_limit} images)" if cfg.eval_limit else "")


__all__ = ["QuantizeConfig", "convert_fp16", "quantize_int8", "replace", "np"]
