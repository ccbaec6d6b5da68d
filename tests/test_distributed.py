"""Distributed training and evaluation with real torch.distributed process groups: gloo over loopback, 2 CPU
processes (torchrun for the command line, multiprocessing spawn for the plumbing), compared with one process."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeseg.errors import UsageError
from tests.conftest import REPO, make_camvid

TRAIN_ARGS = ["--model", "unet-mobilenetv2", "--epochs", "2", "--lr", "1e-3", "--warmup-iters", "2",
              "--crop", "64x96", "--scale-min", "1", "--scale-max", "1", "--loss", "ce", "--eval-every", "0",
              "--threads", "1", "--freeze-bn"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _torchrun(args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "edgeseg", *args]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch_and_resume_on_every_rank(tmp_path):
    """2 ranks x batch 2 against 1 process x batch 4: the same global batches (order and augmentations drawn as
    one process draws them, see test_ranks_split_exactly_the_batches_one_process_trains_on), gradients averaged
    by DDP. BatchNorm is frozen (--freeze-bn): with per-process statistics
    a rank normalises its 2 images by their own mean, not the 4 images' mean, so the runs would differ by design;
    SyncBatchNorm, the other fix, runs on GPUs only. The loss is plain CE on equal-sized crops (the same number of
    labelled pixels per rank), so the mean of the ranks' means is the global batch's mean."""
    import torch
    from safetensors.torch import load_file

    from edgeseg.checkpoint import read_checkpoint_sidecar
    from edgeseg.data.datasets import open_dataset
    from edgeseg.train import TrainConfig, train
    from edgeseg.zoo.weights import load_model

    data = make_camvid(tmp_path / "data", per_split=8, size=(64, 96))
    one, two = tmp_path / "one", tmp_path / "two"
    from edgeseg.cli import main

    try:  # the same command line, one process
        main(["train", *TRAIN_ARGS, "--data-root", str(data), "--out", str(one), "--batch-size", "4"])
    except SystemExit as exit_info:
        assert exit_info.code in (0, None)
    # The 2-process run stops after its first epoch and is resumed by a second launch: every rank must pick up
    # the optimizer state and the sample order where the first launch left them.
    first = _torchrun(["train", *TRAIN_ARGS, "--data-root", str(data), "--out", str(two), "--batch-size", "2",
                       "--max-minutes", "0"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert [record["epoch"] for record in _log(two)] == [1]
    second = _torchrun(["train", *TRAIN_ARGS, "--data-root", str(data), "--out", str(two), "--batch-size", "2",
                        "--resume"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("best checkpoint:") == 1  # rank 0 alone speaks

    losses_one = [record["loss"] for record in _log(one)]
    losses_two = [record["loss"] for record in _log(two)]
    assert len(losses_one) == len(losses_two) == 2
    assert losses_two == pytest.approx(losses_one, rel=1e-4)

    recipe = read_checkpoint_sidecar(two / "last.safetensors")["recipe"]
    assert (recipe["world_size"], recipe["batch_size"], recipe["global_batch_size"]) == (2, 2, 4)

    weights_one, weights_two = load_file(one / "last.safetensors"), load_file(two / "last.safetensors")
    torch.manual_seed(0)  # the runs' initial weights (train seeds before building the model)
    label_set = open_dataset("camvid", "train", str(data)).label_set
    initial = load_model("unet-mobilenetv2", "random", label_set=label_set).model.state_dict()
    for name, trained in weights_one.items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(trained, weights_two[name]), name  # frozen: untouched on every rank
            continue
        update = (trained - initial[name]).norm()
        # AdamW divides each step by sqrt(v): a weight whose gradient is at round-off level moves by ~lr either
        # way, so elementwise closeness is too strict; the update of every tensor agrees to well under 2%.
        assert (trained - weights_two[name]).norm() <= 0.02 * update + 1e-6, name
        assert update > 0, name

    # Resuming with another process count would change the global batch mid-run: refused, on every launch.
    with pytest.raises(UsageError, match="trained by 2 process"):
        train(TrainConfig(model="unet-mobilenetv2", out_dir=str(two), data_root=str(data), epochs=3, batch_size=2,
                          crop_size=(64, 96), resume=True, threads=1, freeze_bn=True))


def test_ranks_split_exactly_the_batches_one_process_trains_on():
    from edgeseg.train import TrainConfig, rank_batches

    shapes = [(48 + i % 3, 64, 3) for i in range(11)]  # 11 images, global batch 4: 2 batches, 3 images left over
    cfg = TrainConfig(model="fcn-resnet18", out_dir="x", batch_size=4, crop_size=(32, 48))
    one = rank_batches(shapes, cfg, epoch=3)
    split = TrainConfig(model="fcn-resnet18", out_dir="x", batch_size=2, crop_size=(32, 48))
    ranks = [rank_batches(shapes, split, epoch=3, rank=rank, world_size=2) for rank in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 2
    for step, batch in enumerate(one):
        assert ranks[0][step] + ranks[1][step] == batch  # same images, same augmentation choices, rank order
    assert rank_batches(shapes, cfg, epoch=4) != one  # a new order every epoch
    assert rank_batches(shapes, cfg, epoch=3) == one  # and the same one when an epoch is replayed on resume


def _join_group(rank: int, world_size: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")


def _eval_worker(rank: int, port: int, data: str, out: str) -> None:
    """One rank: the confusion matrix of a real (randomly initialised) model over its shard, summed over ranks."""
    import torch

    from edgeseg.data.datasets import open_dataset
    from edgeseg.distributed import process_group
    from edgeseg.evaluate import confusion_on, torch_predictor
    from edgeseg.train import TrainConfig, train
    from edgeseg.zoo.weights import load_model

    _join_group(rank, 2, port)
    torch.set_num_threads(1)
    dataset = open_dataset("camvid", "val", data)
    torch.manual_seed(0)
    loaded = load_model("fcn-resnet18", "random", label_set=dataset.label_set)
    with process_group("cpu", "gloo", timeout_s=60) as ctx:
        seen = []
        predict = torch_predictor(loaded.model, "cpu")
        matrix = confusion_on(lambda batch: (seen.append(1), predict(batch))[1], dataset,
                              loaded.preprocessing.with_size((64, 96))).matrix
        # SyncBatchNorm is GPU-only in PyTorch: asking for it on CPU ranks is refused before any data is read.
        try:
            train(TrainConfig(model="fcn-resnet18", out_dir=str(Path(out).parent / "never"), sync_bn=True))
            refusal = None
        except UsageError as exc:
            refusal = str(exc)
    np.save(f"{out}.rank{ctx.rank}.npy", matrix)
    Path(f"{out}.rank{ctx.rank}.json").write_text(json.dumps({"images": len(seen), "refusal": refusal}))


@pytest.mark.slow
def test_distributed_eval_sums_to_exactly_the_single_process_confusion_matrix(tmp_path):
    import torch

    from edgeseg.data.datasets import open_dataset
    from edgeseg.evaluate import confusion_on, torch_predictor
    from edgeseg.zoo.weights import load_model

    data = str(make_camvid(tmp_path / "data", per_split=5, size=(64, 96)))  # 5 images: shards of 3 and 2
    out = str(tmp_path / "matrix")
    spawn = multiprocessing.get_context("spawn")
    port = _free_port()
    workers = [spawn.Process(target=_eval_worker, args=(rank, port, data, out)) for rank in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
        assert worker.exitcode == 0

    torch.manual_seed(0)
    dataset = open_dataset("camvid", "val", data)
    loaded = load_model("fcn-resnet18", "random", label_set=dataset.label_set)
    single = confusion_on(torch_predictor(loaded.model, "cpu"), dataset, loaded.preprocessing.with_size((64, 96)))
    assert single.matrix.sum() > 0 and np.count_nonzero(single.matrix) > 1  # a non-trivial matrix
    reports = [json.loads(Path(f"{out}.rank{rank}.json").read_text()) for rank in range(2)]
    assert [report["images"] for report in reports] == [3, 2]  # each rank ran its shard only
    for rank in range(2):
        np.testing.assert_array_equal(np.load(f"{out}.rank{rank}.npy"), single.matrix)
        assert "--sync-bn needs CUDA" in reports[rank]["refusal"]


@pytest.mark.slow
def test_eval_command_under_torchrun_reports_what_one_process_reports(toy_checkpoint, tmp_path):
    from edgeseg.evaluate import EvalConfig, evaluate_model

    data, checkpoint = toy_checkpoint
    args = ["eval", "--model", "fcn-resnet18", "--weights", str(checkpoint), "--data-root", str(data),
            "--split", "val", "--size", "48x64", "--json", str(tmp_path / "two.json")]
    launched = _torchrun(args)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("mIoU") == 1  # one table, from rank 0
    single = evaluate_model(EvalConfig(model="fcn-resnet18", weights=str(checkpoint), data_root=str(data),
                                       split="val", size=(48, 64)))
    assert json.loads((tmp_path / "two.json").read_text()) == json.loads(json.dumps(single))


def _failing_peer_worker(rank: int, port: int, behaviour: str, out: str) -> None:
    """Rank 1 dies (or hangs) after joining; rank 0 then needs it for a collective and must give up clearly."""
    from edgeseg.distributed import DistributedError, process_group, sum_across_ranks

    _join_group(rank, 2, port)
    with process_group("cpu", "gloo", timeout_s=5):
        if rank == 1:
            if behaviour == "dies":
                os._exit(7)
            time.sleep(60)  # hangs: alive, never answering
            os._exit(0)
        started = time.monotonic()
        try:
            sum_across_ranks(np.ones(3, np.int64), "summing the confusion matrices")
            message = None
        except DistributedError as exc:
            message = str(exc)
        Path(out).write_text(json.dumps({"message": message, "seconds": time.monotonic() - started}))
        os._exit(0)  # the group is broken: leave without the closing barrier


@pytest.mark.slow
@pytest.mark.parametrize("behaviour", ["dies", "hangs"])
def test_a_rank_that_dies_or_hangs_makes_the_others_stop_with_a_message(tmp_path, behaviour):
    out = tmp_path / "rank0.json"
    spawn = multiprocessing.get_context("spawn")
    port = _free_port()
    workers = [spawn.Process(target=_failing_peer_worker, args=(rank, port, behaviour, str(out)))
               for rank in range(2)]
    for worker in workers:
        worker.start()
    workers[0].join(timeout=120)
    assert workers[0].exitcode == 0, "rank 0 hung or crashed instead of reporting the lost peer"
    workers[1].kill()
    workers[1].join()
    result = json.loads(out.read_text())
    assert result["message"] and "rank 0 of 2: summing the confusion matrices failed" in result["message"]
    assert "died or stopped answering" in result["message"]
    assert result["seconds"] < 30  # the 5 s timeout, not a hang


def test_nccl_without_gpus_is_refused_in_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA GPUs: NCCL is available")
    from tests.test_cli import assert_one_line_error, run_cli

    code, _, err = run_cli(["train", "--model", "fcn-resnet18", "--out", "never", "--dist-backend", "nccl"], capsys)
    assert_one_line_error(code, err, "--dist-backend nccl needs CUDA GPUs")
    assert not Path("never").exists()
    code, _, err = run_cli(["eval", "--model", "fcn-resnet18", "--dist-backend", "mpi"], capsys)
    assert_one_line_error(code, err, "unknown --dist-backend 'mpi'")


def test_one_process_commands_refuse_to_run_as_torchrun_copies(capsys, monkeypatch):
    from tests.test_cli import assert_one_line_error, run_cli

    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets in each process it starts
    code, _, err = run_cli(["build", "--model", "fcn-resnet18", "--out", "never"], capsys)
    assert_one_line_error(code, err, "'edgeseg build' runs as one process; launch it without torchrun")
    assert not Path("never").exists()


def test_sync_bn_and_freeze_bn_exclude_each_other():
    from edgeseg.train import TrainConfig

    with pytest.raises(UsageError, match="exclude each other"):
        TrainConfig(model="fcn-resnet18", out_dir="x", sync_bn=True, freeze_bn=True)


@pytest.mark.slow
def test_quantize_budget_under_torchrun_decides_like_one_process(toy_checkpoint, tmp_path):
    """The INT8 accuracy budget's evaluations are sharded across 2 ranks; every round's mIoU and the layers kept
    in float must be those of one process, and only rank 0 writes the model."""
    import cv2

    from edgeseg.calibration import CalibConfig, make_calibration_set
    from edgeseg.export import ExportConfig, export_model, onnx_preprocessing
    from edgeseg.quantize import QuantizeConfig, quantize_int8
    from edgeseg.zoo.weights import load_model

    data, checkpoint = toy_checkpoint
    fp32 = export_model(load_model("fcn-resnet18", str(checkpoint)), "fcn-resnet18",
                        ExportConfig(size=(48, 64), data_root=str(data), parity_images=2), tmp_path / "model.onnx")
    black = tmp_path / "black"  # black calibration frames break INT8: the budget loop must run several rounds
    black.mkdir()
    for index in range(4):
        cv2.imwrite(str(black / f"{index}.png"), np.zeros((48, 64, 3), np.uint8))
    calibration = make_calibration_set(onnx_preprocessing(fp32.path),
                                       CalibConfig(images_dir=str(black), count=4, strategy="random"),
                                       tmp_path / "black.json")
    single = quantize_int8(fp32.path, calibration.path,
                           QuantizeConfig(max_miou_drop=1.0, data_root=str(data), max_fallback_rounds=8),
                           tmp_path / "one.onnx").manifest["checks"]["accuracy"]
    launched = _torchrun(["quantize", str(fp32.path), "--calibration", str(calibration.path), "--out",
                          str(tmp_path / "two.onnx"), "--max-miou-drop", "1.0", "--data-root", str(data)])
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("wrote ") == 1  # rank 0 alone reports (and writes)
    assert launched.stderr.count("vs FP32") == 1  # the budget's first result line, from rank 0 alone
    assert len(single["rounds"]) > 1
    distributed = json.loads((tmp_path / "two.onnx.json").read_text())["checks"]["accuracy"]
    assert distributed == single


@pytest.mark.gpu
@pytest.mark.slow
def test_nccl_training_with_sync_bn_and_amp_on_two_gpus(tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA GPUs for 2 NCCL ranks, this machine has {torch.cuda.device_count()}")
    from edgeseg.checkpoint import read_checkpoint_sidecar

    data = make_camvid(tmp_path / "data", per_split=8, size=(64, 96))
    run = tmp_path / "run"
    args = ["train", "--model", "unet-mobilenetv2", "--epochs", "2", "--warmup-iters", "2", "--crop", "64x96",
            "--eval-every", "1", "--device", "cuda", "--sync-bn", "--batch-size", "2", "--data-root", str(data),
            "--out", str(run)]
    launched = _torchrun(args)
    assert launched.returncode == 0, launched.stderr[-3000:]
    recipe = read_checkpoint_sidecar(run / "last.safetensors")["recipe"]
    assert recipe["world_size"] == 2 and recipe["global_batch_size"] == 4 and recipe["sync_bn"]
    assert [record["epoch"] for record in _log(run)] == [1, 2] and "val_miou" in _log(run)[-1]
