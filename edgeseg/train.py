"""Training and fine-tuning: AdamW, linear warmup + poly LR, augmentation, losses for unbalanced classes,
periodic evaluation, best-checkpoint keeping and resume after an interruption.

Run directory layout (everything written atomically):
  last.safetensors(.json)   weights after the latest finished epoch, with the recipe
  best.safetensors(.json)   weights with the best validation mIoU so far
  last.state.pt             optimizer, scheduler position, epoch (torch.save of tensors; loaded weights_only)
  log.jsonl                 one line per epoch: loss, lr, time, validation scores

Under torchrun (`torchrun --nproc_per_node N -m edgeseg train ...`) the same function trains with
DistributedDataParallel: --batch-size is per process (global batch = batch x processes, recorded in the recipe),
every rank draws the epoch's shuffled order and augmentations exactly as one process with the global batch would
and keeps its slice of each global batch (`rank_batches`), validation is sharded across ranks, and only rank 0
writes the run directory. Plumbing: edgeseg/distributed.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgeseg.checkpoint import read_checkpoint_sidecar, save_checkpoint
from edgeseg.data.datasets import IGNORE, SegmentationDataset, open_dataset
from edgeseg.data.transforms import AugmentConfig, AugmentDraw, apply_augment, draw_augment
from edgeseg import distributed
from edgeseg.errors import DataError, UsageError
from edgeseg.evaluate import evaluate, torch_predictor
from edgeseg.manifest import atomic_path
from edgeseg.progress import make_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    model: str
    out_dir: str
    dataset: str = "camvid"
    data_root: str | None = None
    weights: str | None = None  # initial weights (any --weights spec; zoo default: random); ignored when resuming
    card: str | None = None  # model card of a module:factory (or Hugging Face) model
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_iters: int = 150
    poly_power: float = 0.9
    crop_size: tuple[int, int] = (256, 320)
    scale_range: tuple[float, float] = (0.75, 1.5)
    colour_jitter: float = 0.3
    loss: str = "weighted-ce"
    eval_every: int = 5  # epochs; 0 = only at the end
    eval_limit: int | None = None  # evaluate on the first N validation images (None = all)
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    amp: bool = True  # mixed precision, CUDA only
    max_minutes: float | None = None  # stop cleanly after this long (resume later with resume=True)
    resume: bool = False
    distill_from: str | None = None  # teacher checkpoint for knowledge distillation (pruning recovery)
    new_head: bool = False  # weights with another class count: replace their classifier (fine-tuning)
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (CUDA only, PyTorch's rule)
    freeze_bn: bool = False  # BatchNorm uses and keeps its running statistics (small per-process batches)
    dist_backend: str = "auto"  # under torchrun: gloo (CPU) or nccl (CUDA); auto picks by device
    dist_timeout_s: float = 600.0  # a rank waiting longer than this for the others gives up with an error

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UsageError("--epochs must be at least 1")
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if not self.lr > 0:
            raise UsageError("--lr must be positive")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise UsageError("--scale-min and --scale-max must be positive, --scale-min <= --scale-max")
        if self.sync_bn and self.freeze_bn:
            raise UsageError("--sync-bn and --freeze-bn exclude each other: frozen BatchNorm computes no statistics")
        if not self.dist_timeout_s > 0:
            raise UsageError("--dist-timeout must be positive")


def _pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return requested


def class_pixel_counts(dataset: SegmentationDataset, masks: list[np.ndarray] | None = None) -> np.ndarray:
    counts = np.zeros(dataset.label_set.num_classes, dtype=np.int64)
    for index in range(len(dataset)):
        mask = masks[index] if masks is not None else dataset.load(index)[1]
        counts += np.bincount(mask[mask != IGNORE].ravel(), minlength=counts.size)[: counts.size]
    return counts


def lr_at(iteration: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then polynomial decay to zero at `total` iterations."""
    if iteration < cfg.warmup_iters:
        return cfg.lr * (iteration + 1) / cfg.warmup_iters
    progress = (iteration - cfg.warmup_iters) / max(1, total - cfg.warmup_iters)
    return cfg.lr * max(0.0, 1 - progress) ** cfg.poly_power


