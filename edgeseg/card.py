"""Model cards: what edgeseg cannot read from a foreign model, in a small TOML file.

A card maps onto the Preprocessing contract (edgeseg/zoo/contract.py) plus the output kind and name, and the first
stage that meets a foreign ONNX model writes it into the graph's metadata (the same keys `edgeseg export` writes),
so later stages, bundles, engine sidecars, bench and demo need nothing more. No torch import.

Card fields (all top level):
  name           model name for manifests and bundle folders (default: the ONNX file's stem)
  classes        class names, one per output channel (required)
  colours        [[r, g, b], ...] one per class (default: a generated palette)
  ignore_index   label value that means "void" in masks (default 255)
  mean, std      three values each, in the range the pixels have after dividing by `scale`
  scale          pixels are divided by this before mean/std: 255 (values 0-1, the default) or 1 (values 0-255)
  channel_order  RGB or BGR, the order the model expects
  input_size     [height, width] the model is fed
  fit            how a frame of another shape is brought to input_size: resize, letterbox or crop
  output         logits (NxKxHxW) or labels (NxHxW, argmax already in the graph)
  output_name    which graph output, when the graph has several
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.errors import UsageError
from edgeseg.zoo.contract import FITS, IMAGENET_MEAN, IMAGENET_STD, Preprocessing

if TYPE_CHECKING:
    import onnx

    from edgeseg.data.palettes import LabelSet

OUTPUTS = ("logits", "labels")
CHANNEL_ORDERS = ("RGB", "BGR")
METADATA_CARD = "edgeseg.card"
METADATA_OUTPUT_NAME = "edgeseg.output_name"


@dataclass(frozen=True)
class ModelCard:
    classes: tuple[str, ...]
    input_size: tuple[int, int]
    name: str | None = None
    colours: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int = 255
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale: float = 255.0
    channel_order: str = "RGB"
    fit: str = "resize"
    output: str = "logits"
    output_name: str | None = None
    origin: str = dataclasses.field(default="the model card", compare=False)  # where it was read, for messages

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        where = self.origin
        if not self.classes:
            raise UsageError(f"{where}: 'classes' is empty; list one name per output channel")
        if len(set(self.classes)) != len(self.classes):
            raise UsageError(f"{where}: 'classes' names a class twice")
        if self.colours and len(self.colours) != len(self.classes):
            raise UsageError(f"{where}: 'colours' has {len(self.colours)} entries for {len(self.classes)} classes")
        if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.colours):
            raise UsageError(f"{where}: every colour must be [r, g, b] with values 0-255")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) != 3:
                raise UsageError(f"{where}: '{key}' has {len(values)} values; a 3-channel image needs 3")
        if any(v <= 0 for v in self.std):
            raise UsageError(f"{where}: every 'std' value must be positive")
        if self.scale <= 0:
            raise UsageError(f"{where}: 'scale' must be positive (255: pixels 0-1, 1: pixels 0-255)")
        if self.channel_order not in CHANNEL_ORDERS:
            raise UsageError(f"{where}: 'channel_order' is {self.channel_order!r}; choose RGB or BGR")
        if self.fit not in FITS:
            raise UsageError(f"{where}: 'fit' is {self.fit!r}; choose {', '.join(FITS)}")
        if self.output not in OUTPUTS:
            raise UsageError(f"{where}: 'output' is {self.output!r}; choose logits or labels")
        if len(self.input_size) != 2 or min(self.input_size) < 8:
            raise UsageError(f"{where}: 'input_size' must be [height, width], both at least 8")
        if not 0 <= self.ignore_index <= 255:
            raise UsageError(f"{where}: 'ignore_index' must be 0-255")
        if self.ignore_index < len(self.classes) and self.ignore_index != 255:
            raise UsageError(f"{where}: 'ignore_index' {self.ignore_index} is also the id of class "
                             f"{self.classes[self.ignore_index]!r}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def preprocessing(self) -> Preprocessing:
        """The contract: Preprocessing normalises (x/255 - m) / s, so mean/std given for x/scale are rescaled."""
        from edgeseg.data.palettes import generic_palette

        factor = self.scale / 255.0
        return Preprocessing(input_size=tuple(self.input_size), mean=tuple(m * factor for m in self.mean),
                             std=tuple(s * factor for s in self.std), channel_order=self.channel_order,
                             classes=tuple(self.classes),
                             palette=tuple(self.colours) or generic_palette(len(self.classes)),
                             ignore_index=self.ignore_index, fit=self.fit)

    def to_dict(self) -> dict:
        order = ("name", "classes", "colours", "ignore_index", "scale", "mean", "std", "channel_order", "input_size",
                 "fit", "output", "output_name")
        values = dataclasses.asdict(self)
        return {k: values[k] for k in order if values[k] is not None}

    def label_set(self) -> LabelSet:
        from edgeseg.data.palettes import LabelSet

        pre = self.preprocessing()
        return LabelSet(self.name or "card", pre.classes, pre.palette, self.ignore_index)


def card_from_dict(data: dict, where: str = "model card") -> ModelCard:
    known = {f.name for f in dataclasses.fields(ModelCard)} - {"origin"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r}; known fields: {', '.join(sorted(known))}")
    for required in ("classes", "input_size"):
        if required not in data:
            raise UsageError(f"{where}: '{required}' is missing")
    values = dict(data)
    try:
        for key in ("classes", "mean", "std", "input_size"):
            if key in values:
                if not isinstance(values[key], (list, tuple)):
                    raise UsageError(f"{where}: '{key}' must be a list")
                values[key] = tuple(values[key])
        values["classes"] = tuple(str(c) for c in values["classes"])
        values["mean"] = tuple(float(v) for v in values.get("mean", IMAGENET_MEAN))
        values["std"] = tuple(float(v) for v in values.get("std", IMAGENET_STD))
        values["input_size"] = tuple(int(v) for v in values["input_size"])
        if "colours" in values:
            values["colours"] = tuple(tuple(int(v) for v in colour) for colour in values["colours"])
        if "scale" in values:
            values["scale"] = float(values["scale"])
        if "ignore_index" in values:
            values["ignore_index"] = int(values["ignore_index"])
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: a field has the wrong type ({exc})") from None
    if "channel_order" in values:
        values["channel_order"] = str(values["channel_order"]).upper()
    return ModelCard(**values, origin=where)  # validated on construction, errors naming `where`


def load_card(path: str | Path) -> ModelCard:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model card {path} does not exist; 'edgeseg card init MODEL.onnx' writes one")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"model card {path} is not valid TOML: {exc}") from None
    return card_from_dict(data, where=f"model card {path}")


# ---------------------------------------------------------------------------------------------- the ONNX side


@dataclass(frozen=True)
class GraphIO:
    """What a graph says about itself: its image input and its outputs (shapes with None for dynamic axes)."""

    input_name: str
    input_shape: tuple
    input_type: str
    outputs: tuple[tuple[str, tuple, str], ...]


def graph_io(path: str | Path) -> GraphIO:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends from protobuf
        raise UsageError(f"{path} is not a valid ONNX file ({type(exc).__name__})") from None
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise UsageError(f"{path} has {len(inputs)} inputs ({', '.join(v.name for v in inputs)}); edgeseg runs "
                         f"models with one image input")

    def describe(value: onnx.ValueInfoProto) -> tuple[str, tuple, str]:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        return value.name, shape, onnx.TensorProto.DataType.Name(tensor.elem_type).lower()

    name, shape, dtype = describe(inputs[0])
    return GraphIO(name, shape, dtype, tuple(describe(v) for v in model.graph.output))


def check_input(io: GraphIO, path: str | Path) -> None:
    """One line when the input is not an NCHW float image."""
    shape_text = "x".join("?" if d is None else str(d) for d in io.input_shape)
    if io.input_type not in ("float", "float16"):
        raise UsageError(f"{path}: input {io.input_name!r} is {io.input_type} {shape_text}; edgeseg feeds a "
                         f"float NCHW image (1x3xHxW)")
    if len(io.input_shape) != 4 or io.input_shape[1] not in (3, None):
        hint = " (it looks NHWC; export the model channels-first)" if (len(io.input_shape) == 4
                                                                       and io.input_shape[3] == 3) else ""
        raise UsageError(f"{path}: input {io.input_name!r} has shape {shape_text}; edgeseg feeds a float NCHW "
                         f"image (1x3xHxW){hint}")


def pick_output(io: GraphIO, output_name: str | None, path: str | Path) -> tuple[str, tuple, str]:
    if output_name:
        for output in io.outputs:
            if output[0] == output_name:
                return output
        raise UsageError(f"{path} has no output {output_name!r}; its outputs are "
                         f"{', '.join(o[0] for o in io.outputs)}")
    if len(io.outputs) > 1:
        raise UsageError(f"{path} has {len(io.outputs)} outputs ({', '.join(o[0] for o in io.outputs)}); say "
                         f"which one is the segmentation with output_name in the card")
    return io.outputs[0]


def check_card(card: ModelCard, path: str | Path) -> dict:
    """Check a card against the graph: NCHW float input, input size, the output's class count (by running the
    graph once on a zero image at the card's size, so dynamic axes are checked too). Returns what was seen."""
    import numpy as np

    from edgeseg.runners.ort import ort_session

    where = card.origin
    io = graph_io(path)
    check_input(io, path)
    static = io.input_shape[2:]
    if all(d is not None for d in static) and tuple(static) != tuple(card.input_size):
        raise UsageError(f"{where} says input_size {card.input_size[0]}x{card.input_size[1]} but {path} takes "
                         f"{static[0]}x{static[1]} only")
    output_name = pick_output(io, card.output_name, path)[0]
    session, _ = ort_session(Path(path), device="cpu", threads=1)
    batch = io.input_shape[0] if isinstance(io.input_shape[0], int) and io.input_shape[0] > 0 else 1
    dtype = np.float16 if io.input_type == "float16" else np.float32
    try:
        result = session.run([output_name], {io.input_name: np.zeros((batch, 3, *card.input_size), dtype)})[0]
    except Exception as exc:  # ORT's own types: shape mismatch inside the graph and the like
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path} does not run at {card.input_size[0]}x{card.input_size[1]}: {first}") from None
    shape = tuple(result.shape)
    if card.output == "logits":
        if len(shape) != 4:
            raise UsageError(f"{where} says output = \"logits\" (NxKxHxW) but {path}'s output {output_name!r} "
                             f"has shape {'x'.join(map(str, shape))}; for a label map set output = \"labels\"")
        if shape[1] != card.num_classes:
            raise UsageError(f"{where} lists {card.num_classes} classes but {path} outputs {shape[1]} channels "
                             f"({output_name!r} is {'x'.join(map(str, shape))})")
    elif len(shape) != 3:
        raise UsageError(f"{where} says output = \"labels\" (NxHxW) but {path}'s output {output_name!r} has shape "
                         f"{'x'.join(map(str, shape))}")
    return {"input": io.input_name, "output": output_name, "output_shape": list(shape)}


