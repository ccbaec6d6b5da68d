"""INT8 calibration inside TensorRT (the legacy IInt8EntropyCalibrator2 path), for TensorRT 8.x and 10 graphs
without Q/DQ. Explicit Q/DQ from 'edgeseg quantize' is the default; this is used only when asked for or when
the chosen ONNX has no Q/DQ.

TensorRT calls the calibrator's callbacks from C++ and swallows any Python exception raised in them: the build
then fails later with an unrelated message, or worse, calibrates on fewer images than meant. So the work is in
`CalibrationFeed`, a plain class (no TensorRT, testable anywhere) that serves batches, reads and writes the
cache, and KEEPS the first exception a callback raised; `finish()` re-raises it after the build, and fails a
calibration that consumed no batch at all. `make_trt_calibrator` wraps a feed in the thin
trt.IInt8EntropyCalibrator2 subclass, which only copies each batch to the GPU with pycuda.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator  # Any: TensorRT objects (lazy import)

import numpy as np

from edgeseg.errors import DataError, EdgesegError, first_line
from edgeseg.lazy import lazy_import
from edgeseg.manifest import atomic_path

if TYPE_CHECKING:
    from edgeseg.zoo.contract import Preprocessing

_log = logging.getLogger(__name__)


class CalibrationError(EdgesegError):
    """INT8 calibration failed inside the TensorRT build."""


class CalibrationFeed:
    """Batches of calibration images for TensorRT, with the exception keeping TensorRT's callbacks need.

    `batches` is called at most once, on the first batch request, so a build that reads an existing cache never
    needs the images. It yields NCHW float32 arrays of any batch size; they are regrouped into batches of
    exactly `shape` (TensorRT takes a fixed batch size), and a last partial batch is dropped.
    """

    def __init__(self, batches: Callable[[], Iterable[np.ndarray]], shape: tuple[int, ...],
                 cache_path: str | os.PathLike | None = None) -> None:
        if len(shape) != 4 or min(shape) < 1:
            raise ValueError(f"calibration shape must be four positive numbers NCHW, got {shape}")
        self.shape = tuple(int(dim) for dim in shape)
        self.cache_path = Path(cache_path) if cache_path else None
        self._open_batches = batches
        self._images: Iterator[np.ndarray] | None = None
        self.batches_served = 0
        self.images_served = 0
        self.cache_read = False
        self.cache_written = False
        self.error: BaseException | None = None
        self.error_callback: str | None = None

    @property
    def batch_size(self) -> int:
        return self.shape[0]

    # --- the work behind each callback ---------------------------------------------------------------------

    def next_batch(self) -> np.ndarray | None:
        """The next N x C x H x W float32 batch, or None when the images are used up."""
        if self._images is None:
            self._images = _single_images(iter(self._open_batches()))
        collected = []
        for image in self._images:
            if image.shape != self.shape[1:]:
                raise DataError(f"calibration image {self.images_served + len(collected) + 1} is "
                                f"{'x'.join(map(str, image.shape))} but the engine calibrates at "
                                f"{'x'.join(map(str, self.shape[1:]))} (CxHxW); recreate the calibration set "
                                "at the model's input size")
            collected.append(image)
            if len(collected) == self.batch_size:
                break
        if len(collected) < self.batch_size:  # a partial last batch cannot be given to TensorRT
            return None
        self.batches_served += 1
        self.images_served += len(collected)
        return np.ascontiguousarray(np.stack(collected), dtype=np.float32)

    def read_cache(self) -> bytes | None:
        """The calibration cache, when one exists: TensorRT then skips calibration (no image is read)."""
        if self.cache_path is None or not self.cache_path.is_file():
            return None
        data = self.cache_path.read_bytes()
        if not data:
            return None
        self.cache_read = True
        _log.info(f"reading the INT8 calibration cache {self.cache_path.name}; delete it to calibrate again")
        return data

    def write_cache(self, data: bytes) -> None:
        if self.cache_path is None:
            return
        with atomic_path(self.cache_path) as tmp:
            tmp.write_bytes(bytes(data))
        self.cache_written = True
        _log.info(f"wrote the INT8 calibration cache {self.cache_path.name} ({self.batches_served} batches)")

    # --- TensorRT's callbacks, one to one (the trt subclass only adds the copy to the GPU) ------------------

    def get_batch(self, to_device: Callable[[np.ndarray], list[int]]) -> list[int] | None:
        """get_batch: the next batch, copied by `to_device` (which returns the device pointers); None when the
        images are used up or after a kept exception, which ends calibration."""
        def work() -> list[int] | None:
            batch = self.next_batch()
            return None if batch is None else to_device(batch)

        return self.guarded("get_batch", work, None)

    def read_calibration_cache(self) -> bytes | None:
        return self.guarded("read_calibration_cache", self.read_cache, None)

    def write_calibration_cache(self, cache: bytes | memoryview) -> None:
        self.guarded("write_calibration_cache", lambda: self.write_cache(bytes(cache)), None)

    # --- exception keeping ------------------------------------------------------------------------------------

    def guarded(self, callback: str, work: Callable[[], object], failed: object = None) -> object:
        """Run a callback's work; on an exception keep it (the first one) and return `failed` instead, which
        tells TensorRT to stop. After a kept exception every callback returns `failed` at once."""
        if self.error is not None:
            return failed
        try:
            return work()
        except BaseException as exc:  # noqa: BLE001 - anything raised here would be swallowed by TensorRT
            self.error, self.error_callback = exc, callback
            return failed

    def finish(self) -> dict:
        """After the build: re-raise a kept callback exception, and fail a calibration that saw no batch."""
        if self.error is not None:
            if isinstance(self.error, EdgesegError) or not isinstance(self.error, Exception):
                raise self.error  # a clear edgeseg error as it was; Ctrl-C stays an interrupt
            raise CalibrationError(f"INT8 calibration failed in {self.error_callback}: "
                                   f"{type(self.error).__name__}: {first_line(self.error)}") from self.error
        if self.batches_served == 0 and not self.cache_read:
            raise CalibrationError(f"INT8 calibration consumed no batches (each needs {self.batch_size} images at "
                                   f"{'x'.join(map(str, self.shape[1:]))}); check the calibration set lists images "
                                   "and that they are under the data root (--data-root or EDGESEG_DATA)")
        return {"batches": self.batches_served, "images": self.images_served, "batch_size": self.batch_size,
                "cache_read": self.cache_read, "cache_written": self.cache_written}


def _single_images(batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Split NCHW arrays into CHW images, so any source batch size can be regrouped."""
    for batch in batches:
        array = np.asarray(batch)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise DataError(f"a calibration batch must be NCHW, got shape {array.shape}")
        yield from array


