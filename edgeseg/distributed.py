"""torch.distributed plumbing for `train` and `eval`: set up and tear down the process group torchrun asks for,
shard a split across ranks, sum a confusion matrix, and turn a peer that died or hung into one clear error.

Launch with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without it everything here
is one process and no group is created. Backends: NCCL for CUDA tensors, gloo for CPU tensors. A process that never
imported torch has no process group, so `current()` answers "one process" without importing torch: evaluate.py
(reached by the ONNX Runtime paths of quantize and bench) stays torch-free.
"""

from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, TypeVar

import numpy as np

from edgeseg.errors import EdgesegError, UsageError

if TYPE_CHECKING:
    from torch import nn

T = TypeVar("T")

BACKENDS = ("auto", "gloo", "nccl")
DEFAULT_TIMEOUT_S = 600.0  # a collective waiting longer than this means a peer died or hung


class DistributedError(EdgesegError):
    """Another process of the run died or stopped answering; this one gives up instead of hanging."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, no process group
    device: str = "cpu"  # this rank's device ("cuda:<local rank>" with NCCL)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 when run without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (or no torchrun): the process that prints results and writes files."""
    return int(os.environ.get("RANK", "0")) == 0


TORCHRUN_COMMANDS = ("train", "eval", "quantize")  # the commands that share their work across torchrun processes


def refuse_torchrun_for(command: str | None) -> None:
    """N copies of a one-process command would race on the same output files: say so instead."""
    if command is not None and launched_world_size() > 1 and command not in TORCHRUN_COMMANDS:
        raise UsageError(f"'edgeseg {command}' runs as one process; launch it without torchrun (commands that "
                         f"run under torchrun: {', '.join(TORCHRUN_COMMANDS)})")


def current() -> DistContext:
    """This process's place in an initialised process group, or a single-process context."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return DistContext()
    dist = torch.distributed
    backend = dist.get_backend()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       backend=backend, device=f"cuda:{local_rank}" if backend == "nccl" else "cpu")


def resolve_backend(backend: str, device: str) -> str:
    """The backend for `device` ("cpu", "cuda", "cuda:N", "auto"); refuses NCCL where there is no GPU.
    Imports torch only where the answer needs it (gloo on CPU does not: ONNX Runtime commands stay torch-free)."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown --dist-backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device == "cpu" and backend in ("auto", "gloo"):
        return "gloo"
    import torch

    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if backend == "auto":
        return "nccl" if wants_cuda else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise UsageError("--dist-backend nccl needs CUDA GPUs and none is visible here; "
                             "use --dist-backend gloo (CPU) or run on a GPU machine")
        if not wants_cuda:
            raise UsageError(f"--dist-backend nccl moves CUDA tensors only, but --device is {device}; "
                             "use --dist-backend gloo for CPU processes")
    return backend


