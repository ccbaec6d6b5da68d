import cv2
import numpy as np
import pytest

from edgeseg.data.datasets import IGNORE, camvid, drive_of, folder, open_dataset, resolve_data_root
from edgeseg.data.palettes import CAMVID
from edgeseg.data.transforms import AugmentConfig, augment
from edgeseg.errors import DataError, UsageError


def test_camvid_layout_loads_and_maps_void_to_ignore(tiny_camvid):
    dataset = camvid(tiny_camvid, "train")
    assert len(dataset) == 4
    image, mask = dataset.load(0)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert mask.shape == (48, 64)
    assert mask[0, 0] == IGNORE  # stored value 11 (void)
    assert set(np.unique(mask)) <= {0, 1, 3, 8, IGNORE}


def test_subset_keeps_the_label_mapping(tiny_camvid):
    dataset = camvid(tiny_camvid, "train")
    part = dataset.subset([3, 1], name="camvid/train-part")
    assert len(part) == 2 and len(dataset) == 4 and part.name == "camvid/train-part"
    assert part.samples == [dataset.samples[3], dataset.samples[1]]
    assert np.array_equal(part.load(0)[1], dataset.load(3)[1])  # void still maps to IGNORE
    with pytest.raises(DataError, match="no samples"):
        dataset.subset([])


def test_data_root_from_environment(tiny_camvid, monkeypatch):
    monkeypatch.setenv("EDGESEG_DATA", str(tiny_camvid))
    assert len(open_dataset("camvid", "val")) == 4


def test_missing_data_dir_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="does not exist.*EDGESEG_DATA"):
        resolve_data_root(None)


def test_corrupt_png_names_the_file(tiny_camvid):
    broken = tiny_camvid / "CamVid" / "test" / "Seq01_test0001.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    dataset = camvid(tiny_camvid, "test")
    with pytest.raises(DataError, match="Seq01_test0001.png.*cannot be read"):
        dataset.load(1)


def test_mask_of_another_size_is_refused(tiny_camvid):
    mask_path = tiny_camvid / "CamVid" / "testannot" / "Seq01_test0002.png"
    cv2.imwrite(str(mask_path), np.zeros((40, 64), np.uint8))
    with pytest.raises(DataError, match="mask .*Seq01_test0002.png is 40x64 but image .* is 48x64"):
        camvid(tiny_camvid, "test").load(2)


def test_out_of_range_mask_values_are_refused(tiny_camvid):
    mask_path = tiny_camvid / "CamVid" / "testannot" / "Seq01_test0000.png"
    mask = np.zeros((48, 64), np.uint8)
    mask[5, 5] = 42
    cv2.imwrite(str(mask_path), mask)
    with pytest.raises(DataError, match=r"label values \[42\] outside 0..10"):
        camvid(tiny_camvid, "test").load(0)


def test_image_without_mask_is_refused(tiny_camvid):
    (tiny_camvid / "CamVid" / "valannot" / "Seq01_val0003.png").unlink()
    with pytest.raises(DataError, match="Seq01_val0003.png has no mask"):
        camvid(tiny_camvid, "val")


def test_unknown_split_and_dataset(tiny_camvid):
    with pytest.raises(UsageError, match="unknown split"):
        camvid(tiny_camvid, "training")
    with pytest.raises(UsageError, match="unknown dataset"):
        open_dataset("kitti", "test", tiny_camvid)


def test_folder_dataset_pairs_by_stem(tmp_path, tiny_camvid):
    images, masks = tiny_camvid / "CamVid" / "val", tiny_camvid / "CamVid" / "valannot"
    dataset = folder(images, masks, CAMVID, void_value=11)
    assert len(dataset) == 4
    (masks / "extra.png").write_bytes((masks / "Seq01_val0000.png").read_bytes())
    with pytest.raises(DataError, match="extra.png has no image"):
        folder(images, masks, CAMVID)


def test_augment_keeps_labels_and_crop_size():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    mask = rng.choice([0, 3, 8, IGNORE], (48, 64)).astype(np.uint8)
    for _ in range(10):
        out_image, out_mask = augment(image, mask, AugmentConfig(crop_size=(40, 56), scale_range=(0.5, 1.5)), rng)
        assert out_image.shape == (40, 56, 3) and out_mask.shape == (40, 56)
        assert set(np.unique(out_mask)) <= {0, 3, 8, IGNORE}  # nearest-neighbour: no invented labels


@pytest.mark.camvid
def test_real_camvid_splits(real_data):
    sizes = {split: len(camvid(real_data, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 367, "val": 101, "test": 233}
    image, mask = camvid(real_data, "test").load(0)
    assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
    # The drives behind the splits (docs/TRAINING.md): test mixes a trained-on drive with an unseen one.
    drives = {split: sorted({drive_of(s.image) for s in camvid(real_data, split).samples})
              for split in ("train", "val", "test")}
    assert drives == {"train": ["0001TP", "0006R0", "0016E5"], "val": ["0016E5"], "test": ["0001TP", "Seq05VD"]}
