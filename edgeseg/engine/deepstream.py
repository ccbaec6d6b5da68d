"""A ready DeepStream `nvinfer` config for a GPU-target bundle: semantic segmentation (network-type=2), every field
derived from the model's preprocessing contract, paths relative to the bundle (nvinfer resolves them from the
config file's folder).

Two things DeepStream does differently from edgeseg, and how the config handles them:

- Normalisation. nvinfer computes y = net-scale-factor * (x - offsets[c]) with ONE scale for all channels; the
  model wants y = (x / 255 - mean[c]) / std[c]. The offsets are exact (255 * mean[c]); the per-channel std is
  replaced by the mean of the three, 1 / (255 * mean(std)). Each channel's input is then off by the factor
  std[c] / mean(std) (for ImageNet's std: at most 1.33 %), which is written into the config, the bundle README and
  the build result so nobody mistakes it for edgeseg's exact preprocessing.
- Scores. nvinfer's segmentation parser labels a pixel with the class of the highest score only if that score is
  above both -1 and segmentation-threshold; edgeseg's ONNX outputs logits, which are often below -1 everywhere.
  So the config points at `model.<precision>.deepstream.onnx`: the same graph with a Softmax over the classes
  appended (argmax unchanged; scores become probabilities, which is what segmentation-threshold means), and
  nvinfer builds and caches its own engine from it on the first run.

INT8: nvinfer wants a calibration cache for network-mode=1 and falls back to FP16 without one, so an int8 bundle's
DeepStream config uses the fp16 model, and says so.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from edgeseg import __version__
from edgeseg.bundle_layout import (LABELS_FILE, NVINFER_CONFIG, deepstream_onnx_name,  # noqa: F401 (re-exported)
                                   deepstream_source_onnx, nvinfer_engine_name)
from edgeseg.errors import UsageError
from edgeseg.lazy import lazy_import
from edgeseg.manifest import atomic_path
from edgeseg.zoo.contract import Preprocessing

NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
MODEL_COLOR_FORMAT = {"RGB": 0, "BGR": 1}


@dataclass(frozen=True)
class NvinferScaling:
    net_scale_factor: float
    offsets: tuple[float, float, float]  # in the model's channel order (model-color-format)
    std_used: float
    channel_factors: tuple[float, float, float]  # DeepStream's input / edgeseg's input, per channel

    @property
    def max_relative_error(self) -> float:
        return max(abs(factor - 1.0) for factor in self.channel_factors)


def nvinfer_scaling(preprocessing: Preprocessing) -> NvinferScaling:
    std_used = sum(preprocessing.std) / len(preprocessing.std)
    return NvinferScaling(net_scale_factor=1.0 / (255.0 * std_used),
                          offsets=tuple(255.0 * mean for mean in preprocessing.mean),
                          std_used=std_used,
                          channel_factors=tuple(std / std_used for std in preprocessing.std))


def render_nvinfer_config(preprocessing: Preprocessing, precision: str, model_name: str = "the model") -> str:
    """The [property] section nvinfer reads, for `precision`'s bundle (pure)."""
    if preprocessing.channel_order not in MODEL_COLOR_FORMAT:
        raise UsageError(f"channel order {preprocessing.channel_order!r} has no DeepStream model-color-format")
    if preprocessing.num_classes < 1:
        raise UsageError("the model's contract lists no classes; DeepStream needs num-detected-classes")
    scaling = nvinfer_scaling(preprocessing)
    mode = NETWORK_MODE["fp16" if precision == "int8" else precision]
    onnx_name = deepstream_onnx_name(precision)
    height, width = preprocessing.input_size
    std = ", ".join(f"{value:g}" for value in preprocessing.std)
    factors = ", ".join(f"{factor:.4f}" for factor in scaling.channel_factors)
    lines = [
        f"# DeepStream nvinfer config: {model_name}, semantic segmentation, written by edgeseg {__version__}.",
        "# Paths are relative to this file. nvinfer builds the engine from onnx-file on the first run (minutes) and",
        "# saves it as model-engine-file, which later runs load.",
        "# Preprocessing: nvinfer computes net-scale-factor * (x - offsets[c]) with one scale for every channel;",
        f"# the model was trained on (x/255 - mean[c]) / std[c] with std = ({std}). offsets = 255 * mean (exact);",
        f"# net-scale-factor = 1 / (255 * {scaling.std_used:.6g}), the mean std, so each channel's input is scaled by",
        f"# ({factors}) relative to edgeseg's own preprocessing: at most {scaling.max_relative_error:.2%} off.",
        "# onnx-file is the model with a Softmax appended: nvinfer labels a pixel only where its best score is above",
        "# -1 and segmentation-threshold, so it needs probabilities, not logits.",
    ]
    if precision == "int8":
        lines.append("# The bundle's engine is INT8; nvinfer needs a calibration cache for INT8 (network-mode=1) and "
                     "falls back to FP16 without one, so this config runs the fp16 model.")
    lines += [
        "[property]",
        "gpu-id=0",
        f"net-scale-factor={scaling.net_scale_factor:.10g}",
        "offsets=" + ";".join(f"{offset:.6g}" for offset in scaling.offsets),
        f"model-color-format={MODEL_COLOR_FORMAT[preprocessing.channel_order]}",
        f"onnx-file={onnx_name}",
        f"model-engine-file={nvinfer_engine_name(onnx_name, mode)}",
        f"labelfile-path={LABELS_FILE}",
        f"infer-dims=3;{height};{width}",
        "batch-size=1",
        f"network-mode={mode}",
        "network-type=2",
        f"num-detected-classes={preprocessing.num_classes}",
        "segmentation-threshold=0.0",
        "output-blob-names=probabilities",
        "maintain-aspect-ratio=0",  # edgeseg resizes to the input size without keeping the aspect ratio
        f"scaling-filter={1 if preprocessing.interpolation == 'bilinear' else 0}",
        "gie-unique-id=1",
        "interval=0",
        "",
    ]
    return "\n".join(lines)


