"""edgeseg/bench/compare.py on hand-made label maps: the mIoU drop and per-class change against the reference
row, and the agreement of two sets of predictions, with the expected values worked out by hand."""

import cv2
import numpy as np
import pytest

from edgeseg.bench.compare import accuracy_against, prediction_agreement


def test_accuracy_against_the_reference_is_in_points_positive_when_worse():
    reference = {"miou": 0.45, "per_class_iou": {"road": 0.80, "car": 0.20, "sky": 0.90}}
    row = {"miou": 0.40, "per_class_iou": {"road": 0.75, "car": None, "sky": 0.92, "pole": 0.10}}
    result = accuracy_against(row, reference)
    assert result["miou_drop"] == pytest.approx(5.0)
    change = result["per_class_iou_change"]
    assert set(change) == {"road", "car", "sky", "pole"}
    assert change["road"] == pytest.approx(-5.0) and change["sky"] == pytest.approx(2.0)
    assert change["car"] is None  # no IoU in the row
    assert change["pole"] is None  # no IoU in the reference
    assert accuracy_against(reference, reference)["miou_drop"] == 0.0


def _write_labels(folder, maps: dict[str, list[list[int]]]):
    folder.mkdir()
    for name, labels in maps.items():
        assert cv2.imwrite(str(folder / name), np.array(labels, np.uint8))
    return folder


def test_agreement_scores_the_row_against_the_reference_predictions(tmp_path):
    reference = _write_labels(tmp_path / "reference", {"a.png": [[0, 0], [1, 1]], "b.png": [[0, 0], [0, 0]]})
    row = _write_labels(tmp_path / "row", {"a.png": [[0, 1], [1, 1]], "b.png": [[0, 0], [0, 0]]})
    # Reference as ground truth: class 0 has 6 pixels, 5 predicted 0, 1 predicted 1 -> IoU 5/6;
    # class 1 has 2 pixels, both predicted 1, plus that 1 false positive -> IoU 2/3. 7 of 8 pixels agree.
    result = prediction_agreement(row, reference, num_classes=3)
    assert result == {"agreement_miou": pytest.approx((5 / 6 + 2 / 3) / 2), "pixel_agreement": pytest.approx(7 / 8),
                      "images": 2}  # class 2 appears nowhere: left out of the mean
    identical = prediction_agreement(reference, reference, num_classes=3)
    assert identical["agreement_miou"] == 1.0 and identical["pixel_agreement"] == 1.0


def test_agreement_is_none_unless_both_rows_predicted_the_same_images(tmp_path):
    reference = _write_labels(tmp_path / "reference", {"a.png": [[0, 1]], "b.png": [[1, 1]]})
    fewer = _write_labels(tmp_path / "fewer", {"a.png": [[0, 1]]})
    other_size = _write_labels(tmp_path / "other_size", {"a.png": [[0, 1]], "b.png": [[1], [1]]})
    (tmp_path / "empty").mkdir()
    assert prediction_agreement(fewer, reference, 2) is None
    assert prediction_agreement(other_size, reference, 2) is None
    assert prediction_agreement(tmp_path / "empty", tmp_path / "empty", 2) is None
