"""Structured pruning (Torch-Pruning DepGraph), architecture specs and 2:4 sparsity, on tiny inputs with random
weights: every family prunes to a smaller model that runs, reloads from its spec and exports to ONNX."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from edgeseg.arch_spec import reference_model
from edgeseg.checkpoint import save_checkpoint
from edgeseg.cli import main
from edgeseg.errors import EdgesegError, UsageError
from edgeseg.prune import PruneConfig, prune_model
from edgeseg.sparsity import apply_2to4, check_2to4, current_2to4_masks, reapply_2to4
from edgeseg.zoo.weights import LoadedModel, load_model

pytest.importorskip("torch_pruning")

SIZE = (64, 64)
FAMILIES = [("fcn-resnet18", 0.5), ("lraspp-mobilenetv3", 0.4), ("deeplabv3plus-mobilenetv2", 0.3),
            ("segformer-b0", 0.5)]
_cache: dict = {}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: threads only add contention on a shared machine
    yield
    torch.set_num_threads(threads)


def pruned(name: str, ratio: float):
    """Prune each family once per session; tests share the result."""
    if (name, ratio) not in _cache:
        torch.manual_seed(0)
        loaded = load_model(name, "random")
        _cache[name, ratio] = (loaded, *prune_model(loaded, name, PruneConfig(model=name, ratio=ratio), SIZE))
    return _cache[name, ratio]


def _out_width(module):
    return module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features


@pytest.mark.parametrize("name,ratio", FAMILIES)
def test_family_prunes_to_a_smaller_model_that_runs(name, ratio):
    loaded, model, spec, report = pruned(name, ratio)
    with torch.no_grad():
        assert model(torch.randn(1, 3, *SIZE)).shape == (1, 11, *SIZE)
    assert report.gflops_after < report.gflops_before and report.gflops_reduction > 0.25
    assert report.params_after < report.params_before
    # The caller's model is left as it was.
    assert sum(p.numel() for p in loaded.model.parameters()) == report.params_before
    reference = dict(reference_model(name, 11).named_modules())
    resized_outputs = 0
    for layer_name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and _out_width(module) != _out_width(
                reference[layer_name]):
            assert _out_width(module) % 8 == 0, layer_name  # --round-to 8
            resized_outputs += 1
    assert resized_outputs > 5
    for classifier in report.classifier_layers:
        assert _out_width(dict(model.named_modules())[classifier]) == 11


def test_segformer_attention_heads_stay_consistent_at_other_sizes():
    _, model, spec, report = pruned("segformer-b0", 0.5)
    attention = model.model.segformer.stages[1].blocks[0].attention
    assert attention.num_attention_heads == 2 and attention.head_dim * 2 == attention.q_proj.out_features < 64
    assert spec["modules"]["model.segformer.stages.1.blocks.0.attention"]["head_dim"] == attention.head_dim
    # The decode head is pruned; the classifier keeps its 11 outputs; reduction convs keep their width.
    assert model.model.decode_head.linear_fuse.out_channels < 256
    assert "model.segformer.stages.0.blocks.0.attention.sequence_reduction.sequence_reduction" in \
        report.fixed_width_layers
    with torch.no_grad():  # reshapes use the patched head size, not the traced one
        assert model(torch.randn(2, 3, 96, 128)).shape == (2, 11, 96, 128)


@pytest.mark.parametrize("name", ["lraspp-mobilenetv3", "segformer-b0"])
def test_spec_round_trip_and_onnx_export(tmp_path, tiny_camvid, name):
    from edgeseg.export import ExportConfig, export_model
    from edgeseg.runners.ort import OrtRunner

    loaded, model, spec, _ = pruned(name, 0.5 if name == "segformer-b0" else 0.4)
    path = save_checkpoint(model, tmp_path / "pruned.safetensors", model_name=name,
                           preprocessing=loaded.preprocessing, label_set="camvid", extra={"spec": spec})
    json.dumps(spec)  # plain JSON, never a pickled module
    reloaded = load_model(name, str(path))
    assert reloaded.spec == spec
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(x), model(x))
    if name == "segformer-b0":
        artifact = export_model(reloaded, name, ExportConfig(size=SIZE, data_root=str(tiny_camvid), parity_images=2),
                                tmp_path / "pruned.onnx")
        assert artifact.manifest["checks"]["parity"]["passed"] and artifact.manifest["spec"] == spec
        with OrtRunner(artifact.path, device="cpu", threads=1) as runner:
            logits = runner.infer(x.numpy())
        np.testing.assert_allclose(logits, model(x).detach().numpy(), atol=1e-3)


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.2])
def test_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(UsageError, match="--ratio must be between 0 and 1"):
        PruneConfig(model="fcn-resnet18", ratio=ratio)


def test_unknown_layer_name_lists_close_matches():
    loaded = load_model("fcn-resnet18", "random")
    with pytest.raises(UsageError, match=r"--ignore 'layer3\.0\.conv9'.*did you mean layer3\.0\.conv1"):
        prune_model(loaded, "fcn-resnet18", PruneConfig(model="fcn-resnet18", ignore=("layer3.0.conv9",)), SIZE)


def test_ignored_layer_keeps_its_outputs():
    torch.manual_seed(0)
    loaded = load_model("fcn-resnet18", "random")
    model, _, report = prune_model(loaded, "fcn-resnet18",
                                   PruneConfig(model="fcn-resnet18", ratio=0.5, ignore=("head32.0",)), SIZE)
    assert model.head32[0].out_channels == 256 and report.ignored_layers == ["head32.0"]
    assert model.layer3[0].conv1.out_channels < 256


class _Untraceable(nn.Module):
    """Leaves autograd between its layers (a numpy round trip): nothing the dependency graph can follow."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 16, 3, padding=1)
        self.classifier = nn.Conv2d(16, 11, 1)

    def forward(self, x):
        return self.classifier(torch.from_numpy(self.features(x).detach().numpy()))