def rank_batches(shapes: list[tuple], cfg: TrainConfig, epoch: int, rank: int = 0,
                 world_size: int = 1) -> list[list[tuple[int, AugmentDraw]]]:
    """This rank's batches of the epoch: (image index, augmentation choices) pairs.

    The order and every augmentation choice are drawn from one generator seeded by (seed, epoch), in the order
    one process training with the global batch (batch_size x world_size) draws them; rank r keeps items
    [r*batch_size, (r+1)*batch_size) of each global batch. So N processes train on exactly the batches one process
    would (what torch's DistributedSampler does for the order, extended to the augmentation), a one-process run
    is what it always was, and a resumed epoch replays the same batches.
    """
    augment_cfg = AugmentConfig(cfg.crop_size, cfg.scale_range, True, cfg.colour_jitter)
    rng = np.random.default_rng([cfg.seed, epoch])
    order = rng.permutation(len(shapes))
    global_batch = cfg.batch_size * world_size
    mine = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
    batches = []
    for start in range(0, len(order) - global_batch + 1, global_batch):
        draws = [(int(i), draw_augment(shapes[i], augment_cfg, rng)) for i in order[start:start + global_batch]]
        batches.append(draws[mine])
    return batches


class _BatchPrefetcher:
    """Augment the next batches in a background thread (OpenCV releases the GIL) while the model trains."""

    def __init__(self, images: Any, masks: Any, batches: list[list[tuple[int, AugmentDraw]]], cfg: TrainConfig) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=3)
        augment_cfg = AugmentConfig(cfg.crop_size, cfg.scale_range, True, cfg.colour_jitter)
        self.num_batches = len(batches)

        def work() -> None:
            try:
                for batch in batches:
                    pairs = [apply_augment(images[i], masks[i], draw, augment_cfg) for i, draw in batch]
                    self._queue.put((np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])))
            except BaseException as exc:  # surface augmentation errors in the training thread
                self._queue.put(exc)

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for _ in range(self.num_batches):
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item


# What a run writes into its folder, and all that a fresh run in the same folder removes (nothing else is touched).
RUN_FILES = ("best.safetensors", "best.safetensors.json", "last.safetensors", "last.safetensors.json", "last.state.pt",
             "log.jsonl")


