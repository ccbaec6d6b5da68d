"""The device check: the first real TensorRT run on a Jetson or an NVIDIA GPU, in one command, one JSON file.

For each bundled CamVid reference (segformer-b0, deeplabv3plus-mobilenetv2, unet-mobilenetv2) it builds TensorRT
engines at FP16 and INT8 with the engine code `edgeseg engine build` uses (INT8 strongly typed from the bundle's
Q/DQ graph on TensorRT 10+, TensorRT's entropy calibrator on the FP32 graph on TensorRT 8.x), checks that the
engines' argmax agrees with ONNX Runtime FP32 on CamVid test images (>= 99% of pixels for FP16, >= 97% for INT8),
times them, runs the demo on a clip, runs the `gpu`-marked tests of a checkout, and writes one JSON file.

Where the ONNX comes from: exporting needs torch, which a Jetson often lacks, so the device check starts from
build bundles made on a host with `edgeseg build --model M --target <the device's target>` (model.onnx,
model.fp16.onnx, model.int8.onnx, calibration.json) and copied to the device; `bundles` is the folder holding
them, one sub-folder per model. On the device it needs only the core install, onnxruntime, TensorRT and pycuda.

The JSON is a bench results file (schema 1: suite, env, rows in the `edgeseg bench` row shape) plus the device
facts, the agreement checks, the demo summary and the GPU tests, so `bench` reports and the README table merge
its rows (edgeseg.bench.outputs.merge_device_check).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeseg.bench.latency import measure
from edgeseg.bench.outputs import DEVICE_CHECK_NAME, RESULTS_SCHEMA
from edgeseg.bundle_layout import CALIBRATION_MANIFEST, FP32_ONNX, ONNX_FILES
from edgeseg.engine.plan import parse_tensorrt_version
from edgeseg.errors import EdgesegError, MissingDependency, UsageError
from edgeseg.manifest import now_utc, write_json
from edgeseg.target_registry import CudaDevice

if TYPE_CHECKING:
    from edgeseg.data.datasets import SegmentationDataset
    from edgeseg.data.palettes import LabelSet
    from edgeseg.runners.base import Runner
    from edgeseg.target.schema import Target

log = logging.getLogger(__name__)

DEVICE_CHECK_FORMAT = "edgeseg-device-check"
REFERENCE_MODELS = ("segformer-b0", "deeplabv3plus-mobilenetv2", "unet-mobilenetv2")
THRESHOLDS = {"fp16": 0.99, "int8": 0.97}  # pixel agreement of the engine's argmax with ONNX Runtime FP32
BUNDLE_FILES = (*ONNX_FILES.values(), CALIBRATION_MANIFEST)  # what a device check needs of a host's bundle
INT8_ROUTES = ("auto", "qdq", "calibrator")
HOST_COMMAND = "edgeseg build --model {model} --target <a Jetson or GPU target, e.g. jetson-orin-nano or rtx-4090>"


@dataclass(frozen=True)
class DeviceCheckConfig:
    bundles: str  # folder of build bundles made on a host, one per model
    models: tuple[str, ...] = REFERENCE_MODELS
    precisions: tuple[str, ...] = ("fp16", "int8")
    int8: str = "auto"  # auto: Q/DQ strongly typed on TensorRT 10+, the calibrator on 8.x
    data_root: str | None = None  # CamVid's parent (default: $EDGESEG_DATA)
    images: int = 50  # CamVid test images for the agreement check
    warmup: int = 10
    min_runs: int = 50
    min_seconds: float = 3.0
    clip: str | None = None  # the demo's source (default: a clip made from CamVid test frames)
    demo_frames: int = 120
    work_dir: str = "device-check-work"  # copies of the bundles, the engines, the clip (kept)
    out: str | None = None  # default: benchmarks/results/<machine>/device-check.json
    machine: str | None = None
    gpu_tests: bool = True

    def __post_init__(self) -> None:
        if not self.models:
            raise UsageError("give at least one model")
        unknown = [precision for precision in self.precisions if precision not in THRESHOLDS]
        if unknown or not self.precisions:
            raise UsageError(f"precisions are fp16 and int8, not {', '.join(unknown) or 'none'}")
        if self.int8 not in INT8_ROUTES:
            raise UsageError(f"--int8 {self.int8!r}: choose one of {', '.join(INT8_ROUTES)}")
        if self.images < 1 or self.demo_frames < 1:
            raise UsageError("--images and --demo-frames must be at least 1")


@dataclass(frozen=True)
class DeviceFacts:
    tensorrt: str
    gpu: CudaDevice
    cuda: str | None  # the driver's CUDA version
    machine: str  # x86_64, aarch64
    jetson: dict | None  # model, l4t, jetpack, power mode; None off a Jetson

    def to_dict(self) -> dict:
        return {"tensorrt": self.tensorrt, "cuda": self.cuda, "machine": self.machine, "jetson": self.jetson,
                "gpu": {"name": self.gpu.name, "compute_capability": self.gpu.compute_capability,
                        "memory_gb": round(self.gpu.memory_gb, 1)}}


def probe_device() -> DeviceFacts:
    """TensorRT, the GPU, the driver and the Jetson board of this machine; refuses a machine without them."""
    from edgeseg.bench.env import jetson_info
    from edgeseg.doctor import installed_jetpack, jetpack_from_l4t
    from edgeseg.engine.host import cuda_driver_version, probe_host

    host = probe_host()
    if host.tensorrt is None:
        raise MissingDependency(f"the device check needs TensorRT: {host.tensorrt_problem}; on a Jetson JetPack "
                                "provides it, elsewhere pip install 'edgeseg[trt]' ('edgeseg doctor' shows the rest)")
    if host.device is None:
        raise UsageError("the device check needs a CUDA GPU and none is visible (checked pycuda and nvidia-smi); "
                         "'edgeseg doctor' shows what is missing")
    jetson = jetson_info()
    if jetson:
        l4t, jetpack = jetpack_from_l4t(jetson.get("l4t"))
        jetson = {**jetson, "l4t_version": l4t, "jetpack": installed_jetpack() or jetpack}
    return DeviceFacts(host.tensorrt, host.device, cuda_driver_version(), host.machine, jetson)


def int8_route(choice: str, tensorrt: str) -> str:
    """'qdq' (strongly typed from the Q/DQ graph) or 'calibrator' (TensorRT's entropy calibrator, FP32 graph)."""
    if choice != "auto":
        return choice
    return "calibrator" if parse_tensorrt_version(tensorrt)[0] < 10 else "qdq"


def find_bundles(folder: str | os.PathLike, models: tuple[str, ...]) -> dict[str, Path]:
    """{model: bundle} from the bundles' model.onnx metadata; a missing model is one line naming the host command."""
    from edgeseg.engine.onnx_facts import read_onnx_facts

    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"bundles folder {root} does not exist; make the bundles on a host with "
                         f"'{HOST_COMMAND.format(model='M')}' and copy them here")
    found: dict[str, Path] = {}
    for candidate in [root, *sorted(path for path in root.iterdir() if path.is_dir())]:
        onnx = candidate / FP32_ONNX
        if onnx.is_file():
            model = read_onnx_facts(onnx).metadata.get("edgeseg.model")
            if model in models:
                found.setdefault(model, candidate)
    missing = [model for model in models if model not in found]
    if missing:
        raise UsageError(f"no bundle for {', '.join(missing)} in {root}; make it on a host with "
                         f"'{HOST_COMMAND.format(model=missing[0])}' and copy the folder here")
    for model, bundle in found.items():
        absent = [name for name in BUNDLE_FILES if not (bundle / name).is_file()]
        if absent:
            raise UsageError(f"bundle {bundle} ({model}) lacks {', '.join(absent)}; rebuild it on the host with "
                             f"'{HOST_COMMAND.format(model=model)}'")
    return {model: found[model] for model in models}


