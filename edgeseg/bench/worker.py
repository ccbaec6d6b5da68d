"""One benchmark row, measured in a fresh process: `python -m edgeseg.bench.worker` reads a job (JSON) on stdin
and prints one result line (RESULT_MARKER + JSON) on stdout.

A fresh process per row is what makes the memory figure mean something: the peak RSS (VmHWM) is that of a
process which loaded only this model with only this backend, not the leftovers of earlier rows. Only the
backend's own library is imported (an ONNX Runtime row never imports torch).

The row measures, in this order: model-only latency at batch 1 on a real frame, end-to-end latency (uint8
frame -> resize + normalize -> inference -> argmax at the frame's size -> colourised label image), throughput
at the larger batch where the model accepts it, then accuracy over the split, writing each predicted label
map as a PNG for the parent to compare with the reference row's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeseg.runners.base import Runner

RESULT_MARKER = "EDGESEG-BENCH-RESULT "


@dataclass(frozen=True)
class WorkerJob:
    row_id: str
    backend: str  # torch, torch-cuda, ort-cpu, ov-cpu, ort-cuda, trt
    precision: str
    size: tuple[int, int]
    dataset: str
    split: str
    data_root: str | None
    eval_limit: int | None
    threads: int | None
    batch: int
    warmup: int
    min_runs: int
    min_seconds: float
    artifact: str | None = None  # .onnx or .engine; None for torch rows
    model: str | None = None  # zoo name, torch rows
    weights: str | None = None  # resolved weights spec, torch rows
    predictions_dir: str | None = None  # where to write predicted label maps (PNG) for the agreement check
    ov_hint: str | None = None  # ov-cpu int8 rows: float layers' precision (a bundle default's); None: f32

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerJob":
        data = json.loads(text)
        data["size"] = tuple(data["size"])
        return cls(**data)


class BackendUnavailable(Exception):
    """This machine cannot run the row's backend (no GPU, no TensorRT, ...): the row is 'unsupported'."""


def rss_mb(field: str) -> float | None:
    """VmRSS (now) or VmHWM (peak) of this process in MiB; ru_maxrss where /proc is missing (macOS: bytes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if field == "VmHWM":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024
    return None


def gpu_memory_mb() -> tuple[float | None, str | None]:
    """This process's GPU memory by NVML (pynvml, when installed); (None, why) otherwise."""
    try:
        import pynvml
    except ImportError:
        return None, "pynvml is not installed"
    try:
        pynvml.nvmlInit()
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if process.pid == os.getpid() and process.usedGpuMemory is not None:
                        return process.usedGpuMemory / 2**20, "nvml per-process, after the row's last inference"
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVMLError subclasses; Jetsons have no NVML
        return None, f"nvml: {type(exc).__name__}"
    return None, "nvml lists no memory for this process"


def open_backend(job: WorkerJob) -> Runner:
    """The runner for the job's backend, refusing to fall back silently to another one."""
    if job.backend in ("torch", "torch-cuda"):
        import torch

        from edgeseg.runners.torch_runner import TorchRunner

        if job.backend == "torch-cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch-cuda needs a CUDA GPU and a CUDA build of torch; none is visible here")
        runner = TorchRunner(job.model, job.weights, device="cpu" if job.backend == "torch" else "cuda",
                             threads=job.threads)
        runner.preprocessing = runner.preprocessing.with_size(job.size)  # the row's size, not the model default
        return runner
    if job.backend in ("ort-cpu", "ort-cuda"):
        import onnxruntime

        from edgeseg.runners.ort import OrtRunner

        if job.backend == "ort-cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise BackendUnavailable("ort-cuda needs onnxruntime-gpu and a CUDA GPU; this onnxruntime offers "
                                     f"{', '.join(onnxruntime.get_available_providers())}")
        runner = OrtRunner(job.artifact, device="cpu" if job.backend == "ort-cpu" else "cuda", threads=job.threads)
        if runner.backend != job.backend:
            raise RuntimeError(f"ONNX Runtime opened {runner.backend}, not {job.backend}")
        return runner
    if job.backend == "ov-cpu":
        from edgeseg.runners.ov import OvRunner, bf16_available

        if job.precision == "bf16" and not bf16_available():
            raise BackendUnavailable("ov-cpu bf16 needs a CPU with AVX512-BF16 or AMX; this one has neither")
        # int8 rows run their float layers in f32 unless the job names the bundle default's hint; recorded either way
        hint = "bf16" if job.precision == "bf16" else (job.ov_hint or "f32")
        return OvRunner(job.artifact, threads=job.threads, precision_hint=hint)
    if job.backend == "trt":
        from edgeseg.runners.trt import TensorRTRunner

        return TensorRTRunner(job.artifact)
    raise ValueError(f"unknown backend {job.backend}")


def accepts_batch(runner: Runner, batch: int) -> bool:
    first = runner.input_spec.shape[0] if runner.input_spec.shape else 1
    return runner.backend.startswith("torch") or isinstance(first, str) or first == batch


