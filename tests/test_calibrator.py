"""The pure part of TensorRT's legacy INT8 calibrator: batches, cache, and the exceptions TensorRT would swallow.

`calibrate_like_tensorrt` drives a feed the way TensorRT's builder drives IInt8EntropyCalibrator2, including
what it does with a Python exception raised in a callback: nothing (it is lost, the callback counts as having
returned None). The feed must keep such an exception and raise it after the "build".
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from edgeseg.calibration import CalibConfig, make_calibration_set
from edgeseg.engine.calibrator import CalibrationError, CalibrationFeed, feed_from_manifest, make_trt_calibrator
from edgeseg.errors import DataError, MissingDependency
from edgeseg.zoo.contract import Preprocessing
from tests.log_lines import captured

SHAPE = (2, 3, 8, 8)


def images(count: int, shape=(1, 3, 8, 8)):
    rng = np.random.default_rng(0)
    return [rng.random(shape, dtype=np.float32) for _ in range(count)]


def calibrate_like_tensorrt(feed: CalibrationFeed) -> list[np.ndarray]:
    """TensorRT's calibration loop over the calibrator callbacks (the trt subclass forwards to these 1:1);
    returns the batches it received (copied, as the GPU copy would be)."""
    received: list[np.ndarray] = []

    def swallow(callback, *args):  # TensorRT: a Python exception in a callback is lost
        try:
            return callback(*args)
        except Exception:
            return None

    if swallow(feed.read_calibration_cache):
        return received  # a cache: no batch is asked for
    while True:
        pointers = swallow(feed.get_batch, lambda batch: received.append(batch.copy()) or [len(received)])
        if pointers is None:
            break
    swallow(feed.write_calibration_cache, b"TRT-EntropyCalibration2 cache")
    return received


def test_batches_are_regrouped_to_the_engine_batch_size(tmp_path):
    source = images(3) + [np.concatenate(images(2))]  # any source batch size; 5 images in all
    feed = CalibrationFeed(lambda: source, SHAPE, tmp_path / "model.calibration.cache")
    received = calibrate_like_tensorrt(feed)
    assert [batch.shape for batch in received] == [SHAPE, SHAPE]  # the fifth image makes no full batch
    assert all(batch.dtype == np.float32 and batch.flags.c_contiguous for batch in received)
    np.testing.assert_array_equal(received[0][1], source[1][0])
    summary = feed.finish()
    assert summary == {"batches": 2, "images": 4, "batch_size": 2, "cache_read": False, "cache_written": True}
    assert (tmp_path / "model.calibration.cache").read_bytes() == b"TRT-EntropyCalibration2 cache"


def test_callback_exception_is_kept_and_raised_after_the_build(tmp_path):
    def broken_source():
        yield from images(2)
        raise OSError("camera folder vanished")

    feed = CalibrationFeed(broken_source, SHAPE, tmp_path / "cache")
    received = calibrate_like_tensorrt(feed)  # TensorRT carries on: the error would be lost
    assert len(received) == 1
    assert not (tmp_path / "cache").exists()  # after the error every callback stops, the cache write too
    with pytest.raises(CalibrationError, match="get_batch: OSError: camera folder vanished") as raised:
        feed.finish()
    assert isinstance(raised.value.__cause__, OSError)


def test_an_edgeseg_error_in_a_callback_is_raised_as_it_was(tmp_path):
    feed = CalibrationFeed(lambda: images(2, shape=(1, 3, 16, 16)), SHAPE, None)
    calibrate_like_tensorrt(feed)
    with pytest.raises(DataError, match="is 3x16x16 but the engine calibrates at 3x8x8") as raised:
        feed.finish()
    assert raised.value is feed.error


def test_only_the_first_exception_is_kept():
    feed = CalibrationFeed(lambda: images(4), SHAPE, None)
    first, second = ValueError("first"), ValueError("second")
    assert feed.guarded("get_batch", lambda: (_ for _ in ()).throw(first), "failed") == "failed"
    calls = []
    assert feed.guarded("get_batch", lambda: calls.append(1), "failed") == "failed"  # not even run
    feed.guarded("write_calibration_cache", lambda: (_ for _ in ()).throw(second))
    assert feed.error is first and calls == []


def test_zero_batches_fail_the_build():
    feed = CalibrationFeed(lambda: images(1), SHAPE, None)  # one image, batch of two
    assert calibrate_like_tensorrt(feed) == []
    with pytest.raises(CalibrationError, match="consumed no batches"):
        feed.finish()
    empty = CalibrationFeed(lambda: [], SHAPE, None)
    calibrate_like_tensorrt(empty)
    with pytest.raises(CalibrationError, match="consumed no batches"):
        empty.finish()


def test_a_cache_skips_the_images_entirely(tmp_path):
    cache = tmp_path / "model.calibration.cache"
    cache.write_bytes(b"TRT-8502-EntropyCalibration2\npixel_values: 3c000000\n")
    opened = []
    lines = []
    feed = CalibrationFeed(lambda: opened.append(1) or images(4), SHAPE, cache)
    with captured("edgeseg.engine.calibrator", lines.append):
        assert calibrate_like_tensorrt(feed) == []
    assert opened == []  # the images were never read
    assert feed.finish()["cache_read"] and any("calibration cache" in line for line in lines)


def test_an_empty_cache_file_is_no_cache(tmp_path):
    cache = tmp_path / "model.calibration.cache"
    cache.write_bytes(b"")
    feed = CalibrationFeed(lambda: images(2), SHAPE, cache)
    assert feed.read_calibration_cache() is None
    assert len(calibrate_like_tensorrt(feed)) == 1 and feed.finish()["batches"] == 1


def test_feed_from_a_real_calibration_manifest(tmp_path, tiny_camvid):
    preprocessing = Preprocessing(input_size=(32, 40), classes=("a", "b"), palette=((0, 0, 0), (255, 255, 255)))
    manifest = tmp_path / "calibration.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "only 3 calibration images": expected for a tiny set
        make_calibration_set(preprocessing, CalibConfig(data_root=str(tiny_camvid), count=3, strategy="random"),
                             manifest)
    lines = []
    feed = feed_from_manifest(manifest, tiny_camvid, preprocessing, (1, 3, 32, 40), tmp_path / "cache")
    with captured("edgeseg.engine.calibrator", lines.append):
        received = calibrate_like_tensorrt(feed)
    assert [batch.shape for batch in received] == [(1, 3, 32, 40)] * 3
    assert feed.finish()["images"] == 3
    assert any("calibrating on 3 images" in line for line in lines)

    # images that are gone: the DataError raised inside get_batch surfaces after the build
    missing = feed_from_manifest(manifest, tmp_path / "no-data", preprocessing, (1, 3, 32, 40), None)
    calibrate_like_tensorrt(missing)
    with pytest.raises(DataError, match="no-data .*does not exist"):
        missing.finish()

    with pytest.raises(DataError, match="calibrate at the size the engine runs"):
        feed_from_manifest(manifest, tiny_camvid, preprocessing, (1, 3, 64, 64), None)


def test_the_tensorrt_calibrator_needs_the_trt_extra():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here")
    feed = CalibrationFeed(lambda: images(2), SHAPE, None)
    with pytest.raises(MissingDependency, match=r"edgeseg\[trt\]"):
        make_trt_calibrator(feed)