# ---------------------------------------------------------------------------------------------------------------
# Measuring one runner

@dataclass
class Measured:
    row: dict  # the bench-shaped row fields: latency, e2e latency, throughput, accuracy against the masks
    labels: list[np.ndarray]  # the predicted label maps, at the masks' size


def measure_runner(runner: Runner, samples: list[tuple[np.ndarray, np.ndarray]], num_classes: int,
                   classes: tuple[str, ...], timing: dict) -> Measured:
    """Latency (model only and end to end, batch 1, on the first frame) and predictions on every sample."""
    from edgeseg.data.transforms import resize_pair
    from edgeseg.evaluate import labels_at
    from edgeseg.metrics import ConfusionMatrix

    preprocessing = runner.preprocessing
    frame = samples[0][0]
    model_input = preprocessing.normalize(resize_pair(frame, None, preprocessing.input_size)[0])
    model_only = measure(lambda: runner.infer(model_input), **timing)
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(preprocessing.palette)] = np.asarray(preprocessing.palette, np.uint8).reshape(-1, 3)

    def end_to_end() -> np.ndarray:  # uint8 frame -> colourised labels at the frame's size, as bench's rows time it
        resized = resize_pair(frame, None, preprocessing.input_size)[0]
        return palette[labels_at(runner.infer(preprocessing.normalize(resized)), frame.shape[:2])]

    e2e = measure(end_to_end, **timing)
    labels = []
    scored = tuple(preprocessing.classes) == tuple(classes)  # mIoU only where the model has the dataset's classes
    confusion = ConfusionMatrix(num_classes)
    for image, mask in samples:
        predicted = labels_at(runner.infer(preprocessing.normalize(resize_pair(image, None,
                                                                               preprocessing.input_size)[0])),
                              mask.shape)
        labels.append(predicted)
        if scored:
            confusion.update(mask, predicted)
    accuracy = {"dataset": "camvid", "images": len(samples), "miou": None, "pixel_accuracy": None,
                "per_class_iou": None}
    if scored:
        scores = confusion.scores().to_dict(list(classes))
        accuracy.update(miou=scores["miou"], pixel_accuracy=scores["pixel_accuracy"],
                        per_class_iou=scores["per_class_iou"])
    row = {"latency_ms": model_only.to_dict(), "e2e_latency_ms": e2e.to_dict(),
           "throughput_fps": {"batch_1": 1000.0 / model_only.mean_ms}, "frame_size": list(frame.shape[:2]),
           "accuracy": accuracy, "runtime": {"backend": runner.backend, "output": runner.output_kind,
                                             "input_shape": list(runner.input_spec.shape)}}
    return Measured(row, labels)


