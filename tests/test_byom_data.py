"""Your own data: Cityscapes as downloaded (labelIds mapped to train ids), and folder datasets with any label set
(classes file or model card, suffixes, colour masks), with one clear line for values outside the classes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.data.datasets import CITYSCAPES_LABEL_TO_TRAIN, open_dataset
from edgeseg.errors import DataError, UsageError
from tests.test_cli import assert_one_line_error, run_cli

# labelIds -> what the scene draws: sky 23, building 11, road 7, car 26, person 24, ego vehicle 1 (void)
SCENE_IDS = {"sky": 23, "building": 11, "road": 7, "car": 26, "person": 24, "ego": 1}


def cityscapes_scene(rng, size=(64, 128)):
    """An image and its labelIds mask, Cityscapes-style: sky, buildings, road, a car and a person, ego car bonnet."""
    from edgeseg.data.palettes import CITYSCAPES

    height, width = size
    ids = np.full(size, SCENE_IDS["building"], np.uint8)
    ids[: height // 4] = SCENE_IDS["sky"]
    ids[height // 2:] = SCENE_IDS["road"]
    top, left = rng.integers(height // 2, height - 20), rng.integers(0, width - 30)
    ids[top:top + 12, left:left + 24] = SCENE_IDS["car"]
    ids[top - 6:top + 10, (left + 40) % (width - 6):(left + 40) % (width - 6) + 5] = SCENE_IDS["person"]
    ids[-4:] = SCENE_IDS["ego"]
    palette = np.zeros((256, 3), np.float32)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        palette[label_id] = CITYSCAPES.palette[train_id]
    image = palette[ids] + rng.normal(0, 10, (*size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), ids


def make_cityscapes(root: Path, per_split: int = 3, size=(64, 128), seed: int = 0) -> Path:
    """The official layout, labelIds only (no createTrainIdLabelImgs run): root/leftImg8bit, root/gtFine."""
    rng = np.random.default_rng(seed)
    for split, cities in (("train", ("aachen", "bremen")), ("val", ("frankfurt",))):
        for index in range(per_split):
            city = cities[index % len(cities)]
            stem = f"{city}_000000_{index:06d}"
            image, ids = cityscapes_scene(rng, size)
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"),
                        cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"), ids)
            # the other files the download has, which must not be mistaken for masks
            cv2.imwrite(str(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png"), ids)
    return root


def test_cityscapes_as_downloaded_maps_label_ids_to_train_ids(tmp_path):
    root = make_cityscapes(tmp_path / "my-cs-download")  # any folder name
    dataset = open_dataset(f"cityscapes:{root}", "train")
    assert len(dataset) == 3 and dataset.label_set.num_classes == 19
    _, mask = dataset.load(0)
    stored = cv2.imread(str(dataset.samples[0].mask), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(mask[stored == 7]).tolist()) == {0}  # road
    assert set(np.unique(mask[stored == 26]).tolist()) == {13}  # car
    assert set(np.unique(mask[stored == 24]).tolist()) == {11}  # person
    assert set(np.unique(mask[stored == 1]).tolist()) == {255}  # ego vehicle: void
    # trainIds files, where createTrainIdLabelImgs made them, are used as they are
    for sample in dataset.samples:
        train_ids = np.vectorize(lambda v: CITYSCAPES_LABEL_TO_TRAIN.get(v, 255))(
            cv2.imread(str(sample.mask), cv2.IMREAD_UNCHANGED)).astype(np.uint8)
        cv2.imwrite(str(sample.mask).replace("_labelIds", "_labelTrainIds"), train_ids)
    again = open_dataset(f"cityscapes:{root}", "train")
    assert again.samples[0].mask.name.endswith("_labelTrainIds.png")
    np.testing.assert_array_equal(again.load(0)[1], mask)


def test_cityscapes_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="has no leftImg8bit/"):
        open_dataset(f"cityscapes:{tmp_path}", "val")
    root = make_cityscapes(tmp_path / "cs")
    bad = next((root / "gtFine" / "val").rglob("*_labelIds.png"))
    cv2.imwrite(str(bad), np.full((64, 128), 40, np.uint8))  # 40 is no Cityscapes label id
    dataset = open_dataset(f"cityscapes:{root}", "val")
    with pytest.raises(DataError, match=r"label values \[40\] that cityscapes/val does not define"):
        for index in range(len(dataset)):
            dataset.load(index)


def folder_with_any_labels(root: Path, colour: bool = False):
    """Three classes (background, crop, weed), images *_rgb.png, masks *_label.png (ids, 255 void) or colours."""
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    palette = {0: (0, 0, 0), 1: (0, 200, 0), 2: (200, 0, 200)}
    rng = np.random.default_rng(1)
    for index in range(3):
        ids = np.zeros((40, 60), np.uint8)
        ids[10:30, 5:25] = 1
        ids[15:25, 35:50] = 2
        ids[0, :5] = 255
        image = np.clip(rng.normal(100, 30, (40, 60, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(images / f"field{index}_rgb.png"), image)
        if colour:
            rgb = np.array([palette.get(v, (255, 255, 255)) for v in range(256)], np.uint8)[ids]
            cv2.imwrite(str(masks / f"field{index}_label.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        else:
            cv2.imwrite(str(masks / f"field{index}_label.png"), ids)
    classes = root / "classes.txt"
    classes.write_text("background 0 0 0\ncrop 0 200 0\nweed 200 0 200\n")
    return images, masks, classes


def test_folder_dataset_with_its_own_classes_and_suffixes(tmp_path):
    images, masks, classes = folder_with_any_labels(tmp_path)
    spec = f"folder:{images}:{masks}:classes={classes}:image_suffix=_rgb:mask_suffix=_label"
    dataset = open_dataset(spec, "val")
    assert dataset.label_set.classes == ("background", "crop", "weed") and len(dataset) == 3
    _, mask = dataset.load(0)
    assert set(np.unique(mask).tolist()) == {0, 1, 2, 255}
    with pytest.raises(UsageError, match="unknown folder dataset option 'suffix=x'"):
        open_dataset(f"folder:{images}:{masks}:suffix=x", "val")
    # without suffixes the stems do not pair: the error names the image
    with pytest.raises(DataError, match="has no mask"):
        open_dataset(f"folder:{images}:{masks}:classes={classes}", "val")


def test_folder_dataset_with_colour_masks_through_the_palette(tmp_path):
    images, masks, classes = folder_with_any_labels(tmp_path, colour=True)
    spec = f"folder:{images}:{masks}:classes={classes}:image_suffix=_rgb:mask_suffix=_label:masks=colour"
    with pytest.raises(DataError, match=r"colours \(255, 255, 255\)"):  # the void colour is not a class
        open_dataset(spec, "val").load(0)
    _, mask = open_dataset(spec + ":void_colour=255,255,255", "val").load(0)
    assert set(np.unique(mask).tolist()) == {0, 1, 2, 255}
    assert (mask[10:30, 5:25] == 1).all() and (mask[15:25, 35:50] == 2).all()


def test_mask_value_outside_the_classes_is_one_line(tmp_path, capsys):
    images, masks, classes = folder_with_any_labels(tmp_path)
    ids = cv2.imread(str(masks / "field0_label.png"), cv2.IMREAD_UNCHANGED)
    ids[5, 5], ids[6, 6] = 7, 9
    cv2.imwrite(str(masks / "field0_label.png"), ids)
    spec = f"folder:{images}:{masks}:classes={classes}:image_suffix=_rgb:mask_suffix=_label"
    code, _, err = run_cli(["calib", "--model", "fcn-resnet18", "--data", spec, "--count", "3", "--out",
                            str(tmp_path / "c.json")], capsys)
    assert_one_line_error(code, err, "label values [7, 9] outside 0..2")


def test_model_classes_must_match_the_dataset(tmp_path):
    from edgeseg.data.palettes import CAMVID

    images, masks, classes = folder_with_any_labels(tmp_path)
    spec = f"folder:{images}:{masks}:classes={classes}:image_suffix=_rgb:mask_suffix=_label"
    with pytest.raises(DataError, match="the model predicts 11 classes but folder:images has 3"):
        open_dataset(spec, "val", label_set=CAMVID)


def test_classes_option_names_a_folder_datasets_classes(tmp_path, capsys):
    import json

    from tests.test_card import tiny_foreign_onnx, write_card

    images, masks, classes = folder_with_any_labels(tmp_path)
    spec = f"folder:{images}:{masks}:image_suffix=_rgb:mask_suffix=_label"
    model = tiny_foreign_onnx(tmp_path / "three.onnx", classes=3, size=(40, 60))
    card = write_card(tmp_path / "three.toml", classes=["a", "b", "c"], input_size=[40, 60])
    report = tmp_path / "eval.json"
    code, _, err = run_cli(["eval", "--model", str(model), "--card", str(card), "--data", spec, "--classes",
                            str(classes), "--json", str(report)], capsys)
    assert code == 0, err
    assert list(json.loads(report.read_text())["per_class_iou"]) == ["background", "crop", "weed"]
    five = tiny_foreign_onnx(tmp_path / "five.onnx", classes=5, size=(40, 60))
    card5 = write_card(tmp_path / "five.toml", input_size=[40, 60])
    code, _, err = run_cli(["eval", "--model", str(five), "--card", str(card5), "--data", spec, "--classes",
                            str(classes)], capsys)
    assert_one_line_error(code, err, "the model predicts 5 classes but folder:images has 3")
    code, _, err = run_cli(["eval", "--model", "fcn-resnet18", "--data", "camvid", "--classes", str(classes)], capsys)
    assert_one_line_error(code, err, "--classes names the classes of a folder dataset")
