"""Benchmark suites: which models, precisions, backends and input sizes to measure, and how.

A suite is a TOML file (benchmarks/suites/*.toml) or the same settings given as `edgeseg bench` options. It is
read into frozen dataclasses and checked completely before any row runs, so a typo costs one line, not an hour:

    name = "cpu"
    precisions = ["fp32", "int8"]
    optional_precisions = ["fp16"]        # measured only with --with-optional
    backends = ["torch", "ort-cpu"]
    sizes = ["360x480"]
    dataset = "camvid"
    split = "test"

    [[models]]
    name = "segformer-b0"                 # a zoo model (weights: bundled CamVid checkpoint unless `weights`)

    [[models]]
    path = "bundles/segformer-b0-pruned"  # a bundle directory or an .onnx file (e.g. a pruned variant)
    label = "segformer-b0-pruned50"
    reference = "segformer-b0"            # whose FP32 predictions its accuracy is compared with
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable
from typing import Any

from edgeseg.errors import UsageError
from edgeseg.sizes import parse_size
from edgeseg.manifest import read_text_file

PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # bf16: OpenVINO (ov-cpu) rows only
# torch runs on the CPU (the accuracy reference); torch-cuda, ort-cuda and trt need an NVIDIA GPU; ov-cpu is
# OpenVINO on the CPU (the openvino extra).
BACKENDS = ("torch", "torch-cuda", "ort-cpu", "ov-cpu", "ort-cuda", "trt")
REPO_SUITES_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "suites"


@dataclass(frozen=True)
class ModelSpec:
    """One model of a suite: a zoo model (`zoo_name` + `weights`) or a prebuilt bundle / .onnx (`path`)."""

    label: str  # the name rows and plots show
    zoo_name: str | None = None
    weights: str | None = None  # any --weights spec; None: the bundled CamVid checkpoint
    path: str | None = None
    reference: str | None = None  # label of another model of the suite, whose FP32 predictions are the reference

    @property
    def is_artifact(self) -> bool:
        return self.path is not None


@dataclass(frozen=True)
class Suite:
    name: str
    models: tuple[ModelSpec, ...]
    precisions: tuple[str, ...] = ("fp32", "int8")
    backends: tuple[str, ...] = ("torch", "ort-cpu")
    sizes: tuple[tuple[int, int], ...] = ((360, 480),)
    optional_precisions: tuple[str, ...] = ()
    description: str = ""
    dataset: str = "camvid"
    split: str = "test"
    data_root: str | None = None
    eval_limit: int | None = None  # evaluate on the first N images only (None: the whole split)
    threads: int | None = None  # CPU threads for torch and ONNX Runtime (None: their defaults)
    batch: int = 4  # the larger batch throughput is measured at
    dynamic_batch: bool = False  # export ONNX with a dynamic batch axis, so ONNX rows measure batch throughput too
    warmup: int = 10
    min_runs: int = 30
    min_seconds: float = 5.0  # timing of each latency figure runs at least this long
    calib_count: int = 200
    calib_strategy: str = "class-balanced"
    calib_split: str = "train"
    quant_method: str = "minmax"
    # INT8 accuracy budget (mIoU points on the val split), as 'edgeseg build' applies it: the most sensitive
    # layers stay in float until the drop fits. None: plain INT8, every quantizable layer quantized.
    quant_max_miou_drop: float | None = None
    row_timeout_s: float = 3600.0  # a row's subprocess is stopped (and the row reported) after this long

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["sizes"] = [f"{h}x{w}" for h, w in self.sizes]
        return data


# Keys a suite file may hold; anything else is a typo and is named with the closest known key.
_SUITE_KEYS = {f.name for f in dataclasses.fields(Suite)}
_MODEL_KEYS = {"name", "weights", "path", "label", "reference"}




def split_list(values: str | Iterable[str] | None) -> tuple[str, ...]:
    """CLI lists may be repeated options or comma-separated ('fp32,int8'); both give the same tuple."""
    if isinstance(values, str):
        values = [values]
    return tuple(part.strip() for value in values for part in str(value).split(",") if part.strip())


def resolve_suite_path(name_or_path: str) -> Path:
    """A suite file path, or a name under benchmarks/suites (of the working directory, then of the checkout)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.suffix != ".toml" and "/" not in str(name_or_path):
        for folder in (Path("benchmarks") / "suites", REPO_SUITES_DIR):
            candidate = folder / f"{name_or_path}.toml"
            if candidate.is_file():
                return candidate
        known = sorted(p.stem for p in REPO_SUITES_DIR.glob("*.toml")) if REPO_SUITES_DIR.is_dir() else []
        hint = _hint(str(name_or_path), known) or (f"; known suites: {', '.join(known)}" if known else "")
        raise UsageError(f"no suite {name_or_path!r}{hint} (give a .toml path or a name under benchmarks/suites)")
    raise UsageError(f"suite file {path} does not exist")


