"""The files a benchmark row runs: resolved weights, the ONNX precisions and TensorRT engines, made with the
pipeline's own stage functions and cached by what went into them.

Cache layout: <cache>/<model>-<H>x<W>-<key>/ holds model.onnx, model.fp16.onnx, calibration.json and
model.int8.onnx (CPU profile), like a build bundle; trt-<gpu>-<tensorrt>/ beside them holds the symmetric INT8
graph and the engines of one GPU and TensorRT version. `key` is a hash of the weights' sha256, every setting
that changes the files and the code that makes them (edgeseg's own source and the versions of the libraries that
export and quantize, `code_fingerprint`), so a changed checkpoint, calibration setting, export rewrite or model
wrapper never reuses a stale file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.bench.suite import ModelSpec, Suite
from edgeseg.bundle_layout import CALIBRATION_MANIFEST, ONNX_FILES, OV_INT8_FILE, engine_name, onnx_name
from edgeseg.errors import UsageError
from edgeseg.logs import nested
from edgeseg.manifest import sha256_file, write_json

if TYPE_CHECKING:
    from edgeseg.cpu_variants import CpuVariant

RANDOM_SEED = 0

log = logging.getLogger(__name__)


DETAIL = " " * 4  # a stage's own lines (quantization, NNCF, the engine build) under the cache's line for it


@dataclass(frozen=True)
class ResolvedWeights:
    spec: str  # what every process passes to load_model: a file path, or a hub id / named weight
    sha256: str | None  # of the weights file, when there is one
    source: str  # what the user asked for, for the results


def default_cache_dir() -> Path:
    from edgeseg.data.datasets import default_cache_dir as edgeseg_cache

    return edgeseg_cache() / "bench"


def resolve_weights(model: ModelSpec, cache_dir: Path) -> ResolvedWeights:
    """Pin a zoo model's weights to one file, so the torch rows and the exported ONNX run the same weights.

    'random' is drawn once with a fixed seed and saved as a checkpoint in the cache: an unseeded draw per process
    would make the torch reference and the ONNX rows different models."""
    from edgeseg.zoo.weights import bundled_weights

    name, spec = model.zoo_name, model.weights
    if spec in (None, "", "default"):
        check_default_weights(model)
        bundled = bundled_weights(name)
        return ResolvedWeights(str(bundled), sha256_file(bundled), "bundled")
    if spec == "random":
        path = cache_dir / "weights" / f"{name}-random-seed{RANDOM_SEED}.safetensors"
        if not path.is_file():
            _save_random_weights(name, path)
        return ResolvedWeights(str(path), sha256_file(path), "random")
    path = Path(spec).expanduser()
    if path.is_file():
        return ResolvedWeights(str(path), sha256_file(path), spec)
    if path.is_dir():
        weight_file = next((p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.is_file()), None)
        return ResolvedWeights(str(path), sha256_file(weight_file) if weight_file else None, spec)
    return ResolvedWeights(spec, None, spec)  # a hub id or named weight: downloaded and cached by its library


def check_default_weights(model: ModelSpec) -> None:
    """A zoo model without a weights spec needs its bundled checkpoint (cheap: only looks for the file)."""
    from edgeseg.zoo.weights import BUNDLED_DIR, bundled_weights

    if model.zoo_name and model.weights in (None, "", "default") and bundled_weights(model.zoo_name) is None:
        raise UsageError(f"model {model.zoo_name} has no bundled CamVid checkpoint yet (expected "
                         f"{BUNDLED_DIR}/{model.zoo_name}.safetensors); give weights = \"...\" in the suite or "
                         f"--weights")


def _save_random_weights(name: str, path: Path) -> None:
    import torch

    from edgeseg.checkpoint import save_checkpoint
    from edgeseg.zoo.registry import get_entry
    from edgeseg.zoo.weights import load_model

    torch.manual_seed(RANDOM_SEED)
    loaded = load_model(name, "random")
    save_checkpoint(loaded.model, path, model_name=name, preprocessing=loaded.preprocessing,
                    label_set=get_entry(name).label_set.name, recipe={"init": "random", "seed": RANDOM_SEED})


PACKAGE_DIR = Path(__file__).resolve().parent.parent
# Libraries whose version changes what an export, a quantization or an NNCF IR contains.
ARTIFACT_LIBRARIES = ("torch", "transformers", "segmentation-models-pytorch", "torchvision", "onnx", "onnxruntime",
                      "onnxslim", "openvino", "nncf")


def code_fingerprint(package_dir: Path | None = None) -> str:
    """A hash of every .py file of the edgeseg package and of the versions of ARTIFACT_LIBRARIES. Coarse on purpose:
    any source change re-makes the cached files (minutes), where a list of "the modules that matter" would go
    stale the first time a new module took part in an export (the DeepLabV3+ padding lives in zoo/smp.py)."""
    return _fingerprint(package_dir or PACKAGE_DIR)


@lru_cache(maxsize=None)
def _fingerprint(package_dir: Path) -> str:
    from importlib import metadata

    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for library in ARTIFACT_LIBRARIES:
        try:
            version = metadata.version(library)
        except metadata.PackageNotFoundError:
            version = "-"
        digest.update(f"{library}={version}\0".encode())
    return digest.hexdigest()[:16]


def cache_key(model: ModelSpec, weights: ResolvedWeights, size: tuple[int, int], suite: Suite) -> str:
    settings = {"weights": weights.sha256 or weights.spec, "size": list(size), "dynamic_batch": suite.dynamic_batch,
                "dataset": suite.dataset, "calib": [suite.calib_count, suite.calib_strategy, suite.calib_split],
                "quant": [suite.quant_method, suite.quant_max_miou_drop], "code": code_fingerprint()}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"{model.zoo_name}-{size[0]}x{size[1]}-{digest}"


class ArtifactCache:
    """Makes (or reuses) the ONNX precisions of one zoo model at one size, stage by stage, on first demand."""

    def __init__(self, cache_dir: Path, suite: Suite) -> None:
        self.cache_dir, self.suite = Path(cache_dir), suite

    def onnx_for(self, model: ModelSpec, weights: ResolvedWeights, size: tuple[int, int], precision: str,
                 profile: str = "cpu") -> Path:
        folder = self.cache_dir / cache_key(model, weights, size, self.suite)
        fp32 = folder / ONNX_FILES["fp32"]
        if not fp32.is_file():
            self._export(model, weights, size, folder)
        if precision == "fp32":
            return fp32
        if precision == "fp16":
            out = folder / ONNX_FILES["fp16"]
            if not out.is_file():
                from edgeseg.quantize import convert_fp16

                log.info(f"  fp16 graph of {model.label} at {size[0]}x{size[1]}")
                convert_fp16(fp32, out)
            return out
        calibration = folder / CALIBRATION_MANIFEST
        if not calibration.is_file():
            self._calibrate(fp32, calibration)
        out = folder / onnx_name("int8", None if profile == "cpu" else profile)  # the cpu profile: as in a bundle
        if not out.is_file():
            from edgeseg.quantize import QuantizeConfig, quantize_int8

            log.info(f"  int8 graph of {model.label} at {size[0]}x{size[1]} ({profile} profile, "
                     f"{self.suite.calib_count} {self.suite.calib_strategy} calibration images)")
            settings = QuantizeConfig(profile=profile, method=self.suite.quant_method,
                                      max_miou_drop=self.suite.quant_max_miou_drop, eval_dataset=self.suite.dataset,
                                      data_root=self.suite.data_root, threads=self.suite.threads)
            with nested(DETAIL):
                quantize_int8(fp32, calibration, settings, out)
        return out

    def ov_int8_for(self, model: ModelSpec, weights: ResolvedWeights, size: tuple[int, int]) -> Path:
        """The NNCF INT8 OpenVINO IR, quantized on the same calibration set as the ONNX Runtime INT8 model."""
        fp32 = self.onnx_for(model, weights, size, "fp32")
        calibration = fp32.parent / CALIBRATION_MANIFEST
        if not calibration.is_file():
            self._calibrate(fp32, calibration)
        out = fp32.parent / OV_INT8_FILE
        if not out.is_file():
            from edgeseg.quantize_ov import quantize_nncf

            log.info(f"  NNCF int8 OpenVINO IR of {model.label} at {size[0]}x{size[1]}")
            with nested(DETAIL):
                quantize_nncf(fp32, calibration, out, data_root=self.suite.data_root)
        return out

    def _export(self, model: ModelSpec, weights: ResolvedWeights, size: tuple[int, int], folder: Path) -> None:
        from edgeseg.export import ExportConfig, export_model
        from edgeseg.zoo.weights import load_model

        log.info(f"  export {model.label} at {size[0]}x{size[1]} to ONNX (cached in {folder})")
        loaded = load_model(model.zoo_name, weights.spec)
        config = ExportConfig(size=size, dataset=self.suite.dataset, data_root=self.suite.data_root,
                              dynamic=("batch",) if self.suite.dynamic_batch else ())
        export_model(loaded, model.zoo_name, config, folder / ONNX_FILES["fp32"])
        write_json(folder / "cache-key.json", {"model": model.zoo_name, "weights": weights.source,
                                               "weights_sha256": weights.sha256, "size": list(size),
                                               "dynamic_batch": self.suite.dynamic_batch, "code": code_fingerprint()})

    def _calibrate(self, fp32: Path, out: Path) -> None:
        from edgeseg.calibration import CalibConfig, make_calibration_set
        from edgeseg.export import onnx_preprocessing

        make_calibration_set(onnx_preprocessing(fp32),
                             CalibConfig(dataset=self.suite.dataset, split=self.suite.calib_split,
                                         data_root=self.suite.data_root, count=self.suite.calib_count,
                                         strategy=self.suite.calib_strategy), out)

    def engine_for(self, onnx_files: dict[str, Path], precision: str) -> Path:
        """A TensorRT engine for this host's GPU, built from `onnx_files` (the symmetric INT8 graph for int8)."""
        from edgeseg.engine.bundle import finish_for_target
        from edgeseg.engine.host import probe_host
        from edgeseg.target_registry import load_target

        host = probe_host()
        folder = onnx_files["fp32"].parent / f"trt-{_slug(host.device.name)}-{host.tensorrt}"
        engine = folder / engine_name(precision)
        if engine.is_file():
            return engine
        folder.mkdir(parents=True, exist_ok=True)
        for name, source in onnx_files.items():
            _link_or_copy(source, folder / ONNX_FILES[name])
        calibration = onnx_files["fp32"].parent / CALIBRATION_MANIFEST
        if calibration.is_file():
            _link_or_copy(calibration, folder / CALIBRATION_MANIFEST)
        log.info(f"  TensorRT {precision} engine for {host.device.name} in {folder}")
        with nested(DETAIL):
            result = finish_for_target(folder, load_target("cuda"), precision)
        if not result.engine:
            raise UsageError(f"no engine was built: {result.reason}")
        return folder / result.engine