def card_metadata(card: ModelCard, output_name: str, model_name: str) -> dict[str, str]:
    """The ONNX metadata a carded graph carries: the same keys 'edgeseg export' writes, plus the card itself."""
    from edgeseg.runners.ort import METADATA_OUTPUT, METADATA_PREPROCESSING

    return {METADATA_PREPROCESSING: card.preprocessing().to_json(), METADATA_OUTPUT: card.output,
            METADATA_OUTPUT_NAME: output_name, METADATA_CARD: json.dumps(card.to_dict()),
            "edgeseg.model": model_name, "edgeseg.precision": "fp32"}


def write_carded_onnx(source: str | Path, card: ModelCard, out_path: str | Path, model_name: str | None = None
                      ) -> dict:
    """Check `card` against `source` and write a copy carrying it in the metadata (atomically). Returns the check."""
    import onnx

    from edgeseg.export import _set_metadata
    from edgeseg.manifest import atomic_path

    seen = check_card(card, source)
    graph = onnx.load(str(source))
    if len(graph.graph.output) > 1:
        # Keep only the segmentation output, so every later stage and runtime (TensorRT included) sees one output.
        kept = [output for output in graph.graph.output if output.name == seen["output"]]
        del graph.graph.output[:]
        graph.graph.output.extend(kept)
        seen["dropped_outputs"] = True
    _set_metadata(graph, card_metadata(card, seen["output"], model_name or card.name or Path(source).stem))
    with atomic_path(Path(out_path)) as tmp:
        onnx.save(graph, str(tmp))
    return seen


