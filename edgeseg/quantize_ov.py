"""Stage: INT8 for OpenVINO, quantized by NNCF (used as a library) on the same calibration set as the ONNX
Runtime INT8 model, saved as an OpenVINO IR (model.int8.ov.xml + .bin) carrying edgeseg's preprocessing metadata.

Why NNCF and not our Q/DQ graph: OpenVINO runs the ONNX Runtime-profile graph (uint8 activations, every op
quantized, Q/DQ around LayerNorm/Softmax/Reshape) slower than its bf16 float model, because every Q/DQ pair
it cannot fuse becomes a real conversion. NNCF places FakeQuantize only where OpenVINO's CPU plugin has int8
kernels and fuses the rest, which is the placement OpenVINO runs fastest (benchmarks/cpu_openvino.py measures
both side by side). Calibration images, the accuracy budget and what is recorded stay edgeseg's.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from edgeseg.bundle_layout import artifact_bytes
from edgeseg.calibration import calibration_batches, load_calibration_set
from edgeseg.errors import UsageError
from edgeseg.export import onnx_preprocessing
from edgeseg.lazy import lazy_import
from edgeseg.manifest import Artifact, input_record, sha256_file, stage_manifest, write_json

log = logging.getLogger(__name__)

PRESETS = ("performance", "mixed")
MODEL_TYPES = ("default", "transformer")


@dataclass(frozen=True)
class NncfConfig:
    preset: str = "performance"  # performance: symmetric int8 activations (fastest); mixed: asymmetric
    # default: NNCF's general scheme. transformer: its transformer scheme (SmoothQuant, attention-internal ops left
    # in float) measured slower on SegFormer-B0 under OpenVINO at no accuracy gain, so it is opt-in.
    model_type: str = "default"
    fast_bias_correction: bool = True
    ignored_nodes: tuple[str, ...] = ()  # node names kept in float

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise UsageError(f"unknown NNCF preset {self.preset!r}; choose {', '.join(PRESETS)}")
        if self.model_type not in MODEL_TYPES:
            raise UsageError(f"unknown NNCF model type {self.model_type!r}; choose {', '.join(MODEL_TYPES)}")


def quantize_nncf(fp32_path: str | Path, calibration_path: str | Path, out_path: str | Path,
                  cfg: NncfConfig = NncfConfig(), data_root: str | None = None) -> Artifact:
    """FP32 ONNX + calibration manifest -> NNCF INT8 OpenVINO IR (out_path .xml, its .bin beside it). The result
    line goes to this module's logger; nothing is written to stdout (see _nncf_output_to_stderr)."""
    ov = lazy_import("openvino", extra="openvino")
    nncf = lazy_import("nncf", extra="openvino")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if out_path.suffix != ".xml":
        raise UsageError(f"{out_path}: an OpenVINO IR is written as .xml (+ .bin)")
    if not fp32_path.is_file():
        raise UsageError(f"{fp32_path} does not exist")
    preprocessing = onnx_preprocessing(fp32_path)
    calibration, paths = load_calibration_set(calibration_path, data_root)
    if not paths:
        raise UsageError(f"{calibration_path} lists no images")
    model_type = cfg.model_type
    started = time.monotonic()
    model = ov.Core().read_model(str(fp32_path))
    options = {"preset": nncf.QuantizationPreset.PERFORMANCE if cfg.preset == "performance"
               else nncf.QuantizationPreset.MIXED,
               "subset_size": len(paths), "fast_bias_correction": cfg.fast_bias_correction}
    if model_type == "transformer":
        options["model_type"] = nncf.ModelType.TRANSFORMER
    if cfg.ignored_nodes:
        options["ignored_scope"] = nncf.IgnoredScope(names=list(cfg.ignored_nodes))
    images = list(calibration_batches(paths, preprocessing))
    with _nncf_output_to_stderr():
        quantized = nncf.quantize(model, nncf.Dataset(images), **options)
    quantized.set_rt_info("int8", ["framework", "edgeseg.precision"])
    _save_ir_atomically(ov, quantized, out_path)
    settings = {**asdict(cfg), "model_type": model_type, "ignored_nodes": list(cfg.ignored_nodes),
                "quantizer": "nncf.quantize (OpenVINO backend)", "format": "OpenVINO IR"}
    manifest = stage_manifest("quantize",
                              inputs={"onnx": input_record(fp32_path, out_path.parent),
                                      "calibration": input_record(calibration_path, out_path.parent)},
                              settings=settings, libraries=("openvino", "nncf"))
    manifest.update({"precision": "int8", "calibration": {"count": calibration["count"],
                                                          "strategy": calibration["strategy"]},
                     "seconds": round(time.monotonic() - started, 1),
                     "artifact": {"path": out_path.name, "sha256": sha256_file(out_path),
                                  "bytes": artifact_bytes(out_path)}})
    write_json(out_path.with_name(out_path.name + ".json"), manifest)
    log.info(f"NNCF INT8 ({cfg.preset} preset, {model_type} scheme, {len(paths)} calibration images): "
             f"{out_path.name} in {manifest['seconds']:.0f} s")
    return Artifact(out_path, manifest)


class _ToOurLogger(logging.Handler):
    """NNCF's log records, re-logged by this module: its warnings as warnings, its information notes (which layer
    got which quantizer) as debug lines, shown under -v."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelno if record.levelno >= logging.WARNING else logging.DEBUG
        log.log(level, "nncf: %s", record.getMessage())


@contextmanager
def _nncf_output_to_stderr() -> Iterator[None]:
    """NNCF writes to stdout in two ways, and stdout is for results: its "nncf" logger has its own handler on
    sys.stdout, and its progress bars (rich, drawn without a console of their own) go to rich's global console,
    which is stdout. While NNCF runs, its records go through this module's logger instead (so -q / -v and the
    stderr handler apply) and rich's global console draws on stderr, only where edgeseg's own bars would: on a
    terminal, when information lines are shown. Both are put back after, whatever happens."""
    import rich

    nncf_logger = logging.getLogger("nncf")
    handlers, propagate = nncf_logger.handlers[:], nncf_logger.propagate
    console = rich.get_console()
    stderr, quiet = console.stderr, console.quiet
    nncf_logger.handlers, nncf_logger.propagate = [_ToOurLogger()], False
    console.stderr = True
    console.quiet = not (log.isEnabledFor(logging.INFO) and sys.stderr.isatty())
    try:
        yield
    finally:
        nncf_logger.handlers, nncf_logger.propagate = handlers, propagate
        console.stderr, console.quiet = stderr, quiet


def _save_ir_atomically(ov: ModuleType, model: Any, out_path: Path) -> None:  # model: an openvino.Model
    """An IR is two files: write both in a scratch folder beside the target, then move the .bin before the .xml,
    so an interrupted save never leaves an .xml whose weights are missing or stale."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_path.stem}.", dir=out_path.parent))
    try:
        ov.save_model(model, str(scratch / out_path.name), compress_to_fp16=False)
        os.replace(scratch / out_path.with_suffix(".bin").name, out_path.with_suffix(".bin"))
        os.replace(scratch / out_path.name, out_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
