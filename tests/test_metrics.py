import numpy as np
import pytest

from edgeseg.metrics import ConfusionMatrix, scores_from_confusion


def test_hand_computed_scores():
    # 3 classes, 8 labelled pixels + 2 ignored.
    target = np.array([0, 0, 0, 1, 1, 2, 2, 2, 255, 255])
    prediction = np.array([0, 0, 1, 1, 1, 2, 0, 2, 2, 1])
    cm = ConfusionMatrix(3)
    cm.update(target, prediction)
    scores = cm.scores()
    assert scores.pixels == 8
    assert scores.pixel_accuracy == pytest.approx(6 / 8)  # correct / labelled
    # IoU = TP / (TP + FP + FN): class 0: 2/(2+1+1); class 1: 2/(2+1+0); class 2: 2/(2+0+1)
    assert scores.per_class_iou == pytest.approx((2 / 4, 2 / 3, 2 / 3))
    assert scores.miou == pytest.approx((2 / 4 + 2 / 3 + 2 / 3) / 3)
    assert scores.per_class_accuracy == pytest.approx((2 / 3, 1.0, 2 / 3))
    assert scores.mean_class_accuracy == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 5, 1000)
    target[::7] = 255
    prediction = rng.integers(0, 5, 1000)
    whole = ConfusionMatrix(5)
    whole.update(target, prediction)
    parts = ConfusionMatrix(5)
    for chunk in range(0, 1000, 137):
        parts.update(target[chunk:chunk + 137], prediction[chunk:chunk + 137])
    np.testing.assert_array_equal(whole.matrix, parts.matrix)


def test_absent_class_is_left_out_of_the_mean():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1]), np.array([0, 0, 1]))
    scores = cm.scores()
    assert np.isnan(scores.per_class_iou[2])
    assert scores.miou == 1.0
    assert scores.to_dict(("a", "b", "c"))["per_class_iou"]["c"] is None


def test_false_positive_of_absent_class_counts():
    # class 2 never in ground truth but predicted once: IoU 0, and it drags the mean down.
    scores = scores_from_confusion(np.array([[1, 0, 1], [0, 2, 0], [0, 0, 0]]))
    assert scores.per_class_iou[2] == 0.0
    assert scores.miou == pytest.approx((0.5 + 1 + 0) / 3)


def test_out_of_range_labels_are_refused():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError):
        cm.update(np.array([3]), np.array([0]))
    with pytest.raises(ValueError):
        cm.update(np.array([0]), np.array([5]))