def agreement(labels: list[np.ndarray], reference: list[np.ndarray], num_classes: int) -> dict:
    """Pixel agreement and agreement mIoU of `labels` scored against `reference` as ground truth."""
    from edgeseg.metrics import ConfusionMatrix

    confusion = ConfusionMatrix(num_classes, ignore_index=-1)  # predictions hold no ignore label
    for predicted, expected in zip(labels, reference):
        confusion.update(expected, predicted)
    scores = confusion.scores()
    return {"pixel_agreement": float(scores.pixel_accuracy), "agreement_miou": float(scores.miou)}


# ---------------------------------------------------------------------------------------------------------------
# The run

def default_out(env: dict, machine: str | None) -> Path:
    from edgeseg.bench.env import machine_name, slug

    name = slug(machine, 60) if machine else machine_name(env)
    return Path("benchmarks") / "results" / name / DEVICE_CHECK_NAME


def run_device_check(cfg: DeviceCheckConfig, device: DeviceFacts | None = None) -> dict:
    """Build, compare, time, demo and test; returns the report, written to cfg.out (or the default) as it goes.
    Progress goes to this module's logger."""
    from edgeseg.bench.env import collect_env, machine_name, slug
    from edgeseg.data.datasets import open_dataset, resolve_data_root
    from edgeseg.target_registry import list_targets, target_from_device

    device = device or probe_device()  # first: on a machine without TensorRT nothing else matters
    bundles = find_bundles(cfg.bundles, cfg.models)
    data_root = resolve_data_root(cfg.data_root)
    dataset = open_dataset("camvid", "test", data_root)
    env = collect_env()
    env["machine_name"] = slug(cfg.machine, 60) if cfg.machine else machine_name(env)
    out = Path(cfg.out) if cfg.out else default_out(env, cfg.machine)
    work = Path(cfg.work_dir)
    for folder in (out.parent, work):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {folder}: {exc.strerror}") from exc
    # 'cuda' filled from the probed device (load_target would probe again): the engine is for this GPU itself
    template = next(target for target in list_targets() if target.name == "cuda")
    target = target_from_device(template, device.gpu, device.tensorrt)
    route = int8_route(cfg.int8, device.tensorrt)
    samples = [dataset.load(index) for index in range(min(cfg.images, len(dataset)))]
    timing = {"warmup": cfg.warmup, "min_runs": cfg.min_runs, "min_seconds": cfg.min_seconds}
    report = {
        "format": DEVICE_CHECK_FORMAT, "schema": RESULTS_SCHEMA, "complete": False, "created": now_utc(),
        "suite": {"name": "device-check", "dataset": "camvid", "split": "test", "eval_limit": len(samples),
                  "warmup": cfg.warmup, "min_seconds": cfg.min_seconds, "precisions": list(cfg.precisions),
                  "models": list(cfg.models), "thresholds": THRESHOLDS, "int8_route": route},
        "settings": asdict(cfg), "env": env, "device": device.to_dict(), "rows": [], "checks": [], "demo": None,
        "gpu_tests": None, "passed": False,
    }
    log.info(f"device check on {device.gpu.name} (compute capability {device.gpu.compute_capability}) with TensorRT "
        f"{device.tensorrt}: {', '.join(cfg.models)} at {', '.join(cfg.precisions)} (INT8 by {route}); "
        f"{len(samples)} CamVid test images; writing {out}")
    engines: dict[tuple[str, str], Path] = {}
    for model, bundle in bundles.items():
        copy = _copy_bundle(bundle, work / bundle.name)
        rows, built = check_model(model, copy, target, cfg.precisions, route, samples, dataset.label_set, timing,
                                  data_root)
        report["rows"] += rows
        engines.update({(model, precision): path for precision, path in built.items()})
        report["checks"] = [row["check"] for row in report["rows"] if row.get("check")]
        write_json(out, report)  # after each model: a crash keeps what was measured

    demo_engine = next((engines[key] for key in [(cfg.models[0], "int8"), (cfg.models[0], "fp16")]
                        if key in engines), None)
    report["demo"] = run_demo_check(demo_engine, cfg, dataset, work)
    report["gpu_tests"] = run_gpu_tests() if cfg.gpu_tests else {"ran": False, "reason": "--no-gpu-tests"}
    report["passed"] = device_check_passed(report)
    report["complete"] = True
    write_json(out, report)
    log.info(f"device check {'PASSED' if report['passed'] else 'FAILED'}: wrote {out}")
    return report