def train(cfg: TrainConfig) -> Path:
    """Train cfg.model; returns the path of the best checkpoint. Under torchrun: one DDP rank of the run."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _pick_device(cfg.device)  # a CUDA request without CUDA fails before any process group is formed
    with distributed.process_group(cfg.device, cfg.dist_backend, cfg.dist_timeout_s) as ctx:
        return _train(cfg, ctx)


def _train(cfg: TrainConfig, ctx: distributed.DistContext) -> Path:
    import torch

    from edgeseg.foreign_checkpoint import checkpoint_path, save_foreign
    from edgeseg.losses import enet_class_weights, make_loss, uses_class_weights
    from edgeseg.zoo.weights import load_model

    source, card = _trainable_source(cfg)
    zoo = source.kind == "zoo"
    initial = cfg.weights if cfg.weights is not None else ("random" if zoo else None)
    device = ctx.device
    if cfg.sync_bn and ctx.distributed and not device.startswith("cuda"):
        raise UsageError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only; on CPU use "
                         "--freeze-bn or per-process BatchNorm (neither option)")
    say = log.info if ctx.is_main else (lambda *args, **kwargs: None)  # one voice per run, not one per rank
    out_dir = Path(cfg.out_dir)
    # Zoo and module:factory models: last/best.safetensors; Hugging Face models: last/ and best/ directories.
    last_path, best_path = checkpoint_path(source.kind, out_dir, "last"), checkpoint_path(source.kind, out_dir, "best")
    state_path = out_dir / "last.state.pt"
    resuming = cfg.resume and last_path.exists() and state_path.is_file()
    _check_ranks_agree(distributed.gather(resuming, "checking the run directory"), last_path)
    state = None
    if resuming:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        _check_same_world_size(state, ctx.world_size, cfg.batch_size, out_dir)
    if cfg.resume and not resuming:
        say(f"no resumable run in {out_dir}; starting from {initial or cfg.model}")

    torch.manual_seed(cfg.seed)  # model initialisation is part of what --seed reproduces
    if zoo:
        train_set = open_dataset(cfg.dataset, "train", cfg.data_root)
    else:  # the user's model fixes the classes: the dataset must have as many (one line naming both counts)
        loaded = _load_foreign(source, card, weights=initial, checkpoint=last_path if resuming else None)
        train_set = open_dataset(cfg.dataset, "train", cfg.data_root, label_set=loaded.preprocessing)
    val_set = open_dataset(cfg.dataset, "val", cfg.data_root, label_set=None if zoo else loaded.preprocessing)
    if len(train_set) < cfg.batch_size:  # zero steps would save an untrained checkpoint and call it trained
        raise DataError(f"{train_set.name} has {len(train_set)} images, fewer than one batch of {cfg.batch_size}; "
                        f"lower --batch-size")
    if ctx.is_main:  # only rank 0 writes the run folder
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:  # a fresh run (the CLI asked for --force): an earlier run's files must not mix with this one's
            for name in RUN_FILES:
                (out_dir / name).unlink(missing_ok=True)
            _remove_hf_checkpoints(out_dir)
    if zoo:
        loaded = load_model(cfg.model, str(last_path) if resuming else initial, label_set=train_set.label_set,
                            new_head=cfg.new_head and not resuming)
    if loaded.new_head:
        head = loaded.new_head
        fresh = [*head["reinitialised"], *head.get("not_in_weights", [])]
        say(f"new head for {train_set.label_set.name}: {head['from_classes']} -> {head['to_classes']} classes, "
            f"{len(fresh)} tensors start afresh ({', '.join(fresh[:4])}{', ...' if len(fresh) > 4 else ''})")
    model, preprocessing = loaded.model.to(device), loaded.preprocessing
    if cfg.sync_bn and ctx.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    sparsity = (loaded.spec or {}).get("sparsity")
    if sparsity:  # a 2:4-sparse checkpoint (edgeseg prune --sparsity 2:4) stays 2:4: re-mask after every step
        from edgeseg.sparsity import current_2to4_masks, reapply_2to4

        sparse_masks = current_2to4_masks(model)

    # Decode the training split once: with 367 CamVid images this is ~190 MB and saves a PNG decode per step.
    images, masks = zip(*(train_set.load(i) for i in range(len(train_set))))
    counts = class_pixel_counts(train_set, list(masks))
    weights = enet_class_weights(counts) if uses_class_weights(cfg.loss) else None
    criterion = make_loss(cfg.loss, train_set.label_set.num_classes, weights).to(device)

    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    use_amp = cfg.amp and device.startswith("cuda")
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    teacher, teacher_record = None, None
    if cfg.distill_from:
        loaded_teacher = (load_model(cfg.model, cfg.distill_from, label_set=train_set.label_set) if zoo
                          else _load_foreign(source, card, checkpoint=cfg.distill_from))
        teacher = loaded_teacher.model.to(device).eval()
        teacher_record = {"spec": cfg.distill_from, **loaded_teacher.input_record()}

    start_epoch, iteration, best_miou = 0, 0, -1.0
    if resuming:
        _check_same_teacher(_recorded(last_path, "distill_teacher"), teacher_record, out_dir)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, iteration, best_miou = state["epoch"], state["iteration"], state["best_miou"]
        say(f"resuming {cfg.model} at epoch {start_epoch}/{cfg.epochs} (best val mIoU {best_miou:.4f})")

    global_batch = cfg.batch_size * ctx.world_size
    iters_per_epoch = len(images) // global_batch
    if iters_per_epoch == 0:
        raise UsageError(f"the training split has {len(images)} images, fewer than one global batch of {global_batch} "
                         f"({ctx.world_size} process(es) x --batch-size {cfg.batch_size})")
    total_iters = cfg.epochs * iters_per_epoch
    shapes = [image.shape for image in images]
    net = model
    if ctx.distributed:  # averages gradients across ranks in backward; the optimizer steps on `model` as usual
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        # Depthwise convolutions hand DDP gradients in another memory layout than its buckets: a copy per step,
        # correct results; PyTorch warns on every rank on every run, which says nothing the user can act on.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        with distributed.peers_guard("wrapping the model in DistributedDataParallel"):
            net = DistributedDataParallel(model, device_ids=[ctx.local_rank] if device.startswith("cuda") else None)
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k not in ("out_dir", "data_root", "resume", "dist_backend", "dist_timeout_s")}
    recipe["weights"] = initial
    recipe["world_size"] = ctx.world_size
    recipe["global_batch_size"] = global_batch
    recipe["class_weights"] = weights.tolist() if weights is not None else None
    # Specs such as "default" move when the bundled weights are replaced: record the files they meant.
    recipe["weights_resolved"] = (_recorded(last_path, "weights_resolved") if resuming
                                  else {"spec": initial or cfg.model, **loaded.input_record()})
    recipe["distill_teacher"] = teacher_record
    started = time.monotonic()
    mean = torch.tensor(preprocessing.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, device=device).view(1, 3, 1, 1)

    def save(path: Path, metrics: dict, epoch: int) -> None:
        if not zoo:  # in the user's model's own format: the next stage takes it with the same kind of --model
            save_foreign(model, source.kind, path, model_name=cfg.model, preprocessing=preprocessing, recipe=recipe,
                         metrics=metrics, spec=loaded.spec, extra={"epoch": epoch, "sparsity": sparsity})
            return
        save_checkpoint(model, path, model_name=cfg.model, preprocessing=preprocessing,
                        label_set=train_set.label_set.name, recipe=recipe, metrics=metrics,
                        extra={"epoch": epoch, "spec": loaded.spec, "sparsity": sparsity} if loaded.spec
                        else {"epoch": epoch})

    with make_progress() as progress, distributed.peers_guard("training"):
        task = progress.add_task(f"train {cfg.model}", total=total_iters, completed=iteration, info="")
        for epoch in range(start_epoch, cfg.epochs):
            _train_mode(model, cfg.freeze_bn)
            torch.manual_seed(cfg.seed * 100_003 + epoch + 7919 * ctx.rank)  # dropout: own masks per rank
            epoch_loss, epoch_start = 0.0, time.monotonic()
            batches = _BatchPrefetcher(images, masks, rank_batches(shapes, cfg, epoch, ctx.rank, ctx.world_size), cfg)
            for batch_images, batch_masks in batches:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(iteration, total_iters, cfg)
                pixels = torch.from_numpy(batch_images).to(device).permute(0, 3, 1, 2).float().div_(255)
                pixels = (pixels - mean) / std
                target = torch.from_numpy(batch_masks).to(device).long()
                with torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=use_amp):
                    logits = net(pixels)
                    loss = criterion(logits.float(), target)
                    if teacher is not None:
                        loss = loss + cfg.distill_weight * _distillation_loss(logits, teacher, pixels, target, cfg)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if sparsity:
                    reapply_2to4(model, sparse_masks)
                iteration += 1
                loss_value = loss.item()
                epoch_loss += loss_value
                progress.update(task, advance=1, info=f"epoch {epoch + 1} loss {loss_value:.3f}")

            # The logged loss is the global batch's: the mean of the ranks' means (equal-sized batches).
            epoch_loss = distributed.mean_across_ranks(epoch_loss / max(1, batches.num_batches))
            distributed.sync_buffers_from_main(model)  # evaluate and save the weights rank 0 holds
            record = {"epoch": epoch + 1, "iteration": iteration, "loss": epoch_loss,
                      "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": round(time.monotonic() - epoch_start, 1)}
            last_epoch = epoch + 1 == cfg.epochs
            if (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0) or last_epoch:
                scores = evaluate(torch_predictor(model, device), val_set, preprocessing, limit=cfg.eval_limit,
                                  description="val")
                record["val_miou"] = scores.miou
                record["val_per_class_iou"] = scores.to_dict(val_set.label_set.classes)["per_class_iou"]
                if scores.miou > best_miou:  # every rank holds the same (all-reduced) scores
                    best_miou = scores.miou
                    if ctx.is_main:
                        save(best_path, {"val": scores.to_dict(val_set.label_set.classes), "epoch": epoch + 1},
                             epoch + 1)
            if ctx.is_main:  # only rank 0 writes the run directory
                save(last_path, {"val_miou": record.get("val_miou")}, epoch + 1)
                with atomic_path(state_path) as tmp:
                    torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                                "iteration": iteration, "best_miou": best_miou, "world_size": ctx.world_size}, tmp)
                with open(out_dir / "log.jsonl", "a") as journal:
                    journal.write(json.dumps(record) + "\n")
                if progress.live.is_started:  # above the bar (both on stderr), else a log line (-q quiets it)
                    if log.isEnabledFor(logging.INFO):
                        progress.console.print(_describe(record, best_miou))
                else:
                    log.info(_describe(record, best_miou))
            out_of_time = cfg.max_minutes is not None and (time.monotonic() - started) / 60 > cfg.max_minutes
            if distributed.from_main(out_of_time and not last_epoch, "agreeing to stop"):  # all ranks stop together
                say(f"stopping after {cfg.max_minutes} minutes at epoch {epoch + 1}; continue with --resume")
                break
    return best_path if best_path.exists() else last_path


def _trainable_source(cfg: TrainConfig) -> tuple[Any, Any]:
    """(ModelSource, card) of cfg.model; an ONNX file, bundle or engine cannot be trained (one line)."""
    from edgeseg.model_source import KIND_WORDS, load_card_option, resolve_source

    source = resolve_source(cfg.model)
    if not source.is_torch:
        raise UsageError(f"{cfg.model} is {KIND_WORDS[source.kind]}, which has no trainable weights; train the "
                         f"PyTorch model it came from (a zoo name, Hugging Face directory or hub id, or "
                         f"package.module:factory with --weights)")
    card = load_card_option(cfg.card, source)
    if source.kind != "zoo" and cfg.new_head:
        raise UsageError(f"--new-head replaces a zoo model's classifier; {cfg.model} ({source.kind}) must already "
                         f"predict the dataset's classes")
    return source, card


def _load_foreign(source: Any, card: Any, weights: str | None = None, checkpoint: str | Path | None = None) -> Any:
    """A Hugging Face or module:factory model to train: `checkpoint` when given (the run's last checkpoint when
    resuming, or the --distill-from teacher: a Hugging Face directory / hub id, or the factory's weights file),
    else the model as given with --weights."""
    from edgeseg.model_source import load_factory, load_hf

    if source.kind == "hf":
        if weights is not None:
            raise UsageError(f"{source.spec} is a Hugging Face model with its own weights; drop --weights")
        return load_hf(str(checkpoint) if checkpoint is not None else source.spec, card)
    return load_factory(source.spec, str(checkpoint) if checkpoint is not None else weights, card)


def _remove_hf_checkpoints(out_dir: Path) -> None:
    """A fresh run in a reused folder: an earlier Hugging Face run's last/ and best/ directories go too."""
    import shutil

    for name in ("best", "last"):
        if (out_dir / name / "config.json").is_file():
            shutil.rmtree(out_dir / name)
        (out_dir / f"{name}.json").unlink(missing_ok=True)


def _train_mode(model: Any, freeze_bn: bool) -> None:
    """model.train(), with BatchNorm layers left in eval mode (running statistics used, not updated) for
    --freeze-bn: then a sample's gradient does not depend on the rest of its batch, so any split of the global
    batch across processes trains the same weights."""
    import torch

    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _check_ranks_agree(resuming_by_rank: list[bool], last_path: Path) -> None:
    if len(set(resuming_by_rank)) > 1:
        blind = [rank for rank, seen in enumerate(resuming_by_rank) if not seen]
        raise UsageError(f"rank(s) {', '.join(map(str, blind))} do not see {last_path}: --resume needs --out on a "
                         "filesystem every node shares")


def _check_same_world_size(state: dict, world_size: int, batch_size: int, out_dir: Path) -> None:
    """Resuming with another process count would change the global batch and the sample order mid-run."""
    saved = int(state.get("world_size", 1))  # runs saved before distributed training were single-process
    if saved != world_size:
        raise UsageError(f"the run in {out_dir} was trained by {saved} process(es) (global batch "
                         f"{saved * batch_size}) but this launch has {world_size} (global batch "
                         f"{world_size * batch_size}); resume with {saved} process(es) in all (torchrun "
                         f"--nproc_per_node x --nnodes) or start a new --out")


def _recorded(last_path: Path, key: str) -> dict | None:
    """What a run's first session recorded in its recipe (resolved --weights, teacher), read back on resume."""
    sidecar = read_checkpoint_sidecar(last_path) or {}
    return sidecar.get("recipe", {}).get(key)


def _check_same_teacher(saved: dict | None, teacher_record: dict | None, out_dir: Path) -> None:
    """A resumed distillation must learn from the same teacher file, not whatever its spec points at today."""
    saved_sha256, current = (saved or {}).get("sha256"), (teacher_record or {}).get("sha256")
    if saved_sha256 and current and saved_sha256 != current:
        raise UsageError(f"the teacher {teacher_record['spec']!r} is not the file the run in {out_dir} started "
                         f"with (sha256 {saved_sha256[:12]}, now {current[:12]}); pass that checkpoint as "
                         f"--distill-from or start a new --out")


def _distillation_loss(student_logits: Any, teacher: Any, pixels: Any, target: Any, cfg: TrainConfig) -> Any:
    """KL divergence to the teacher's softened predictions, over labelled pixels only."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        teacher_logits = teacher(pixels).float()
    temperature = cfg.distill_temperature
    student = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher_probs = F.softmax(teacher_logits / temperature, dim=1)
    per_pixel = F.kl_div(student, teacher_probs, reduction="none").sum(dim=1)
    valid = (target != IGNORE).float()
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1) * temperature ** 2


def _describe(record: dict, best: float) -> str:
    text = f"epoch {record['epoch']}: loss {record['loss']:.4f} lr {record['lr']:.2e} ({record['epoch_seconds']}s)"
    if "val_miou" in record:
        text += f" val mIoU {record['val_miou']:.4f} (best {best:.4f})"
    return text