@contextmanager
def process_group(device: str = "auto", backend: str = "auto",
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistContext]:
    """Join the process group torchrun describes (or reuse one the caller initialised) for the `with` block.

    Yields the rank's context; its `device` is the device this rank must use ("cuda:<local rank>" for CUDA runs).
    """
    chosen = resolve_backend(backend, device)  # validated even for one process: a wrong request is an error
    if current().backend is not None:  # the caller owns the group
        yield _with_device(current(), device)
        return
    world_size = launched_world_size()
    if world_size == 1:
        yield DistContext(device=_single_device(device))
        return
    import datetime

    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if chosen == "nccl":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        if torch.cuda.device_count() < local_world:
            raise UsageError(f"{local_world} processes on this node but only {torch.cuda.device_count()} GPU(s); "
                             f"use torchrun --nproc_per_node {torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(chosen, timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as exc:  # rendezvous failed: a peer never came, or the address is wrong
        raise DistributedError(f"could not join the {world_size}-process group ({_first_line(exc)}); "
                               "check that every rank was started with the same --rdzv-endpoint") from None
    failed = False
    try:
        yield _with_device(current(), device)
    except BaseException:
        failed = True
        raise
    finally:
        if not failed:
            barrier("finishing")  # nobody tears the group down while another rank still needs it
        dist.destroy_process_group()


def _single_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _with_device(ctx: DistContext, requested: str) -> DistContext:
    """The rank's model device: its own GPU (cuda:<local rank>) for CUDA runs, else what was asked."""
    import torch

    wants_cuda = requested.startswith("cuda") or (requested == "auto" and torch.cuda.is_available())
    if ctx.distributed and (ctx.backend == "nccl" or wants_cuda):
        device = f"cuda:{ctx.local_rank}"
    else:
        device = _single_device(requested)
    return DistContext(ctx.rank, ctx.world_size, ctx.local_rank, ctx.backend, device)


def _first_line(exc: BaseException) -> str:
    """The gist of a torch.distributed error: no source location, no advice addressed to PyTorch bug reporters."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else type(exc).__name__
    return text.split(". This is typically")[0][:300]


@contextmanager
def peers_guard(what: str) -> Iterator[None]:
    """Turn a collective that failed because a peer died (connection closed) or hung (timeout) into one clear
    error; other exceptions pass through untouched."""
    try:
        yield
    except (RuntimeError, OSError) as exc:  # torch.distributed.DistError subclasses RuntimeError
        ctx = current()
        if not ctx.distributed or not _is_peer_failure(exc):
            raise
        raise DistributedError(f"rank {ctx.rank} of {ctx.world_size}: {what} failed because another process "
                               f"died or stopped answering ({_first_line(exc)}); the failing rank's own log "
                               "says why") from None


def _is_peer_failure(exc: BaseException) -> bool:
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in ("gloo", "nccl", "connection closed", "connection reset", "timed out",
                                             "timeout", "broken pipe"))


def barrier(what: str) -> None:
    """Wait for every rank; with gloo a monitored barrier names the ranks that did not arrive in time."""
    import torch.distributed as dist

    ctx = current()
    if not ctx.distributed:
        return
    with peers_guard(f"waiting for every rank ({what})"):
        if ctx.backend == "gloo":
            dist.monitored_barrier(wait_all_ranks=True)
        else:
            dist.barrier()


def shard(count: int) -> range:
    """This rank's part of items 0..count-1 (every world_size-th item), disjoint across ranks, covering all."""
    ctx = current()
    return range(ctx.rank, count, ctx.world_size)


def sum_across_ranks(array: np.ndarray, what: str = "summing results") -> np.ndarray:
    """Element-wise sum of `array` over all ranks (exact for integers); the array itself with one process."""
    ctx = current()
    if not ctx.distributed:
        return array
    import torch
    import torch.distributed as dist

    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(ctx.device)
    with peers_guard(what):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy().astype(array.dtype, copy=False)


def mean_across_ranks(value: float, what: str = "averaging the loss") -> float:
    ctx = current()
    if not ctx.distributed:
        return value
    return float(sum_across_ranks(np.array([value], np.float64), what)[0]) / ctx.world_size


def from_main(value: T, what: str = "sharing a decision") -> T:
    """Rank 0's `value` on every rank (any picklable object): decisions that must agree, e.g. to stop now."""
    ctx = current()
    if not ctx.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    with peers_guard(what):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T, what: str = "gathering results") -> list[T]:
    """Every rank's `value`, in rank order, on every rank."""
    ctx = current()
    if not ctx.distributed:
        return [value]
    import torch.distributed as dist

    values = [None] * ctx.world_size
    with peers_guard(what):
        dist.all_gather_object(values, value)
    return values


def sync_buffers_from_main(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank before evaluating or saving: with
    per-process BatchNorm each rank updated them from its own batch since DDP last broadcast them."""
    ctx = current()
    if not ctx.distributed:
        return
    import torch.distributed as dist

    with peers_guard("sharing BatchNorm statistics"):
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)