def test_untraceable_model_is_a_clear_error():
    preprocessing = load_model("fcn-resnet18", "random").preprocessing
    with pytest.raises(EdgesegError, match="Torch-Pruning"):
        prune_model(LoadedModel(_Untraceable(), preprocessing, "toy"), "toy", PruneConfig(model="toy"), SIZE,
                    classifier=("classifier",))


def test_importance_needs_what_it_ranks_by():
    segformer = load_model("segformer-b0", "random")
    with pytest.raises(UsageError, match="bn-scale"):
        prune_model(segformer, "segformer-b0", PruneConfig(model="segformer-b0", importance="bn-scale"), SIZE)
    cnn = load_model("fcn-resnet18", "random")
    with pytest.raises(UsageError, match="taylor.*real images"):
        prune_model(cnn, "fcn-resnet18", PruneConfig(model="fcn-resnet18", importance="taylor"), SIZE)


def test_taylor_and_iterative_global_pruning():
    torch.manual_seed(0)
    loaded = load_model("fcn-resnet18", "random")
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((1, 3, *SIZE)).astype(np.float32), rng.integers(0, 11, SIZE).astype(np.uint8)),
               (rng.standard_normal((1, 3, *SIZE)).astype(np.float32), None)]  # masks, or its own predictions
    cfg = PruneConfig(model="fcn-resnet18", ratio=0.4, importance="taylor", global_pruning=True, iterative_steps=2)
    model, _, report = prune_model(loaded, "fcn-resnet18", cfg, SIZE, gradient_batches=batches)
    assert report.gflops_reduction > 0.2
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert model(torch.randn(1, 3, *SIZE)).shape == (1, 11, *SIZE)


def test_2to4_masks_follow_the_pattern_and_survive_an_optimizer_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Conv2d(32, 32, 3, groups=32), nn.Flatten(), nn.LazyLinear(8))
    model(torch.randn(1, 16, 8, 8))
    assert check_2to4(model) < 0.5
    masks = apply_2to4(model)
    assert set(masks) == {"0", "3"}  # the depthwise conv has one input channel per group: not eligible
    assert check_2to4(model) == 1.0
    groups = model[0].weight.detach().movedim(1, -1).reshape(-1, 4)
    assert ((groups != 0).sum(1) == 2).all()  # random weights: exactly the 2 largest of every 4 kept
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 16, 8, 8)).square().mean().backward()
    optimizer.step()
    assert check_2to4(model) < 1.0  # the update refills the zeros...
    reapply_2to4(model, masks)
    assert check_2to4(model) == 1.0  # ...and the masks put them back
    assert set(current_2to4_masks(model)) == {"0", "3"}


