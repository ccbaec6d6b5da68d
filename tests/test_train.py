"""A real (tiny) training run: it learns, keeps the best checkpoint, and resumes where it stopped."""

import json

import pytest

from edgeseg.checkpoint import read_checkpoint_sidecar
from edgeseg.errors import UsageError
from edgeseg.evaluate import EvalConfig, evaluate_model
from edgeseg.train import TrainConfig, lr_at, train


def tiny_config(data_root, out_dir, **overrides):
    settings = dict(model="fcn-resnet18", out_dir=str(out_dir), data_root=str(data_root), epochs=6, batch_size=4,
                    lr=3e-3, warmup_iters=2, crop_size=(48, 64), scale_range=(0.9, 1.1), eval_every=3, seed=0,
                    threads=1)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.slow
def test_training_learns_keeps_best_and_resumes(tmp_path):
    from tests.conftest import make_camvid

    data = make_camvid(tmp_path / "data", per_split=8)
    out = tmp_path / "run"
    # Stop after the first epoch (max_minutes=0 stops at the first epoch end), then resume to the end.
    train(tiny_config(data, out, max_minutes=0.0))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1]
    best = train(tiny_config(data, out, resume=True))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2, 3, 4, 5, 6]
    assert log[-1]["loss"] < log[0]["loss"]
    sidecar = read_checkpoint_sidecar(best)
    assert sidecar["model"] == "fcn-resnet18" and sidecar["recipe"]["loss"] == "weighted-ce"
    assert sidecar["preprocessing"]["classes"][0] == "Sky"
    assert len(sidecar["recipe"]["class_weights"]) == 11
    report = evaluate_model(EvalConfig(model="fcn-resnet18", weights=str(best), data_root=str(data), split="val"))
    random_report = evaluate_model(EvalConfig(model="fcn-resnet18", weights="random", data_root=str(data),
                                              split="val"))
    assert report["miou"] > random_report["miou"] + 0.1  # it learned the toy scenes


def test_same_seed_gives_the_same_first_epoch(tmp_path):
    from tests.conftest import make_camvid

    data = make_camvid(tmp_path / "data", per_split=4)
    losses = []
    for run in ("a", "b"):
        train(tiny_config(data, tmp_path / run, epochs=1, eval_every=0))
        losses.append(json.loads((tmp_path / run / "log.jsonl").read_text().splitlines()[0])["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(model="fcn-resnet18", out_dir="x", lr=1e-3, warmup_iters=10)
    assert lr_at(0, 100, cfg) == pytest.approx(1e-4)
    assert lr_at(9, 100, cfg) == pytest.approx(1e-3)
    assert lr_at(55, 100, cfg) < 1e-3
    assert lr_at(100, 100, cfg) == 0.0


def test_bad_settings_are_refused():
    with pytest.raises(UsageError, match="epochs"):
        TrainConfig(model="fcn-resnet18", out_dir="x", epochs=0)
    with pytest.raises(UsageError, match="--scale-min and --scale-max must be positive"):
        TrainConfig(model="fcn-resnet18", out_dir="x", scale_range=(1.5, 0.5))


def test_distillation_records_its_teacher_and_resume_refuses_another(tmp_path):
    from tests.conftest import make_camvid

    data = make_camvid(tmp_path / "data", per_split=4)
    teacher_a = train(tiny_config(data, tmp_path / "a", epochs=1, eval_every=0))
    teacher_b = train(tiny_config(data, tmp_path / "b", epochs=1, eval_every=0, seed=1))
    student = tmp_path / "student"
    train(tiny_config(data, student, epochs=2, eval_every=0, distill_from=str(teacher_a), max_minutes=0.0))
    recipe = read_checkpoint_sidecar(student / "last.safetensors")["recipe"]
    assert recipe["distill_teacher"]["sha256"] == read_checkpoint_sidecar(teacher_a)["sha256"]
    assert recipe["weights_resolved"] == {"spec": "random", "source": "random"}
    # The spec now names another file: resuming would silently distil from a different teacher.
    teacher_b.replace(teacher_a)
    with pytest.raises(UsageError, match="not the file the run"):
        train(tiny_config(data, student, epochs=2, eval_every=0, distill_from=str(teacher_a), resume=True))
