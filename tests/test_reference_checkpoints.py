"""The bundled CamVid references: they load by default, predict CamVid well, export with parity, and the numbers
the README shows are the ones their sidecars record."""

import json

import pytest

from edgeseg.checkpoint import read_checkpoint_sidecar
from edgeseg.zoo.weights import bundled_weights
from tests.conftest import REPO

RESULTS = REPO / "benchmarks" / "results" / "reference_checkpoints.json"
REFERENCES = ("segformer-b0", "deeplabv3plus-mobilenetv2", "unet-mobilenetv2")
BUNDLE_BUDGET_BYTES = 31e6  # all bundled checkpoints together: they ship in every install


def _bundled(name):
    path = bundled_weights(name)
    if path is None:
        pytest.skip(f"no bundled checkpoint for {name} yet")
    return path


@pytest.mark.parametrize("name", REFERENCES)
def test_bundled_checkpoint_is_small_fp16_and_its_published_result(name):
    path = _bundled(name)
    sidecar = read_checkpoint_sidecar(path)
    assert sidecar["dtype"] == "float16" and sidecar["label_set"] == "camvid"
    assert path.stat().st_size < 14e6
    assert sidecar["recipe"]["loss"] and sidecar["recipe"]["epochs"]
    published = json.loads(RESULTS.read_text())["checkpoints"][name]
    assert published["test_miou"] == pytest.approx(sidecar["metrics"]["camvid_test"]["miou"])
    # What the README shows of it: test_readme_checkpoint_table_is_the_rendered_results (marker `docs`).


def test_bundled_checkpoints_stay_within_the_size_budget():
    paths = [path for path in map(bundled_weights, REFERENCES) if path is not None]
    assert paths, "no bundled checkpoint found"
    assert sum(path.stat().st_size for path in paths) < BUNDLE_BUDGET_BYTES


@pytest.mark.camvid
@pytest.mark.parametrize("name", REFERENCES)
def test_bundled_checkpoint_segments_camvid(name, real_data):
    from edgeseg.evaluate import EvalConfig, evaluate_model

    _bundled(name)
    report = evaluate_model(EvalConfig(model=name, split="test", data_root=str(real_data), limit=12))
    assert report["weights"].endswith(f"{name}.safetensors")
    # On the first 12 test frames (the hard 0001TP drive) both measured 0.35-0.42 mIoU and 0.69-0.75 pixel
    # accuracy; chance is ~0.09 mIoU. The full-split figures are in the README.
    assert report["miou"] > 0.3
    assert report["pixel_accuracy"] > 0.6
    assert report["per_class_iou"]["Sky"] > 0.75


@pytest.mark.camvid
@pytest.mark.slow
def test_fp32_onnx_parity_on_real_images(real_data, tmp_path):
    from edgeseg.export import ExportConfig, export_model
    from edgeseg.zoo.weights import load_model

    _bundled("segformer-b0")
    artifact = export_model(load_model("segformer-b0"), "segformer-b0",
                            ExportConfig(data_root=str(real_data), parity_images=4), tmp_path / "model.onnx")
    parity = artifact.manifest["checks"]["parity"]
    assert parity["source"].startswith("camvid/val") and parity["argmax_agreement"] >= 0.999


def _publish_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("publish_reference", REPO / "benchmarks" / "publish_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.docs
def test_readme_checkpoint_table_is_the_rendered_results():
    publish = _publish_module()
    results = json.loads(RESULTS.read_text())
    assert publish.render_checkpoint_table(results) in (REPO / "README.md").read_text()


def test_checkpoint_table_names_stages_and_distillation():
    publish = _publish_module()
    entry = {"test_miou": 0.41, "test_pixel_accuracy": 0.75, "val_miou": 0.5, "train_hours_cpu": 3.7,
             "bytes": 7.5e6, "best_epoch": 80, "epochs_run": 80, "per_class_iou": {"Sky": 0.9, "Pole": None},
             "stages": [{"epochs": 30}, {"epochs": 25}, {"epochs": 25}],
             "recipe": {"loss": "ce", "lr": 6e-4, "batch_size": 8, "crop_size": [256, 320],
                        "scale_range": [0.75, 1.5], "distill_from": "default", "distill_weight": 0.5,
                        "distill_temperature": 2.0,
                        "distill_teacher": {"note": "the previous bundled segformer-b0"}}}
    table = publish.render_checkpoint_table({"checkpoints": {"segformer-b0": entry}})
    assert "| `segformer-b0` | 0.4100 | 0.7500 | 0.5000 | 30+25+25 (80) | 3.7 | 7.5 MB | ce, AdamW 0.0006" in table
    assert "distilled from the previous bundled segformer-b0 (weight 0.5, T 2.0) |" in table
    assert "| `segformer-b0` | 0.90 | - |" in table
    entry["recipe"]["distill_from"] = None
    assert "distilled" not in publish.render_checkpoint_table({"checkpoints": {"segformer-b0": entry}})
    # scores re-measured under a changed model definition (publish_reference.py --remeasure) are marked as such
    entry["test_remeasured"] = "after the padding changed"
    table = publish.render_checkpoint_table({"checkpoints": {"segformer-b0": entry}})
    assert "| `segformer-b0` | 0.4100 (*) | 0.7500 |" in table
    assert "(*) test scores re-measured with the same weights, `segformer-b0`: after the padding changed" in table


@pytest.mark.docs
def test_readme_per_drive_table_matches_its_results():
    results = json.loads((REPO / "benchmarks" / "results" / "camvid_by_drive.json").read_text())["models"]
    readme = (REPO / "README.md").read_text()
    for name, entry in results.items():
        val, test = entry["splits"]["val"], entry["splits"]["test"]
        cells = [val["drives"]["0016E5"]["miou"], test["drives"]["0001TP"]["miou"],
                 test["drives"]["Seq05VD"]["miou"], test["miou"]]
        assert f"| `{name}` | " + " | ".join(f"{v:.3f}" for v in cells) + " |" in readme
        assert test["images"] == 233 and val["images"] == 101


def test_a_reference_is_replaced_only_by_a_better_validation_score():
    publish = _publish_module()
    publish.check_selected_by_val("m", 0.53, 0.52, allow_worse=False)  # better: accepted
    publish.check_selected_by_val("m", 0.40, None, allow_worse=False)  # first reference: accepted
    publish.check_selected_by_val("m", 0.50, 0.52, allow_worse=True)   # explicitly allowed
    with pytest.raises(SystemExit, match="val mIoU 0.5200 does not beat the bundled reference's 0.5268"):
        publish.check_selected_by_val("m", 0.52, 0.5268, allow_worse=False)
    with pytest.raises(SystemExit, match="no validation score"):
        publish.check_selected_by_val("m", None, 0.5, allow_worse=False)


def test_a_teacher_that_was_the_replaced_reference_is_named_so():
    publish = _publish_module()
    recipe = {"distill_from": "default", "distill_teacher": {"spec": "default", "sha256": "abc"}}
    named = publish.name_teacher(recipe, current_sha256="abc", current_test_miou=0.43841)
    assert named["distill_teacher"]["note"] == "the previous reference (test 0.4384)"
    assert "note" not in recipe["distill_teacher"]  # the run's own record is not modified
    assert publish.name_teacher(recipe, current_sha256="other", current_test_miou=0.4) == recipe
    assert publish.name_teacher({"distill_from": None}, "abc", 0.4) == {"distill_from": None}