def check_model(model: str, bundle: Path, target: Target, precisions: tuple[str, ...], route: str,
                samples: list[tuple[np.ndarray, np.ndarray]], label_set: LabelSet,
                timing: dict, data_root: Path) -> tuple[list[dict], dict[str, Path]]:
    """The ONNX Runtime FP32 reference row, then one TensorRT row per precision; returns rows and built engines."""
    from edgeseg.bench.compare import accuracy_against
    from edgeseg.runners import open_runner

    classes, num_classes = label_set.classes, label_set.num_classes
    with open_runner(bundle / FP32_ONNX, device="cpu") as reference_runner:
        size = tuple(reference_runner.preprocessing.input_size)
        reference = measure_runner(reference_runner, samples, num_classes, classes, timing)
    size_text = f"{size[0]}x{size[1]}"
    reference_id = f"{model}/fp32/ort-cpu/{size_text}"
    reference_row = {"id": reference_id, "model": model, "precision": "fp32", "backend": "ort-cpu",
                     "size": list(size), "status": "ok", "reason": None, "optional": False, "role": "reference",
                     "batch": 1, "weights": bundle.name, **reference.row}
    reference_row["accuracy"].update(reference=reference_id, agreement_miou=None, pixel_agreement=None)
    if reference_row["accuracy"]["miou"] is not None:
        reference_row["accuracy"].update(accuracy_against(reference_row["accuracy"], reference_row["accuracy"]))
    log.info(f"{reference_id}: p50 {reference.row['latency_ms']['p50_ms']:.2f} ms (the FP32 reference)")
    rows, built = [reference_row], {}
    for precision in precisions:
        row_id = f"{model}/{precision}/trt/{size_text}"
        row = {"id": row_id, "model": model, "precision": precision, "backend": "trt", "size": list(size),
               "status": "ok", "reason": None, "optional": False, "role": None, "batch": 1, "weights": bundle.name}
        threshold = THRESHOLDS[precision]
        check = {"id": row_id, "model": model, "precision": precision, "metric": "pixel_agreement",
                 "reference": reference_id, "threshold": threshold, "value": None, "passed": False}
        try:
            engine, build = build_engine_for(bundle, target, precision, route, data_root)
            with open_runner(engine) as runner:
                measured = measure_runner(runner, samples, num_classes, classes, timing)
        except Exception as exc:  # a build or run that fails belongs to this row only; the others still run
            row.update(status="error", reason=_reason(exc))
            check["reason"] = row["reason"]
            rows.append({**row, "check": check})
            log.info(f"{row_id}: error: {row['reason']}")
            continue
        built[precision] = engine
        row.update(measured.row)
        row["artifact"] = {"path": f"{bundle.name}/{engine.name}", "mb": engine.stat().st_size / 1e6}
        row["engine"] = build
        accuracy = row["accuracy"]
        accuracy.update(reference=reference_id, **agreement(measured.labels, reference.labels, num_classes))
        if accuracy["miou"] is not None and reference_row["accuracy"]["miou"] is not None:
            accuracy.update(accuracy_against(accuracy, reference_row["accuracy"]))
        check.update(value=accuracy["pixel_agreement"], passed=accuracy["pixel_agreement"] >= threshold)
        row["check"] = check
        rows.append(row)
        log.info(f"{row_id}: p50 {row['latency_ms']['p50_ms']:.2f} ms, agreement with FP32 "
            f"{accuracy['pixel_agreement']:.4f} (needs {threshold}) {'ok' if check['passed'] else 'FAILED'}")
    return rows, built


