"""PyTorch runner: the FP32 reference every other backend is compared with (host side only)."""

from __future__ import annotations

import numpy as np

from edgeseg.runners.base import TensorSpec


class TorchRunner:
    output_kind = "logits"

    def __init__(self, model_name: str, weights: str | None = None, device: str = "cpu",
                 threads: int | None = None) -> None:
        import torch

        from edgeseg.zoo.weights import load_model

        if threads:
            torch.set_num_threads(threads)
        loaded = load_model(model_name, weights)
        self.model = loaded.model.eval().to(device)
        self.preprocessing = loaded.preprocessing
        self.device = device
        self.backend = "torch" if device == "cpu" else f"torch-{device}"
        self.input_spec = TensorSpec("pixel_values", (1, 3, *self.preprocessing.input_size), "float32")

    def __enter__(self) -> "TorchRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)).float().cpu().numpy()