def load_suite(name_or_path: str) -> Suite:
    path = resolve_suite_path(name_or_path)
    try:
        data = tomllib.loads(read_text_file(path, "suite file"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"suite {path} is not valid TOML: {exc}") from None
    return suite_from_dict(data, where=str(path), default_name=path.stem)


def suite_from_dict(data: dict[str, Any], where: str, default_name: str = "custom") -> Suite:
    _reject_unknown(data, _SUITE_KEYS, where)
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise UsageError(f"{where}: add at least one [[models]] table (name = \"segformer-b0\" or path = ...)")
    values: dict[str, Any] = {"name": _typed(data.get("name", default_name), str, where, "name"),
                              "models": tuple(_model_spec(entry, f"{where} models[{i}]")
                                              for i, entry in enumerate(models))}
    for key in ("precisions", "backends", "optional_precisions"):
        if key in data:
            values[key] = tuple(_typed(item, str, where, key) for item in _typed(data[key], list, where, key))
    if "sizes" in data:
        values["sizes"] = tuple(parse_size(_typed(item, str, where, "sizes"))
                                for item in _typed(data["sizes"], list, where, "sizes"))
    for key in ("description", "dataset", "split", "data_root", "calib_strategy", "calib_split", "quant_method"):
        if key in data:
            values[key] = _typed(data[key], str, where, key)
    for key in ("eval_limit", "threads", "batch", "warmup", "min_runs", "calib_count"):
        if key in data:
            values[key] = _typed(data[key], int, where, key)
    for key in ("min_seconds", "row_timeout_s", "quant_max_miou_drop"):
        if key in data:
            values[key] = float(_typed(data[key], (int, float), where, key))
    if "dynamic_batch" in data:
        values["dynamic_batch"] = _typed(data["dynamic_batch"], bool, where, "dynamic_batch")
    return check_suite(Suite(**values), where)


def model_from_text(text: str, weights: str | None = None) -> ModelSpec:
    """A --models item: an existing path (bundle directory or .onnx) or a zoo model name."""
    path = Path(text).expanduser()
    if path.exists() or text.endswith(".onnx") or "/" in text:
        return ModelSpec(label=_label_for_path(path), path=str(path))
    return ModelSpec(label=text, zoo_name=text, weights=weights)


def check_suite(suite: Suite, where: str = "edgeseg bench") -> Suite:
    """Names, values and cross-references; zoo names and paths are checked too (cheap: nothing is built)."""
    from edgeseg.zoo.registry import get_entry

    for key, allowed in (("precisions", PRECISIONS), ("optional_precisions", PRECISIONS), ("backends", BACKENDS)):
        for value in getattr(suite, key):
            if value not in allowed:
                kind = key.rstrip("s").replace("optional_", "")
                hint = _hint(value, allowed) or f"; choose from {', '.join(allowed)}"
                raise UsageError(f"{where}: unknown {kind} {value!r}{hint}")
    if not suite.precisions and not suite.optional_precisions:
        raise UsageError(f"{where}: no precisions to measure; give at least one of {', '.join(PRECISIONS)}")
    if not suite.backends:
        raise UsageError(f"{where}: no backends to measure; give at least one of {', '.join(BACKENDS)}")
    for key in ("batch", "min_runs", "calib_count"):
        if getattr(suite, key) < 1:
            raise UsageError(f"{where}: {key} must be at least 1")
    if suite.warmup < 0 or suite.min_seconds < 0 or suite.row_timeout_s <= 0:
        raise UsageError(f"{where}: warmup and min_seconds must be >= 0 and row_timeout_s > 0")
    if suite.eval_limit is not None and suite.eval_limit < 1:
        raise UsageError(f"{where}: eval_limit must be at least 1 (leave it out for the whole split)")
    if suite.threads is not None and suite.threads < 1:
        raise UsageError(f"{where}: threads must be at least 1 (leave it out for the libraries' defaults)")
    labels = [model.label for model in suite.models]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise UsageError(f"{where}: model {duplicates[0]!r} is listed twice; give one of them a distinct label")
    for model in suite.models:
        if model.zoo_name is not None:
            get_entry(model.zoo_name)  # unknown names fail here, with a close-match hint
        if model.path is not None and not Path(model.path).exists():
            raise UsageError(f"{where}: model path {model.path} does not exist (a bundle directory or an .onnx)")
        if model.path is not None and Path(model.path).is_file() and Path(model.path).suffix != ".onnx":
            raise UsageError(f"{where}: model path {model.path} is not an .onnx file or a bundle directory")
        if model.reference is not None and model.reference not in labels:
            raise UsageError(f"{where}: model {model.label!r} has reference {model.reference!r}, which is not a "
                             f"model of the suite{_hint(model.reference, labels)}")
    return suite


def _model_spec(entry: Any, where: str) -> ModelSpec:
    if not isinstance(entry, dict):
        raise UsageError(f"{where}: each [[models]] entry is a table with name = ... or path = ...")
    _reject_unknown(entry, _MODEL_KEYS, where)
    if ("name" in entry) == ("path" in entry):
        raise UsageError(f"{where}: give exactly one of name (a zoo model) or path (a bundle or .onnx)")
    weights = entry.get("weights")
    if weights is not None:
        weights = _typed(weights, str, where, "weights")
    reference = _typed(entry["reference"], str, where, "reference") if "reference" in entry else None
    if "name" in entry:
        name = _typed(entry["name"], str, where, "name")
        return ModelSpec(label=_typed(entry.get("label", name), str, where, "label"), zoo_name=name,
                         weights=None if weights in ("", "default") else weights, reference=reference)
    if weights is not None:
        raise UsageError(f"{where}: weights apply to zoo models; a path model carries its own")
    path = Path(_typed(entry["path"], str, where, "path")).expanduser()
    label = _typed(entry.get("label", _label_for_path(path)), str, where, "label")
    return ModelSpec(label=label, path=str(path), reference=reference)


def _label_for_path(path: Path) -> str:
    return path.stem if path.suffix == ".onnx" else path.name


def _typed(value: Any, kind: type | tuple[type, ...], where: str, key: str) -> Any:
    # bool is an int subclass; TOML true is never a count
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UsageError(f"{where}: {key} must be a {names}, not {type(value).__name__} ({value!r})")
    return value


def _reject_unknown(table: dict, known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            hint = _hint(key, known) or f"; known keys: {', '.join(sorted(known))}"
            raise UsageError(f"{where}: unknown key {key!r}{hint}")


def _hint(word: str, candidates: Iterable[str]) -> str:
    from edgeseg.zoo.registry import closest_names

    close = closest_names(word, candidates)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def suite_for_run(suite: str | None = None, *, models: str | Iterable[str] = (), weights: str | None = None,
                  precisions: str | Iterable[str] = (), backends: str | Iterable[str] = (),
                  sizes: str | Iterable[str] = (), **settings: Any) -> Suite:
    """The suite a `bench` invocation runs: a suite file (or a bare CLI one) with command-line options on top.

    `models`, `precisions`, `backends` and `sizes` replace the suite's lists; `settings` (dataset, split,
    data_root, eval_limit, threads, batch, min_seconds, ...) replace single values; None means 'keep'."""
    model_items, precisions, backends, sizes = (split_list(v) for v in (models, precisions, backends, sizes))
    if suite is None and not model_items:
        raise UsageError("give --suite (e.g. --suite cpu) or --models (e.g. --models segformer-b0)")
    if suite is None:
        base = Suite(name="custom", models=tuple(model_from_text(item, weights) for item in model_items))
    else:
        base = load_suite(suite)
        if model_items:
            base = dataclasses.replace(base, models=tuple(model_from_text(item, weights) for item in model_items))
        elif weights is not None:
            base = dataclasses.replace(base, models=tuple(
                dataclasses.replace(m, weights=weights) if m.zoo_name else m for m in base.models))
    changes: dict[str, Any] = {key: value for key, value in settings.items() if value is not None}
    unknown = set(changes) - _SUITE_KEYS
    if unknown:
        raise ValueError(f"suite_for_run got unknown settings {sorted(unknown)}")  # a programming error
    if precisions:
        changes["precisions"] = precisions
        changes["optional_precisions"] = ()  # asked for explicitly: nothing optional is left
    if backends:
        changes["backends"] = backends
    if sizes:
        changes["sizes"] = tuple(parse_size(size) for size in sizes)
    return check_suite(dataclasses.replace(base, **changes), where="edgeseg bench" if suite is None else str(suite))
