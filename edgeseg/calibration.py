"""Calibration sets: which real images INT8 calibration sees, written as a manifest (paths + sha256), never images.

Strategies:
  random          seeded uniform sample
  class-balanced  greedy pick favouring images that show rare classes (pole, sign, pedestrian, bicyclist), so
                  their activation ranges are seen; needs masks
  sequence-spread evenly spaced frames from every video sequence (CamVid names carry the sequence), so no
                  single drive dominates
Images are calibrated at the deployed resolution (the model's input size) unless told otherwise.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from edgeseg.data.datasets import IGNORE, IMAGE_SUFFIXES, open_dataset, read_rgb, resolve_data_root
from edgeseg.data.transforms import resize_pair
from edgeseg.errors import DataError, UsageError
from edgeseg.fit import fit_frame, plan_fit
from edgeseg.manifest import Artifact, now_utc, read_json, sha256_file, write_json
from edgeseg.progress import track
from edgeseg.zoo.contract import Preprocessing

log = logging.getLogger(__name__)

STRATEGIES = ("random", "class-balanced", "sequence-spread")
CALIBRATION_FORMAT = "edgeseg-calibration"
MIN_RECOMMENDED_IMAGES = 100


@dataclass(frozen=True)
class CalibConfig:
    dataset: str = "camvid"  # a dataset name, or ignored when `images_dir` is set
    split: str = "train"
    data_root: str | None = None
    images_dir: str | None = None  # a plain folder of images (no masks): random or sequence-spread only
    count: int = 200
    strategy: str = "class-balanced"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown calibration strategy {self.strategy!r}; choose {', '.join(STRATEGIES)}")
        if self.count < 1:
            raise UsageError("--count must be at least 1")
        if self.images_dir and self.strategy == "class-balanced":
            raise UsageError("class-balanced calibration needs masks; use --strategy random or sequence-spread "
                             "with a plain image folder")


def sequence_of(path: Path) -> str:
    """CamVid names carry the drive: 0001TP_008550.png, Seq05VD_f02370.png -> 0001TP, Seq05VD."""
    return path.stem.split("_")[0]


def _pick_random(paths: list[Path], count: int, rng: np.random.Generator) -> list[int]:
    return sorted(rng.choice(len(paths), size=count, replace=False).tolist())


def _pick_sequence_spread(paths: list[Path], count: int) -> list[int]:
    by_sequence: dict[str, list[int]] = {}
    for index, path in enumerate(paths):
        by_sequence.setdefault(sequence_of(path), []).append(index)
    picked: list[int] = []
    for members in by_sequence.values():
        share = max(1, round(count * len(members) / len(paths)))
        positions = np.linspace(0, len(members) - 1, num=min(share, len(members))).round().astype(int)
        picked.extend(members[p] for p in positions)
    return sorted(set(picked))[:count]


def _pick_class_balanced(presence: np.ndarray, count: int, rng: np.random.Generator) -> list[int]:
    """Greedy cover: each pick takes the image whose classes are least covered so far, weighting each class by
    1/(images picked that show it + 1); random tie-breaking."""
    covered = np.zeros(presence.shape[1])
    available = np.ones(presence.shape[0], dtype=bool)
    rarity = 1.0 / np.maximum(presence.mean(axis=0), 1e-3)
    picked = []
    for _ in range(count):
        gains = (presence * (rarity / (covered + 1))).sum(axis=1) + rng.random(presence.shape[0]) * 1e-6
        gains[~available] = -np.inf
        best = int(np.argmax(gains))
        picked.append(best)
        available[best] = False
        covered += presence[best]
    return sorted(picked)


def _check_one_size(paths: list[Path]) -> tuple[int, int]:
    sizes: dict[tuple[int, int], Path] = {}
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DataError(f"calibration image {path} cannot be read (corrupt or not an image)")
        sizes.setdefault(image.shape[:2], path)
        if len(sizes) > 1:
            (size_a, path_a), (size_b, path_b) = list(sizes.items())[:2]
            raise DataError(f"calibration images have mixed sizes ({size_a[0]}x{size_a[1]} in {path_a}, "
                            f"{size_b[0]}x{size_b[1]} in {path_b}); calibrate on frames like the camera's")
    return next(iter(sizes))


def make_calibration_set(preprocessing: Preprocessing, cfg: CalibConfig, out_path: str | os.PathLike) -> Artifact:
    """Sample calibration images and write their manifest to `out_path` (JSON)."""
    rng = np.random.default_rng(cfg.seed)
    class_coverage = None
    if cfg.images_dir:
        root = Path(cfg.images_dir).expanduser()
        if not root.is_dir():
            raise DataError(f"calibration folder {root} does not exist")
        try:
            paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except PermissionError as exc:
            raise DataError(f"calibration folder {root} cannot be read: {exc.strerror}") from exc
        if not paths:
            raise DataError(f"calibration folder {root} has no images ({', '.join(IMAGE_SUFFIXES)})")
        source = {"images_dir": str(root)}
    elif ":" in cfg.dataset:  # cityscapes:PATH, folder:IMAGES:MASKS: the spec names its own folders
        dataset = open_dataset(cfg.dataset, cfg.split, cfg.data_root, label_set=preprocessing, check_classes=False)
        paths = [sample.image.resolve() for sample in dataset.samples]
        root = Path("/")
        source = {"dataset": cfg.dataset, "split": cfg.split, "absolute_paths": True}
    else:
        root = resolve_data_root(cfg.data_root)
        dataset = open_dataset(cfg.dataset, cfg.split, root, label_set=preprocessing, check_classes=False)
        paths = [sample.image for sample in dataset.samples]
        source = {"dataset": cfg.dataset, "split": cfg.split}
    if cfg.count > len(paths):
        raise UsageError(f"asked for {cfg.count} calibration images but only {len(paths)} are available")

    if cfg.strategy == "random":
        indices = _pick_random(paths, cfg.count, rng)
    elif cfg.strategy == "sequence-spread":
        indices = _pick_sequence_spread(paths, cfg.count)
    else:
        presence = np.zeros((len(paths), dataset.label_set.num_classes))
        for index in track(range(len(paths)), "calibration: classes per image", len(paths), logger=log):
            mask = dataset.read_mask(dataset.samples[index].mask)
            counts = np.bincount(mask[mask != IGNORE].ravel(), minlength=presence.shape[1])[: presence.shape[1]]
            presence[index] = counts >= 0.001 * mask.size  # a class "shows" from 0.1% of the frame
        indices = _pick_class_balanced(presence, cfg.count, rng)
        class_coverage = {name: int(presence[indices, c].sum()) for c, name in enumerate(dataset.label_set.classes)}
    chosen = [paths[i] for i in indices]
    log.debug("calibration: %d of %d images (%s, seed %d)", len(chosen), len(paths), cfg.strategy, cfg.seed)
    image_size = _check_one_size(chosen)
    if len(chosen) < MIN_RECOMMENDED_IMAGES:
        warnings.warn(f"only {len(chosen)} calibration images; {MIN_RECOMMENDED_IMAGES}+ give steadier INT8 ranges",
                      stacklevel=2)

    manifest = {
        "format": CALIBRATION_FORMAT,
        "schema": 1,
        "created": now_utc(),
        "source": source,
        "strategy": cfg.strategy,
        "seed": cfg.seed,
        "count": len(chosen),
        "image_size": list(image_size),
        "preprocessing": preprocessing.to_dict(),
        "class_coverage": class_coverage,
        # Paths are relative to the data root (or image folder) so the manifest moves between machines.
        "images": [{"path": str(p.relative_to(root)), "sha256": sha256_file(p)}
                   for p in track(chosen, "calibration: hashing images", len(chosen), logger=log)],
    }
    write_json(out_path, manifest)
    return Artifact(Path(out_path), manifest)


def load_calibration_set(path: str | os.PathLike, data_root: str | os.PathLike | None = None,
                         verify: bool = True) -> tuple[dict, list[Path]]:
    """Read a manifest and resolve its images; refuse it if any image changed since it was written."""
    manifest = read_json(path)
    if manifest.get("format") != CALIBRATION_FORMAT:
        raise UsageError(f"{path} is not an edgeseg calibration manifest")
    if "images_dir" in manifest["source"]:  # a plain image folder, recorded where it was sampled
        root = Path(manifest["source"]["images_dir"])
    elif manifest["source"].get("absolute_paths"):  # a dataset spec naming its own folders
        root = Path("/")
    else:
        root = resolve_data_root(data_root)
    paths = []
    for entry in manifest["images"]:
        image = root / entry["path"]
        if not image.is_file():
            raise DataError(f"calibration image {image} is missing (manifest {path}); set EDGESEG_DATA or --data-root")
        if verify and sha256_file(image) != entry["sha256"]:
            raise DataError(f"calibration image {image} changed since {path} was written (sha256 mismatch); "
                            f"regenerate the set with 'edgeseg calib'")
        paths.append(image)
    return manifest, paths


def calibration_batches(paths: list[Path], preprocessing: Preprocessing) -> Iterator[np.ndarray]:
    """Yield 1x3xHxW float32 batches at the deployed resolution."""
    fit = getattr(preprocessing, "fit", "resize")
    for path in paths:
        if fit != "resize":  # calibrate on frames fitted the way the deployed model sees them
            image = read_rgb(path)
            yield fit_frame(image, plan_fit(image.shape[:2], preprocessing), preprocessing, "RGB")
        else:
            yield preprocessing.normalize(resize_pair(read_rgb(path), None, preprocessing.input_size)[0])