def engine_options(precision: str, route: str, data_root: Path) -> dict:
    """finish_for_target's options: INT8 by the calibrator calibrates model.onnx on the bundle's calibration set."""
    if precision == "int8" and route == "calibrator":
        return {"legacy_calibrator": True, "data_root": str(data_root)}
    return {}


def build_engine_for(bundle: Path, target: Target, precision: str, route: str, data_root: Path) -> tuple[Path, dict]:
    """Build the bundle's engine for this device with the engine code `edgeseg engine build` uses."""
    from edgeseg.engine.bundle import finish_for_target
    from edgeseg.engine.sidecar import read_sidecar

    result = finish_for_target(bundle, target, precision, engine_options(precision, route, data_root))
    if result.engine is None:  # this host is not the target: a kit was written instead of an engine
        raise UsageError(f"the {precision} engine was not built here: {result.reason}")
    engine = bundle / result.engine
    sidecar = read_sidecar(engine)
    plan = sidecar.get("plan") or {}
    return engine, {"precision": sidecar.get("precision"), "onnx": (sidecar.get("onnx") or {}).get("path"),
                    "strongly_typed": plan.get("strongly_typed"), "calibrator": plan.get("calibrator"),
                    "int8_route": route if precision == "int8" else None,
                    "build_seconds": sidecar.get("build_seconds"), "layers": sidecar.get("layers"),
                    "tensorrt": sidecar.get("tensorrt")}


def _copy_bundle(bundle: Path, copy: Path) -> Path:
    """The bundle's ONNX models and calibration set, copied, so engines are built beside them without touching
    the original bundle (an existing copy is refreshed; its engines are rebuilt)."""
    copy.mkdir(parents=True, exist_ok=True)
    for name in BUNDLE_FILES:
        shutil.copy2(bundle / name, copy / name)
    return copy


# ---------------------------------------------------------------------------------------------------------------
# The demo and the GPU tests

