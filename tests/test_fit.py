"""A card's `fit` (resize, letterbox, crop) as evaluation and calibration apply it: the model sees the frame the
way it is deployed, and its output is mapped back onto the part of the mask it showed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeseg.data.datasets import SegmentationDataset, Sample
from edgeseg.data.fit import fit_image, output_inner, source_region
from edgeseg.data.palettes import LabelSet
from edgeseg.evaluate import evaluate
from edgeseg.zoo.contract import Preprocessing


def test_letterbox_and_crop_geometry():
    image = np.full((40, 80, 3), 200, np.uint8)
    boxed, placement = fit_image(image, (40, 40), "letterbox", mean=(0.0, 0.5, 1.0))
    assert placement.inner == (10, 0, 20, 40) and placement.source == (0, 0, 40, 80)
    assert (boxed[:10] == (0, 128, 255)).all() and (boxed[10:30] == 200).all() and (boxed[30:] == (0, 128, 255)).all()
    cropped, placement = fit_image(image, (40, 40), "crop")
    assert placement.inner == (0, 0, 40, 40) and placement.source == (0, 20, 40, 40)
    logits = np.zeros((1, 3, 20, 20))  # an output at half the input size
    _, placement = fit_image(image, (40, 40), "letterbox")
    assert output_inner(logits, placement).shape == (1, 3, 10, 20)
    assert source_region(np.zeros((40, 80)), fit_image(image, (40, 40), "crop")[1]).shape == (40, 40)


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
    from edgeseg.data.fit import fit_image

    image = np.arange(20 * 40 * 3, dtype=np.uint8).reshape(20, 40, 3)
    fitted, placement = fit_image(image, (40, 40), "letterbox", pad="reflect")
    top, left, height, width = placement.inner
    assert (top, height) == (10, 20) and np.array_equal(fitted[top:top + height], image)
    assert np.array_equal(fitted[top - 1], image[1]) and np.array_equal(fitted[top + height], image[-2])