def feed_from_manifest(manifest_path: str | os.PathLike, data_root: str | os.PathLike | None,
                       preprocessing: Preprocessing,
                       shape: tuple[int, ...], cache_path: str | os.PathLike | None) -> CalibrationFeed:
    """A feed over the images of an edgeseg calibration manifest, preprocessed by the model's contract.
    The manifest and images are read only when TensorRT asks for the first batch (not at all with a cache)."""
    from edgeseg.calibration import calibration_batches, load_calibration_set

    height, width = shape[2], shape[3]
    if tuple(preprocessing.input_size) != (height, width):
        raise DataError(f"the model's preprocessing resizes to {preprocessing.input_size[0]}x"
                        f"{preprocessing.input_size[1]} but the engine is built for {height}x{width}; "
                        "calibrate at the size the engine runs")

    def batches() -> Iterable[np.ndarray]:
        manifest, paths = load_calibration_set(manifest_path, data_root)
        _log.info(f"calibrating on {len(paths)} images from {Path(manifest_path).name} ({manifest.get('strategy')})")
        return calibration_batches(paths, preprocessing)

    return CalibrationFeed(batches, shape, cache_path)


def make_trt_calibrator(feed: CalibrationFeed) -> Any:
    """A trt.IInt8EntropyCalibrator2 over `feed`. The class is created here because it subclasses a TensorRT
    class; the current CUDA context must be the one the builder uses (see engine.host.primary_context)."""
    trt = lazy_import("tensorrt")
    cuda = lazy_import("pycuda.driver")

    class EntropyCalibrator2(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 trampolines need the explicit base call
            self.feed = feed
            self.device_batch = None

        def get_batch_size(self) -> int:
            return feed.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:  # one device pointer per input, None: done
            return feed.get_batch(lambda batch: self._to_device(batch, len(names)))

        def _to_device(self, batch: np.ndarray, inputs: int) -> list[int]:
            if self.device_batch is None:
                self.device_batch = cuda.mem_alloc(batch.nbytes)
            cuda.memcpy_htod(self.device_batch, batch)
            return [int(self.device_batch)] * inputs  # edgeseg models have one input

        def read_calibration_cache(self) -> bytes | None:
            return feed.read_calibration_cache()

        def write_calibration_cache(self, cache: bytes | memoryview) -> None:
            feed.write_calibration_cache(cache)

    return EntropyCalibrator2()