def make_clip(frames: int, dataset: SegmentationDataset, folder: Path) -> Path:
    """An mp4 of the first CamVid test frames (what a dash camera would give the demo); an image folder where
    this OpenCV cannot write mp4."""
    import cv2

    images = [dataset.load(index)[0] for index in range(min(frames, len(dataset)))]
    clip = folder / "clip.mp4"
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (width, height))
    if writer.isOpened():
        for image in images:
            writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        writer.release()
        if clip.is_file() and clip.stat().st_size > 0:
            return clip
    frames_dir = folder / "clip-frames"
    frames_dir.mkdir(exist_ok=True)
    for index, image in enumerate(images):
        cv2.imwrite(str(frames_dir / f"{index:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return frames_dir


def run_demo_check(engine: Path | None, cfg: DeviceCheckConfig, dataset: SegmentationDataset, work: Path) -> dict:
    """`edgeseg demo` on the clip with the first model's INT8 engine (else FP16), saving the rendered video."""
    from edgeseg.demo.app import DemoConfig, run_demo

    if engine is None:
        return {"status": "error", "reason": "no engine of the first model was built"}
    try:
        source = Path(cfg.clip) if cfg.clip else make_clip(cfg.demo_frames, dataset, work)
        saved = work / "demo.mp4"
        summary = run_demo(DemoConfig(model=str(engine), source=str(source), show=False, save=str(saved),
                                      max_frames=cfg.demo_frames))
    except Exception as exc:  # the demo's failure is the check's result, not the end of the run
        return {"status": "error", "engine": f"{engine.parent.name}/{engine.name}", "reason": _reason(exc)}
    keep = ("frames", "mean_fps", "latency_ms", "stage_ms", "dropped_frames", "captured", "stopped_by", "backend",
            "input_size")
    result = {"status": "ok", "engine": f"{engine.parent.name}/{engine.name}",
              "source": Path(cfg.clip).name if cfg.clip else f"{source.name} (first CamVid test frames)",
              "saved": Path(summary["saved"]).name if summary.get("saved") else None,
              **{key: summary.get(key) for key in keep}}
    if not result["frames"]:
        result.update(status="error", reason="the demo rendered no frame")
    log.info(f"demo: {result.get('frames')} frames, {result.get('mean_fps') or 0:.1f} FPS with {result['engine']}")
    return result


def checkout_tests() -> Path | None:
    """The tests/ folder of the checkout edgeseg runs from (None for an installed wheel)."""
    import edgeseg

    tests = Path(edgeseg.__file__).resolve().parent.parent / "tests"
    return tests if (tests / "conftest.py").is_file() else None


def run_gpu_tests(timeout_s: float = 1800) -> dict:
    """`pytest -m gpu` of the checkout: the tests that need TensorRT and a CUDA GPU."""
    tests = checkout_tests()
    if tests is None:
        return {"ran": False, "reason": "no tests/ folder beside the edgeseg package: run from a git checkout"}
    # Only the files that hold gpu tests: collecting the others would import torch, which the device may lack.
    files = gpu_test_files(tests)
    if not files:
        return {"ran": False, "reason": f"no test in {tests} is marked gpu"}
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
               *(str(path) for path in files)]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=tests.parent,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"ran": True, "exit_code": None, "reason": f"pytest -m gpu did not finish in {timeout_s:g} s"}
    except OSError as exc:
        return {"ran": False, "reason": f"cannot run pytest: {exc}"}
    if "No module named pytest" in done.stderr:
        return {"ran": False, "reason": "pytest is not installed (pip install pytest)"}
    shown = " ".join(f"tests/{path.name}" for path in files)
    result = {"ran": True, "command": f"python -m pytest -m gpu -q -rs {shown}", "exit_code": done.returncode,
              "seconds": round(time.monotonic() - started, 1), **pytest_counts(done.stdout)}
    result["skip_reasons"] = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")][:20]
    log.info(f"gpu tests: {result.get('summary') or 'no summary'} (exit code {done.returncode})")
    return result


def gpu_test_files(tests: Path) -> list[Path]:
    """The test files with a test marked gpu (a text search: importing them is what must be avoided)."""
    return [path for path in sorted(tests.glob("test_*.py")) if "pytest.mark.gpu" in path.read_text(errors="replace")]


def pytest_counts(output: str) -> dict:
    """{'summary': '2 passed, 1 skipped in 3.1s', 'passed': 2, 'skipped': 1, ...} from pytest's last line."""
    lines = [line.strip("= ").strip() for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|"
                                                                                 r"deselected|errors?)\b", line)]
    if not lines:
        return {"summary": None}
    summary = lines[-1]
    counts = {key: 0 for key in ("passed", "failed", "skipped", "errors", "deselected")}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)\b", summary):
        counts["errors" if word.startswith("error") else word] = int(number)
    return {"summary": summary, **counts}


def device_check_passed(report: dict) -> bool:
    """Every row ran, every agreement check passed, the demo rendered frames, no GPU test failed."""
    rows_ok = bool(report["rows"]) and all(row["status"] == "ok" for row in report["rows"])
    checks_ok = bool(report["checks"]) and all(check["passed"] for check in report["checks"])
    demo_ok = (report.get("demo") or {}).get("status") == "ok"
    tests = report.get("gpu_tests") or {}
    tests_ok = not tests.get("ran") or (tests.get("exit_code") == 0 and not tests.get("failed"))
    return rows_ok and checks_ok and demo_ok and tests_ok


def _reason(exc: BaseException) -> str:
    """One line: an edgeseg error's message as it is; anything else (TensorRT, pycuda) with its type."""
    text = " ".join(str(exc).split())
    if isinstance(exc, EdgesegError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
