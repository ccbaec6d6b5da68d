"""The fast pre- and post-processing paths give the values of the plain numpy definitions they replace."""

import numpy as np
import pytest

import edgeseg.runners.labels as labels_module
import edgeseg.zoo.contract as contract
from edgeseg.errors import UsageError
from edgeseg.runners.labels import labels_from_logits
from edgeseg.zoo.contract import Preprocessing


def numpy_normalize(rgb: np.ndarray, mean, std, channel_order: str) -> np.ndarray:
    """The contract's definition, written out: (x/255 - mean) / std in the model's channel order, NCHW."""
    image = rgb if channel_order == "RGB" else rgb[..., ::-1]
    scaled = (image.astype(np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)
    return scaled.transpose(2, 0, 1)[None].astype(np.float32)


@pytest.mark.parametrize("channel_order", ["RGB", "BGR"])
def test_normalize_matches_definition_for_both_channel_orders(channel_order):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    # Distinct per-channel values, so a swapped mean or std shows up.
    pre = Preprocessing((37, 53), mean=(0.1, 0.5, 0.9), std=(0.2, 0.4, 0.8), channel_order=channel_order)
    expected = numpy_normalize(rgb, pre.mean, pre.std, channel_order)

    from_rgb = pre.normalize(rgb)
    from_bgr = pre.normalize_bgr(np.ascontiguousarray(rgb[..., ::-1]))

    assert from_rgb.shape == from_bgr.shape == (1, 3, 37, 53)
    assert from_rgb.dtype == from_bgr.dtype == np.float32
    np.testing.assert_allclose(from_rgb, expected, atol=2e-6)
    np.testing.assert_allclose(from_bgr, expected, atol=2e-6)


def test_normalize_numpy_fallback_gives_the_same_values(monkeypatch):
    rgb = np.random.default_rng(1).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    pre = Preprocessing((8, 12))
    fast = pre.normalize(rgb)
    monkeypatch.setattr(contract, "_BLOB_WITH_PARAMS", None)  # as on an OpenCV older than 4.8
    np.testing.assert_allclose(pre.normalize(rgb), fast, atol=2e-6)


def test_normalize_rejects_a_grey_image():
    with pytest.raises(UsageError, match="HxWx3"):
        Preprocessing((8, 12)).normalize(np.zeros((8, 12), np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_labels_match_numpy_argmax_including_ties(dtype):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(1, 11, 30, 40)).astype(dtype)
    logits[0, 3, :5] = logits[0, 7, :5] = 50  # ties: both paths must pick the first class
    expected = logits[0].argmax(axis=0).astype(np.uint8)

    labels = labels_from_logits(logits)

    assert labels.dtype == np.uint8 and labels.shape == (30, 40)
    np.testing.assert_array_equal(labels, expected)
    assert (labels[:5] == 3).all()


def test_labels_use_onnx_runtime_when_present_and_numpy_otherwise(monkeypatch):
    logits = np.random.default_rng(3).normal(size=(1, 5, 6, 7)).astype(np.float32)
    assert labels_module._argmax_session(np.float32) is not None  # onnxruntime is installed here
    monkeypatch.setattr(labels_module, "_sessions", {"float32": None})
    np.testing.assert_array_equal(labels_from_logits(logits), logits[0].argmax(axis=0))


def test_labels_reject_a_batch_of_two():
    with pytest.raises(ValueError, match="batch 2"):
        labels_from_logits(np.zeros((2, 3, 4, 4), np.float32))