def test_prune_command_writes_a_sparse_checkpoint_that_reloads_and_fine_tunes(tmp_path, tiny_camvid, capsys):
    from edgeseg.train import TrainConfig, train

    out = tmp_path / "pruned.safetensors"
    main(["prune", "--model", "fcn-resnet18", "--weights", "random", "--ratio", "0.5", "--size", "64x64",
          "--sparsity", "2:4", "--data-root", str(tiny_camvid), "--threads", "1", "--out", str(out)])
    assert "GFLOPs -" in capsys.readouterr().out
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    metrics = sidecar["metrics"]
    assert sidecar["sparsity"] == "2:4" and sidecar["spec"]["sparsity"] == "2:4"
    assert metrics["gflops_reduction"] > 0.3 and metrics["latency_before_ms"] > 0 and metrics["latency_after_ms"] > 0
    # Timing on a shared CPU can go either way for a 64x64 input, so the sign is not asserted; the fraction must be
    # the one the two p50s give, and the p50s the ones the two latency records hold.
    assert metrics["latency_reduction"] == pytest.approx(1 - metrics["latency_after_ms"] / metrics["latency_before_ms"])
    assert metrics["latency_before_ms"] == metrics["latency_before"]["p50_ms"]
    assert metrics["latency_after_ms"] == metrics["latency_after"]["p50_ms"]
    assert metrics["sparsity_2to4_fraction"] == 1.0
    assert {"miou_before", "miou_pruned", "miou_drop"} <= set(metrics)
    reloaded = load_model("fcn-resnet18", str(out))
    assert check_2to4(reloaded.model, skip=metrics["classifier_layers"]) == 1.0
    # Fine-tuning through train.py keeps both the pruned architecture and the 2:4 pattern.
    best = train(TrainConfig(model="fcn-resnet18", out_dir=str(tmp_path / "ft"), data_root=str(tiny_camvid),
                             weights=str(out), epochs=1, batch_size=4, warmup_iters=1, crop_size=(48, 64),
                             eval_every=0, threads=1, distill_from="random"))
    finetuned = load_model("fcn-resnet18", str(best))
    assert finetuned.spec["modules"] == sidecar["spec"]["modules"]
    assert check_2to4(finetuned.model, skip=metrics["classifier_layers"]) == 1.0


def test_prune_command_errors_are_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--model", "fcn-resnet18", "--weights", "random", "--ratio", "1.5", "--out",
              str(tmp_path / "p.safetensors")])
    assert exit_info.value.code == 2
    assert "--ratio 1.5 is out of range; it must be in (0, 1)" in capsys.readouterr().err


def test_report_json_keeps_its_keys_and_leaves_out_what_was_not_measured():
    from edgeseg.pruning.core import PruneReport

    report = PruneReport(input_size=[64, 96], params_before=10, params_after=6, params_reduction=0.4,
                         gflops_before=2.0, gflops_after=1.0, gflops_reduction=0.5, layers_resized=3,
                         classifier_layers=["score"], ignored_layers=[], fixed_width_layers=[], attention_modules=[],
                         prune_seconds=1.5)
    assert list(report.to_dict())[-1] == "prune_seconds" and "miou_drop" not in report.to_dict()
    measured = dataclasses.replace(report, latency={"latency_backend": "onnxruntime-cpu", "latency_threads": None},
                                   miou_before=0.5, miou_pruned=0.25)
    assert measured.to_dict()["latency_threads"] is None  # a latency setting that is None stays: it was measured
    assert measured.to_dict()["miou_drop"] == pytest.approx(25.0)
    finetuned = dataclasses.replace(measured, finetune={"epochs": 1}, miou_finetuned=0.45)
    assert list(finetuned.to_dict())[-6:] == ["latency_threads", "miou_before", "miou_pruned", "finetune",
                                              "miou_finetuned", "miou_drop"]
    assert finetuned.to_dict()["miou_drop"] == pytest.approx(5.0)  # from the fine-tuned model, not the pruned one