def backend_unavailable(backend: str) -> str | None:
    """Why this machine cannot run `backend` at all, or None. Checked once, before any artifact is made for it."""
    if backend == "ort-cuda":
        try:
            import onnxruntime
        except ImportError:
            return "ort-cuda needs onnxruntime-gpu (pip install onnxruntime-gpu)"
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return ("ort-cuda needs onnxruntime-gpu and a CUDA GPU; this onnxruntime offers only "
                    + ", ".join(onnxruntime.get_available_providers()))
    if backend == "trt":
        from edgeseg.engine.host import probe_host

        host = probe_host()
        if host.tensorrt is None:
            return f"trt needs TensorRT: {host.tensorrt_problem} (pip install 'edgeseg[trt]', or JetPack)"
        if host.device is None:
            return "trt needs a CUDA GPU; none is visible here"
    if backend == "ov-cpu":
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "ov-cpu needs OpenVINO (pip install 'edgeseg[openvino]')"
    if backend == "torch-cuda":
        try:
            import torch
        except ImportError:
            return "torch-cuda needs torch (pip install 'edgeseg[torch]')"
        if not torch.cuda.is_available():
            return "torch-cuda needs a CUDA GPU and a CUDA build of torch; none is visible here"
    return None


def bundle_file(bundle: Path, precision: str, backend: str) -> Path | None:
    """The file of a build bundle (or a lone .onnx) that a row of `precision` on `backend` runs, or None."""
    if bundle.is_file():
        return bundle
    if backend == "trt":
        candidate = bundle / engine_name(precision)
    elif backend == "ov-cpu":
        default = bundle_default(bundle)
        if default is not None and (default.backend, default.precision) == (backend, precision):
            candidate = bundle / default.file  # the variant the build chose, e.g. our Q/DQ graph on OpenVINO
        else:
            candidate = bundle / (OV_INT8_FILE if precision == "int8" else ONNX_FILES["fp32"])
    else:
        candidate = bundle / ONNX_FILES[precision]
    return candidate if candidate.is_file() else None


def bundle_default(bundle: Path) -> CpuVariant | None:
    """The default CPU variant a bundle's report.json names (edgeseg.cpu_variants), or None."""
    from edgeseg.cpu_variants import best_variant

    return best_variant(bundle) if bundle.is_dir() else None


def onnx_precision(path: Path) -> str:
    from edgeseg.export import read_onnx_metadata

    return read_onnx_metadata(path).get("edgeseg.precision", "fp32")


def onnx_param_count(path: Path) -> int | None:
    """Weights counted from the initializers of an FP32 ONNX graph (tensors of more than one element)."""
    import numpy as np
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # a broken file is reported by the row that runs it
        return None
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    return int(sum(np.prod(t.dims) for t in graph.initializer if t.data_type in float_types and np.prod(t.dims) > 1))


def _slug(text: str) -> str:
    from edgeseg.bench.env import slug

    return slug(text)


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
