"""TensorRT runner: a serialized engine behind the Runner interface, with pycuda (no torch).

Before TensorRT sees the engine, its sidecar (`<engine>.json`, written by `edgeseg engine build`) is compared
with the live GPU and the installed TensorRT: an engine built elsewhere is refused with a message that says to
rebuild, instead of failing inside TensorRT. The sidecar also carries the preprocessing contract, so the runner
needs no ONNX file. Inputs go through page-locked host buffers with async copies on one stream; with
`use_cuda_graph=True` the copy-infer-copy sequence is captured once per input shape and replayed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from edgeseg.engine.host import live_environment
from edgeseg.engine.sidecar import EngineMismatch, check_engine_compatibility, read_sidecar
from edgeseg.errors import EdgesegError, UsageError
from edgeseg.lazy import lazy_import
from edgeseg.runners.base import TensorSpec
from edgeseg.zoo.contract import Preprocessing

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from pycuda.driver import DeviceAllocation

__all__ = ["TensorRTRunner", "check_engine_compatibility", "EngineMismatch"]

_AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}


def spec_shape(dims: Iterable[int]) -> tuple:
    """Engine dims -> TensorSpec shape: -1 (dynamic) becomes the axis name, as ONNX Runtime reports it."""
    return tuple(_AXIS_NAMES.get(index, "dynamic") if int(dim) < 0 else int(dim) for index, dim in enumerate(dims))


class TensorRTRunner:
    backend = "trt"

    def __init__(self, path: str | Path, use_cuda_graph: bool = False, device_index: int = 0) -> None:
        self.path = Path(path)
        self.sidecar = read_sidecar(self.path)  # first: a missing sidecar is refused before TensorRT is imported
        bundle = str(self.path.parent) if str(self.path.parent) != "" else "."
        check_engine_compatibility(self.sidecar, live_environment(), bundle=bundle)
        if not self.sidecar.get("preprocessing"):
            raise UsageError(f"the sidecar of {self.path.name} has no preprocessing; rebuild with "
                             f"'edgeseg engine build {bundle}'")
        self.preprocessing = Preprocessing.from_dict(self.sidecar["preprocessing"])
        self.output_kind = self.sidecar.get("output", "logits")
        self.use_cuda_graph = use_cuda_graph
        self._trt = lazy_import("tensorrt")
        self._cuda = lazy_import("pycuda.driver")
        self._cuda.init()
        self._context = self._cuda.Device(device_index).retain_primary_context()  # the one TensorRT uses
        self._allocations: list = []
        self._graph = None
        self._shape: tuple | None = None
        self._engine = self._execution = self._stream = None
        try:
            with self._current():
                self._open()
        except BaseException:
            self.close()
            raise

    # --- Runner interface ---------------------------------------------------------------------------------------

    def __enter__(self) -> "TensorRTRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self._input_dtype)
        with self._current():
            self._prepare(tuple(batch.shape))
            np.copyto(self._host_input, batch)
            if self.use_cuda_graph and self._capture_graph():
                self._graph.launch(self._stream)
            else:
                self._enqueue()
            self._stream.synchronize()
            return self._host_output.copy()

    def close(self) -> None:
        if self._context is None:
            return
        with self._current():
            self._graph = None
            for allocation in self._allocations:
                allocation.free()
            self._allocations.clear()
            self._execution = self._engine = self._stream = None
        self._context.detach()  # releases the primary context this runner retained
        self._context = None

    # --- internals -------------------------------------------------------------------------------------------------

    def _current(self) -> AbstractContextManager[None]:
        runner = self

        class _Current:  # push the primary context for the block: any thread may call infer
            def __enter__(self) -> None:
                runner._context.push()

            def __exit__(self, *exc: object) -> None:
                runner._cuda.Context.pop()

        return _Current()

    def _open(self) -> None:
        trt, cuda = self._trt, self._cuda
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise EngineMismatch(f"TensorRT {trt.__version__} could not load {self.path.name} (see its message above); "
                                 f"rebuild it here with 'edgeseg engine build {self.path.parent}'")
        self._execution = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(index) for index in range(self._engine.num_io_tensors)]
        inputs = [name for name in names if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        self._outputs = [name for name in names if name not in inputs]
        if len(inputs) != 1 or not self._outputs:
            raise UsageError(f"{self.path.name} has {len(inputs)} inputs and {len(self._outputs)} outputs; "
                             "edgeseg engines take one image batch")
        self._input = inputs[0]
        self._engine_shape = tuple(self._engine.get_tensor_shape(self._input))
        self._input_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._input)))
        self.input_spec = TensorSpec(self._input, spec_shape(self._engine_shape), self._input_dtype.name)
        self._stream = cuda.Stream()

    def _prepare(self, shape: tuple) -> None:
        """Buffers for this input shape (reallocated, and the CUDA graph recaptured, only when it changes)."""
        if shape == self._shape:
            return
        if len(shape) != len(self._engine_shape) or any(
                fixed >= 0 and fixed != given for fixed, given in zip(self._engine_shape, shape)):
            raise UsageError(f"{self.path.name} takes {'x'.join(map(str, spec_shape(self._engine_shape)))} input, "
                             f"got {'x'.join(map(str, shape))}")
        if any(dim < 0 for dim in self._engine_shape) and not self._execution.set_input_shape(self._input, shape):
            raise UsageError(f"input {'x'.join(map(str, shape))} is outside the engine's optimization profile; "
                             "rebuild with a profile that covers it")
        cuda = self._cuda
        self._graph = None
        for allocation in self._allocations:
            allocation.free()
        self._allocations.clear()
        self._host_input = cuda.pagelocked_empty(shape, self._input_dtype)
        self._device_input = self._allocate(self._host_input.nbytes)
        self._execution.set_tensor_address(self._input, int(self._device_input))
        self._device_outputs = []
        for name in self._outputs:
            out_shape = tuple(self._execution.get_tensor_shape(name))
            dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
            host = cuda.pagelocked_empty(out_shape, dtype)
            device = self._allocate(max(host.nbytes, 1))
            self._execution.set_tensor_address(name, int(device))
            self._device_outputs.append((host, device))
        self._host_output, self._device_output = self._device_outputs[0]  # edgeseg models: logits or labels
        self._shape = shape

    def _allocate(self, nbytes: int) -> DeviceAllocation:
        allocation = self._cuda.mem_alloc(nbytes)
        self._allocations.append(allocation)
        return allocation

    def _enqueue(self) -> None:
        cuda = self._cuda
        cuda.memcpy_htod_async(self._device_input, self._host_input, self._stream)
        if not self._execution.execute_async_v3(self._stream.handle):
            raise EdgesegError(f"TensorRT failed to run {self.path.name}; see its message above")
        cuda.memcpy_dtoh_async(self._host_output, self._device_output, self._stream)

    def _capture_graph(self) -> bool:
        """Capture copy-infer-copy as a CUDA graph for the current buffers; False (and plain enqueue from then on)
        where the engine cannot be captured, e.g. DLA layers."""
        if self._graph is not None:
            return True
        # TensorRT's guide: run once before capturing, so it does its deferred work (shape-dependent allocations)
        # outside the capture.
        self._enqueue()
        self._stream.synchronize()
        try:
            self._stream.begin_capture()
            try:
                self._enqueue()
            finally:
                graph = self._stream.end_capture()
            self._graph = graph.instantiate()
        except (self._cuda.Error, EdgesegError) as exc:
            warnings.warn(f"CUDA graph capture of {self.path.name} failed ({exc}); running without it", stacklevel=3)
            self.use_cuda_graph = False
            self._graph = None
            return False
        return True