def sample_pipeline(preprocessing: Preprocessing, video: str = "video.mp4") -> str:
    """A gst-launch-1.0 line that runs the config on an H.264 MP4 and shows the class map (nvsegvisual)."""
    height, width = preprocessing.input_size
    return (f"gst-launch-1.0 filesrc location={shlex.quote(video)} ! qtdemux ! h264parse ! nvv4l2decoder ! m.sink_0 "
            f"nvstreammux name=m batch-size=1 width=1920 height=1080 ! nvinfer config-file-path={NVINFER_CONFIG} ! "
            f"nvsegvisual width={width} height={height} ! nvvideoconvert ! nveglglessink")


def readme_section(preprocessing: Preprocessing, precision: str) -> list[str]:
    scaling = nvinfer_scaling(preprocessing)
    onnx_name = deepstream_onnx_name(precision)
    return [
        "## DeepStream",
        "",
        f"`{NVINFER_CONFIG}` is a ready `nvinfer` config for semantic segmentation (network-type=2, "
        f"{preprocessing.num_classes} classes in `{LABELS_FILE}`, input 3x{preprocessing.input_size[0]}x"
        f"{preprocessing.input_size[1]}). It runs `{onnx_name}`, the "
        f"{'fp16' if precision == 'int8' else precision} model with a Softmax appended (nvinfer labels only pixels "
        "whose best score is above -1, so it needs probabilities), and nvinfer builds and caches its own engine "
        "from it on the first run" + (" (INT8 would need a DeepStream calibration cache)." if precision == "int8"
                                      else "."),
        "",
        f"Normalisation is approximate: nvinfer has one scale for all channels, so the per-channel std "
        f"({', '.join(f'{s:g}' for s in preprocessing.std)}) is replaced by its mean {scaling.std_used:.6g}; "
        f"channel inputs differ from edgeseg's by at most {scaling.max_relative_error:.2%}. The offsets "
        "(255 x mean) are exact.",
        "",
        "On a Jetson with DeepStream, in this folder:",
        "",
        f"    {sample_pipeline(preprocessing)}",
        "",
    ]


def write_deepstream(bundle: Path, preprocessing: Preprocessing, precision: str, model_name: str) -> dict:
    """Write the nvinfer config, labels and the Softmax ONNX into the bundle; returns what the build records."""
    source = bundle / deepstream_source_onnx(precision)
    if not source.is_file():
        raise UsageError(f"{bundle} has no {source.name} for the DeepStream config")
    onnx_name = deepstream_onnx_name(precision)
    append_softmax(source, bundle / onnx_name)
    with atomic_path(bundle / LABELS_FILE) as tmp:
        tmp.write_text("\n".join(preprocessing.classes) + "\n")
    with atomic_path(bundle / NVINFER_CONFIG) as tmp:
        tmp.write_text(render_nvinfer_config(preprocessing, precision, model_name))
    scaling = nvinfer_scaling(preprocessing)
    return {"config": NVINFER_CONFIG, "onnx": onnx_name, "labels": LABELS_FILE,
            "precision": "fp16" if precision == "int8" else precision,
            "net_scale_factor": scaling.net_scale_factor, "offsets": list(scaling.offsets),
            "normalisation": f"approximate: one scale for all channels (mean std {scaling.std_used:.6g}); "
                             f"at most {scaling.max_relative_error:.2%} off per channel"}


def append_softmax(source: Path, out: Path) -> None:
    """`source` with Softmax(axis=1) over its logits output, as output 'probabilities'; metadata kept."""
    onnx = lazy_import("onnx")
    model = onnx.load(str(source))
    graph = model.graph
    if len(graph.output) != 1:
        raise UsageError(f"{source.name} has {len(graph.output)} outputs; the DeepStream config needs one")
    logits = graph.output[0]
    if logits.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) or \
            len(logits.type.tensor_type.shape.dim) != 4:
        raise UsageError(f"{source.name} outputs {logits.name} without class scores (NxCxHxW float); export without "
                         "--fuse-argmax for DeepStream")
    graph.node.append(onnx.helper.make_node("Softmax", [logits.name], ["probabilities"], axis=1,
                                            name="deepstream_softmax"))
    probabilities = onnx.ValueInfoProto()
    probabilities.CopyFrom(logits)
    probabilities.name = "probabilities"
    del graph.output[:]
    graph.output.append(probabilities)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