def run_job(job: WorkerJob) -> dict:
    import numpy as np

    from edgeseg.bench import power
    from edgeseg.bench.latency import measure
    from edgeseg.data.datasets import open_dataset
    from edgeseg.data.transforms import resize_pair
    from edgeseg.evaluate import labels_at
    from edgeseg.metrics import ConfusionMatrix

    baseline_rss = rss_mb("VmRSS")
    started = time.monotonic()
    dataset = open_dataset(job.dataset, job.split, job.data_root)
    runner = open_backend(job)
    preprocessing = runner.preprocessing
    if tuple(preprocessing.input_size) != tuple(job.size):
        raise RuntimeError(f"the model takes {preprocessing.input_size[0]}x{preprocessing.input_size[1]}, "
                           f"not the row's {job.size[0]}x{job.size[1]}")
    frame = dataset.load(0)[0]  # a real uint8 camera frame at the dataset's own resolution
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(preprocessing.palette)] = np.asarray(preprocessing.palette, np.uint8).reshape(-1, 3)
    timing = {"warmup": job.warmup, "min_runs": job.min_runs, "min_seconds": job.min_seconds}

    model_input = preprocessing.normalize(resize_pair(frame, None, preprocessing.input_size)[0])
    sampler = power.start_sampler()  # tegrastats or jtop on a Jetson; None elsewhere
    try:
        model_only = measure(lambda: runner.infer(model_input), **timing)
    finally:
        samples = sampler.stop() if sampler else None
    power_record = (power.summarize_power(samples, model_only.mean_ms, sampler.source) if sampler
                    else power.unavailable())

    def end_to_end() -> np.ndarray:
        resized = resize_pair(frame, None, preprocessing.input_size)[0]
        labels = labels_at(runner.infer(preprocessing.normalize(resized)), frame.shape[:2])
        return palette[labels]  # the colourised image a demo would show

    end_to_end_stats = measure(end_to_end, **timing)
    throughput = {"batch_1": 1000.0 / model_only.mean_ms}
    throughput_note = None
    if job.batch > 1 and accepts_batch(runner, job.batch):
        batched = np.repeat(model_input, job.batch, axis=0)
        batch_stats = measure(lambda: runner.infer(batched), warmup=max(1, job.warmup // 2),
                              min_runs=max(3, job.min_runs // 2), min_seconds=job.min_seconds / 2)
        throughput[f"batch_{job.batch}"] = job.batch * 1000.0 / batch_stats.mean_ms
    elif job.batch > 1:
        throughput_note = (f"batch-1 only: the model's input has a static batch of "
                           f"{runner.input_spec.shape[0]} (set dynamic_batch = true in the suite to measure "
                           f"batch {job.batch})")

    eval_started = time.monotonic()
    confusion = ConfusionMatrix(dataset.label_set.num_classes)
    from edgeseg.evaluate import images_to_evaluate

    count = images_to_evaluate(dataset, job.eval_limit)
    predictions = Path(job.predictions_dir) if job.predictions_dir else None
    if predictions:
        import cv2

        predictions.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, mask = dataset.load(index)
        resized = resize_pair(image, None, preprocessing.input_size)[0]
        labels = labels_at(runner.infer(preprocessing.normalize(resized)), mask.shape)
        confusion.update(mask, labels)
        if predictions:
            cv2.imwrite(str(predictions / f"{index:05d}.png"), labels)
    scores = confusion.scores().to_dict(dataset.label_set.classes)
    gpu_mb, gpu_method = (gpu_memory_mb() if job.backend in ("torch-cuda", "ort-cuda", "trt")
                          else (None, "no GPU backend"))
    runtime = {"backend": runner.backend, "pid": os.getpid(), "threads": job.threads, "output": runner.output_kind,
               "input_shape": list(runner.input_spec.shape)}
    if job.backend == "ov-cpu":
        runtime["inference_precision"] = runner.inference_precision  # read back from the compiled model
        runtime["threads"] = runner.threads
        runtime["openvino_rewrites"] = runner.graph_rewrites
    if hasattr(runner, "session") and runner.session is not None:
        runtime["providers"] = runner.session.get_providers()
    if job.backend.startswith("torch"):
        import torch

        runtime["threads"] = torch.get_num_threads()
    return {
        "status": "ok",
        "latency_ms": model_only.to_dict(),
        "e2e_latency_ms": end_to_end_stats.to_dict(),
        "throughput_fps": throughput,
        "throughput_note": throughput_note,
        "frame_size": list(frame.shape[:2]),
        "accuracy": {"dataset": dataset.name, "images": count, "miou": scores["miou"],
                     "pixel_accuracy": scores["pixel_accuracy"], "per_class_iou": scores["per_class_iou"],
                     "eval_seconds": round(time.monotonic() - eval_started, 2)},
        "memory": {"peak_rss_mb": rss_mb("VmHWM"), "baseline_rss_mb": baseline_rss, "gpu_mb": gpu_mb,
                   "gpu_method": gpu_method},
        "runtime": runtime,
        "power": power_record,  # sampled during the model-only timing; energy per frame from its mean latency
        "worker_seconds": round(time.monotonic() - started, 2),
    }


def main() -> None:
    job = WorkerJob.from_json(sys.stdin.read())
    try:
        result = run_job(job)
    except BackendUnavailable as exc:
        result = {"status": "unsupported", "reason": str(exc)}
    except Exception as exc:  # any failure belongs to this row only; the parent records it and runs the rest
        from edgeseg.errors import MissingDependency

        status = "unsupported" if isinstance(exc, MissingDependency) else "error"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result = {"status": status, "reason": f"{type(exc).__name__}: {message}" if message else type(exc).__name__}
    result["memory"] = {**result.get("memory", {}), "peak_rss_mb": rss_mb("VmHWM")}
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
