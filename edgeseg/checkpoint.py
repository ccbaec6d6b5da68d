"""edgeseg checkpoints: a safetensors state_dict plus a JSON sidecar (model, classes, preprocessing, recipe).

Never a pickled module: a checkpoint reloads by model name (and, for pruned models, an architecture spec).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.errors import WeightsError
from edgeseg.manifest import atomic_path, manifest_path_for, now_utc, read_json, sha256_file, write_json
from edgeseg.zoo.contract import Preprocessing

if TYPE_CHECKING:
    from torch import nn

CHECKPOINT_FORMAT = "edgeseg-checkpoint"
CHECKPOINT_SCHEMA = 1


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, model_name: str, preprocessing: Preprocessing,
                    label_set: str, recipe: dict | None = None, metrics: dict | None = None,
                    half: bool = False, extra: dict | None = None) -> Path:
    """Write `path` (.safetensors) and `path`.json atomically; `half` stores floats as fp16 (bundled weights)."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if half and tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        state[key] = tensor
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": CHECKPOINT_FORMAT, "model": model_name})
    sidecar = {
        "format": CHECKPOINT_FORMAT,
        "schema": CHECKPOINT_SCHEMA,
        "model": model_name,
        "label_set": label_set,
        "num_classes": preprocessing.num_classes,
        "preprocessing": preprocessing.to_dict(),
        "dtype": "float16" if half else "float32",
        "sha256": sha256_file(path),
        "created": now_utc(),
        "recipe": recipe or {},
        "metrics": metrics or {},
    }
    sidecar.update(extra or {})
    write_json(manifest_path_for(path), sidecar)
    return path


def read_checkpoint_sidecar(path: str | os.PathLike) -> dict | None:
    """The sidecar of an edgeseg checkpoint, or None when `path` is a plain safetensors file."""
    sidecar = manifest_path_for(path)
    if not sidecar.is_file():
        return None
    data = read_json(sidecar)
    if data.get("format") != CHECKPOINT_FORMAT:
        return None
    if data.get("schema", 0) > CHECKPOINT_SCHEMA:
        raise WeightsError(f"{path} was written by a newer edgeseg (checkpoint schema {data['schema']}); upgrade")
    return data
