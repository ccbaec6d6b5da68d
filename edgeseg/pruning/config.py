"""The prune stage's settings (a frozen dataclass, checked on construction)."""

from __future__ import annotations

from dataclasses import dataclass

from edgeseg.errors import UsageError
from edgeseg.sparsity import SPARSITY_PATTERNS

IMPORTANCES = ("l1", "l2", "bn-scale", "taylor")


@dataclass(frozen=True)
class PruneConfig:
    model: str
    weights: str | None = None  # any --weights spec; default: the bundled checkpoint
    ratio: float = 0.3  # fraction of channels removed in each coupled group (uniform) or overall (global)
    importance: str = "l1"
    global_pruning: bool = False
    iterative_steps: int = 1
    round_to: int = 8  # keep channel counts multiples of this (1: no rounding)
    ignore: tuple[str, ...] = ()  # layer names whose outputs keep all channels
    sparsity: str | None = None  # "2:4": semi-structured sparsity on top of the pruned channels
    size: tuple[int, int] | None = None  # (height, width) to trace, count GFLOPs and time at; default: contract
    dataset: str = "camvid"
    data_root: str | None = None
    taylor_images: int = 16  # training images whose gradients rank channels for --importance taylor
    eval_split: str = "test"  # mIoU before/after; fine-tuning picks its best epoch on val, so not val
    eval_limit: int | None = None
    measure_latency: bool = True  # ONNX Runtime CPU latency of both models, side by side
    latency_rounds: int = 10
    threads: int | None = None
    finetune_epochs: int = 0  # recovery fine-tune through edgeseg.train (0: none)
    finetune_lr: float = 1e-3
    finetune_batch_size: int = 8
    distill: bool = False  # distil from the unpruned model while fine-tuning
    device: str = "auto"
    seed: int = 0
    card: str | None = None  # model card of a module:factory (or Hugging Face) model
    classifier: tuple[str, ...] = ()  # layers producing the logits, for a model outside the zoo (default: found)

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise UsageError(f"--ratio must be between 0 and 1 (exclusive), e.g. 0.3; got {self.ratio}")
        if self.importance not in IMPORTANCES:
            raise UsageError(f"unknown importance {self.importance!r}; choose {', '.join(IMPORTANCES)}")
        if self.iterative_steps < 1:
            raise UsageError("--iterative-steps must be at least 1")
        if self.round_to < 1:
            raise UsageError("--round-to must be at least 1 (1: no rounding)")
        if self.sparsity not in (None, *SPARSITY_PATTERNS):
            raise UsageError(f"unknown sparsity {self.sparsity!r}; the supported pattern is 2:4")
        if self.finetune_epochs < 0:
            raise UsageError("--finetune-epochs must be 0 or more")
        if self.distill and not self.finetune_epochs:
            raise UsageError("--distill needs --finetune-epochs N: distillation happens while fine-tuning")
        if self.importance == "taylor" and self.taylor_images < 1:
            raise UsageError("--importance taylor needs at least one image for its gradients")
