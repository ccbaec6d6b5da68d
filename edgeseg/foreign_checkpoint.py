"""How `edgeseg train` and `edgeseg prune` write a Hugging Face or module:factory model, so that the next stage
(export, build, eval, train --resume, prune) loads it with the same kind of --model.

  hf        a Hugging Face directory (save_pretrained: config.json, model.safetensors, preprocessor_config.json)
            plus edgeseg-preprocessing.json (the contract it was trained with: classes, palette, mean/std, size,
            fit) and, when pruned, edgeseg-arch-spec.json: the pruned layer sizes. transformers alone cannot load
            a pruned directory (config.json still describes the unpruned sizes); edgeseg rebuilds the model from
            config.json, resizes the listed layers and loads the weights strictly. The directory is written
            beside its final place and renamed into it; <dir>.json beside it holds the recipe and metrics.
  factory   a safetensors state_dict of the user's module (the keys its factory's model has, so the file works as
            --weights) plus the edgeseg sidecar <file>.json: the contract (so --card may be left out), recipe,
            metrics and, when pruned, the architecture spec that resizes the factory's fresh model before loading.

Never a pickled module.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeseg.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_SCHEMA, save_checkpoint
from edgeseg.manifest import manifest_path_for, now_utc, sha256_file, write_json
from edgeseg.zoo.contract import Preprocessing

PREPROCESSING_FILE = "edgeseg-preprocessing.json"
SPEC_FILE = "edgeseg-arch-spec.json"


def checkpoint_path(kind: str, folder: Path, stem: str) -> Path:
    """Where a checkpoint named `stem` of a `kind` model lives in `folder`: a directory for hf, else .safetensors."""
    return folder / stem if kind == "hf" else folder / f"{stem}.safetensors"


def label_set_name(preprocessing: Preprocessing) -> str:
    from edgeseg.data.palettes import LABEL_SETS

    for name, label_set in LABEL_SETS.items():
        if tuple(label_set.classes) == tuple(preprocessing.classes):
            return name
    return "custom"


def save_foreign(model: Any, kind: str, path: str | os.PathLike, *, model_name: str, preprocessing: Preprocessing,
                 recipe: dict | None = None, metrics: dict | None = None, spec: dict | None = None,
                 extra: dict | None = None) -> Path:
    """Write `model` (edgeseg's logits wrapper around the user's module, as model_source loads it) to `path`."""
    path = Path(path)
    inner = model.model  # the user's module / the transformers model, without edgeseg's wrapper
    record = {"model_kind": kind, "spec": spec, **(extra or {})}
    if kind == "factory":
        return save_checkpoint(inner, path, model_name=model_name, preprocessing=preprocessing,
                               label_set=label_set_name(preprocessing), recipe=recipe, metrics=metrics, extra=record)
    if kind != "hf":
        raise ValueError(f"save_foreign writes hf or factory models, not {kind}")
    _save_hf_directory(inner, path, preprocessing, spec)
    write_json(manifest_path_for(path), {
        "format": CHECKPOINT_FORMAT, "schema": CHECKPOINT_SCHEMA, "model": model_name,
        "label_set": label_set_name(preprocessing), "num_classes": preprocessing.num_classes,
        "preprocessing": preprocessing.to_dict(), "dtype": "float32",
        "sha256": sha256_file(path / "model.safetensors"), "created": now_utc(),
        "recipe": recipe or {}, "metrics": metrics or {}, **record})
    return path


def _save_hf_directory(hf_model: Any, path: Path, preprocessing: Preprocessing, spec: dict | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(scratch, 0o755)  # mkdtemp makes a private folder; checkpoints are meant to be shared
        classes = dict(enumerate(preprocessing.classes))
        hf_model.config.id2label = classes  # the classes it was trained on, for tools other than edgeseg too
        hf_model.config.label2id = {name: index for index, name in classes.items()}
        _quiet_save_pretrained(hf_model, scratch)
        processor = {"image_mean": list(preprocessing.mean), "image_std": list(preprocessing.std),
                     "size": {"height": preprocessing.input_size[0], "width": preprocessing.input_size[1]}}
        (scratch / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
        (scratch / PREPROCESSING_FILE).write_text(json.dumps(preprocessing.to_dict(), indent=2) + "\n")
        if spec:
            (scratch / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
            # save_pretrained may store tensors under the checkpoint names transformers converts from when it
            # loads; a pruned directory is loaded by edgeseg (fresh model, resized, strict load), so it holds the
            # module's own state_dict names.
            from safetensors.torch import save_file

            state = {key: tensor.detach().cpu().contiguous() for key, tensor in hf_model.state_dict().items()}
            save_file(state, str(scratch / "model.safetensors"), metadata={"format": "pt"})
        replace_directory(scratch, path)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _quiet_save_pretrained(hf_model: Any, folder: Path) -> None:
    """save_pretrained without transformers' progress bar (one small local file: it says nothing useful)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        hf_model.save_pretrained(str(folder), safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def replace_directory(new: Path, final: Path) -> None:
    """Put the finished directory `new` at `final`: a reader sees the old directory or the new one, and for the
    instant between the two renames, none (never a half-written one)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
