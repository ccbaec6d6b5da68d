"""A card's `fit` (resize, letterbox, crop) as evaluation and calibration apply it: the model sees the frame the
way it is deployed, and its output is mapped back onto the part of the mask it showed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeseg.data.datasets import SegmentationDataset, Sample
from edgeseg.data.palettes import LabelSet
from edgeseg.evaluate import evaluate
from edgeseg.fit import Box, fit_frame, output_content, plan_fit, seen_region
from edgeseg.zoo.contract import Preprocessing


def test_letterbox_and_crop_geometry():
    image = np.full((40, 80, 3), 200, np.uint8)
    contract = Preprocessing(input_size=(40, 40), mean=(0.0, 0.5, 1.0), std=(1.0, 1.0, 1.0), pad="mean")
    placement = plan_fit(image.shape[:2], contract, "letterbox")
    assert (placement.content.top, placement.content.left, placement.content.height, placement.content.width) == \
        (10, 0, 20, 40) and placement.region == Box(0, 0, 40, 80)
    boxed = fit_frame(image, placement, contract, "RGB")[0]
    # The pad is exactly the mean (0 after normalising); the content is the image, normalised.
    assert (boxed[:, :10] == 0).all() and (boxed[:, 30:] == 0).all()
    assert np.allclose(boxed[:, 10:30], (200 / 255 - np.array([0.0, 0.5, 1.0]))[:, None, None])
    crop = plan_fit(image.shape[:2], contract, "crop")
    assert crop.content == Box(0, 0, 40, 40) and crop.region == Box(0, 20, 40, 40)
    logits = np.zeros((1, 3, 20, 20))  # an output at half the input size
    assert output_content(logits, placement).shape == (1, 3, 10, 20)
    assert output_content(logits, crop).shape == (1, 3, 20, 20)
    assert seen_region(np.zeros((40, 80)), crop).shape == (40, 40)


def colour_bands(tmp_path):
    """Images whose mask is the argmax of their RGB channels: horizontal red/green/blue bands, 40x80."""
    samples = []
    for index in range(2):
        mask = np.zeros((40, 80), np.uint8)
        mask[13 + index:27] = 1
        mask[27:] = 2
        image = np.eye(3, dtype=np.uint8)[mask] * 255
        image_path, mask_path = tmp_path / f"{index}.png", tmp_path / f"{index}_mask.png"
        cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(mask_path), mask)
        samples.append(Sample(image_path, mask_path))
    return SegmentationDataset("bands", samples, LabelSet("rgb", ("r", "g", "b"), ((255, 0, 0),) * 3))


@pytest.mark.parametrize("fit", ["letterbox", "crop"])
def test_evaluation_feeds_fitted_frames_and_maps_the_output_back(tmp_path, fit):
    dataset = colour_bands(tmp_path)
    contract = Preprocessing(input_size=(40, 40), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), classes=("r", "g", "b"),
                             fit=fit, pad="mean")  # a flat pad, so the test can see exactly where it is
    seen = []

    def colour_model(batch):  # the "model": logits are the image's own channels
        seen.append(batch)
        return batch

    scores = evaluate(colour_model, dataset, contract)
    assert scores.miou > 0.97  # the output lands on the right rows of the mask
    if fit == "letterbox":  # the model saw the pad (mean colour: zeros) above and below the scaled image
        assert np.abs(seen[0][0, :, :10]).max() == 0 and np.abs(seen[0][0, :, 30:]).max() == 0
    else:  # the model saw the centre 40x40, at full scale
        assert seen[0].shape == (1, 3, 40, 40) and np.abs(seen[0][0, :, :10]).max() > 0


def test_a_reflect_pad_is_the_image_mirrored_as_the_demo_fills_it():
    image = np.arange(20 * 40 * 3, dtype=np.uint8).reshape(20, 40, 3)
    contract = Preprocessing(input_size=(40, 40), mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3, pad="reflect")
    placement = plan_fit(image.shape[:2], contract, "letterbox")
    fitted = fit_frame(image, placement, contract, "RGB")[0].transpose(1, 2, 0)  # back to HxWx3 pixel values
    top, height = placement.content.top, placement.content.height
    assert (top, height) == (10, 20) and np.array_equal(fitted[top:top + height], image)
    assert np.array_equal(fitted[top - 1], image[1]) and np.array_equal(fitted[top + height], image[-2])


def test_the_demo_and_evaluation_fit_an_image_identically():
    """One geometry: a BGR frame through the demo's path and the same image in RGB through evaluation's path give
    the same model input."""
    rgb = np.random.default_rng(0).integers(0, 256, (37, 91, 3), dtype=np.uint8)
    for fit, pad in (("letterbox", "reflect"), ("letterbox", "mean"), ("crop", "reflect")):
        contract = Preprocessing(input_size=(32, 48), fit=fit, pad=pad)
        placement = plan_fit(rgb.shape[:2], contract)
        assert np.array_equal(fit_frame(rgb[..., ::-1].copy(), placement, contract),
                              fit_frame(rgb, placement, contract, "RGB"))