def has_contract(path: str | Path) -> bool:
    from edgeseg.export import read_onnx_metadata
    from edgeseg.runners.ort import METADATA_PREPROCESSING

    return METADATA_PREPROCESSING in read_onnx_metadata(path)


# ---------------------------------------------------------------------------------------------- card init / show


def init_card_text(path: str | Path, size: tuple[int, int] | None = None) -> str:
    """A commented card template filled in from the graph: input size, output names, the class count."""
    import numpy as np

    from edgeseg.runners.ort import ort_session

    path = Path(path)
    io = graph_io(path)
    check_input(io, path)
    static = io.input_shape[2:]
    if size is None:
        size = tuple(static) if all(d is not None for d in static) else (512, 512)
        size_note = ("from the graph (static)" if all(d is not None for d in static)
                     else "the graph's height/width are dynamic: EDIT to the size you deploy at")
    else:
        size_note = "from --size"
    output_name, output_shape, _ = pick_output(io, None, path) if len(io.outputs) == 1 else io.outputs[0]
    session, _ = ort_session(path, device="cpu", threads=1)
    dtype = np.float16 if io.input_type == "float16" else np.float32
    batch = io.input_shape[0] if isinstance(io.input_shape[0], int) and io.input_shape[0] > 0 else 1
    shape = session.run([output_name], {io.input_name: np.zeros((batch, 3, *size), dtype)})[0].shape
    kind = "logits" if len(shape) == 4 else "labels"
    count = shape[1] if kind == "logits" else None
    class_line = (f"classes = [{', '.join(json.dumps(f'class_{i}') for i in range(count))}]" if count
                  else 'classes = ["class_0", "class_1"]  # EDIT: a label map does not say how many classes')
    outputs = ", ".join(f"{name} {'x'.join('?' if d is None else str(d) for d in dims)}"
                        for name, dims, _ in io.outputs)
    lines = [
        f"# edgeseg model card for {path.name}",
        f"# graph: input {io.input_name} {'x'.join('?' if d is None else str(d) for d in io.input_shape)} "
        f"{io.input_type}; outputs: {outputs}",
        "# Check every value marked EDIT; 'edgeseg card show MODEL.onnx --card THIS' prints the result.",
        "",
        f"name = {json.dumps(path.stem)}",
        "",
        f"# One name per output channel ({count if count else 'unknown'} in this graph). EDIT: your class names.",
        class_line,
        "# colours = [[128, 64, 128], ...]   # optional, RGB, one per class (default: a generated palette)",
        "ignore_index = 255                   # the void value in your masks",
        "",
        "# Normalisation: input = (pixel / scale - mean) / std. EDIT to what the model was trained with.",
        "scale = 255.0                        # 255: mean/std for pixels in 0-1; 1: mean/std for pixels in 0-255",
        f"mean = [{', '.join(str(m) for m in IMAGENET_MEAN)}]",
        f"std = [{', '.join(str(s) for s in IMAGENET_STD)}]",
        'channel_order = "RGB"                # or "BGR"',
        "",
        f"input_size = [{size[0]}, {size[1]}]             # height, width: {size_note}",
        'fit = "resize"                       # resize, letterbox or crop: how frames of another shape are fitted',
        "",
        f'output = "{kind}"                    # logits (NxKxHxW) or labels (NxHxW)',
        f'output_name = "{output_name}"' + ("" if len(io.outputs) == 1 else
                                            "   # EDIT: the graph has several outputs; pick the segmentation"),
    ]
    return "\n".join(lines) + "\n"


def card_from_preprocessing(preprocessing: Preprocessing, output: str = "logits", name: str | None = None,
                            output_name: str | None = None) -> ModelCard:
    """The card of a model edgeseg already has a contract for (zoo entry, exported ONNX, bundle, engine)."""
    return card_from_dict({k: v for k, v in {
        "name": name, "classes": list(preprocessing.classes), "colours": [list(c) for c in preprocessing.palette],
        "ignore_index": preprocessing.ignore_index, "mean": list(preprocessing.mean), "std": list(preprocessing.std),
        "scale": 255.0, "channel_order": preprocessing.channel_order, "input_size": list(preprocessing.input_size),
        "fit": getattr(preprocessing, "fit", "resize"), "output": output, "output_name": output_name}.items()
        if v is not None and v != []})


def card_toml(card: ModelCard) -> str:
    """A card as TOML (the format load_card reads)."""
    lines = []
    for key, value in card.to_dict().items():
        if key == "colours" and value:
            lines.append("colours = [" + ", ".join(f"[{r}, {g}, {b}]" for r, g, b in value) + "]")
        elif isinstance(value, tuple):
            lines.append(f"{key} = {json.dumps(list(value))}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"
