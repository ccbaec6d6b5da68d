#!/usr/bin/env python3
"""The first real TensorRT run on a Jetson or an NVIDIA GPU: build, check, time, demo, test; one JSON result.

For segformer-b0, deeplabv3plus-mobilenetv2 and unet-mobilenetv2 (the bundled CamVid references) it builds
TensorRT engines at FP16 and INT8 with edgeseg's engine code (INT8 strongly typed from the Q/DQ graph on
TensorRT 10+; on TensorRT 8.x TensorRT's entropy calibrator on the FP32 graph), checks that each engine's argmax
agrees with ONNX Runtime FP32 on CamVid test images (>= 99% of pixels for FP16, >= 97% for INT8), times each,
runs `edgeseg demo` on a clip, runs the `gpu`-marked tests of this checkout, and writes
benchmarks/results/<machine>/device-check.json (GPU, JetPack/TensorRT versions, every number) to commit.

Where the ONNX comes from. Exporting needs torch, which the device does not need and often lacks; the check
starts from build bundles made on a host (any machine with `pip install -e '.[all]'`) and copied here:

    # on the host, once per model (any Jetson or GPU target: the ONNX models are the same):
    edgeseg build --model segformer-b0 --target jetson-orin-nano --out bundles/segformer-b0
    edgeseg build --model deeplabv3plus-mobilenetv2 --target jetson-orin-nano --out bundles/deeplabv3plus-mobilenetv2
    edgeseg build --model unet-mobilenetv2 --target jetson-orin-nano --out bundles/unet-mobilenetv2
    rsync -a bundles/ jetson:edgeseg/bundles/

    # on the device, in a checkout of the same commit (JetPack provides TensorRT; pycuda from pip;
    # onnx and pytest only for the gpu tests, which build their own tiny model):
    pip install -e . onnxruntime pycuda onnx pytest
    edgeseg doctor                                   # TensorRT, pycuda, GPU, JetPack: what is missing
    EDGESEG_DATA=~/data python benchmarks/device_check.py --bundles bundles

Each bundle needs model.onnx, model.fp16.onnx, model.int8.onnx and calibration.json; the engine's target is the
device itself (its compute capability and TensorRT), whatever target the bundle was prepared for. CamVid
(`edgeseg data fetch camvid`) gives the test images and, on TensorRT 8.x, the calibration images. Exit code 0
when every engine was built and passed its check, the demo ran and no GPU test failed; 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))  # runs from a checkout without installing edgeseg

from edgeseg.bench.device_check import (INT8_ROUTES, REFERENCE_MODELS, DeviceCheckConfig,  # noqa: E402
                                        run_device_check)
from edgeseg import logs  # noqa: E402
from edgeseg.errors import EdgesegError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> DeviceCheckConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", required=True, help="folder holding one build bundle per model, made on a "
                                                         "host with 'edgeseg build' and copied here")
    parser.add_argument("--models", nargs="+", default=list(REFERENCE_MODELS), help="models to check")
    parser.add_argument("--precisions", nargs="+", default=["fp16", "int8"], choices=["fp16", "int8"])
    parser.add_argument("--int8", default="auto", choices=INT8_ROUTES,
                        help="auto: strongly typed Q/DQ on TensorRT 10+, the calibrator on 8.x")
    parser.add_argument("--data-root", help="folder holding CamVid/ (default: $EDGESEG_DATA)")
    parser.add_argument("--images", type=int, default=50, help="CamVid test images for the agreement check")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--min-runs", type=int, default=50)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="each latency is timed at least this long")
    parser.add_argument("--clip", help="the demo's source (default: an mp4 of the first CamVid test frames)")
    parser.add_argument("--demo-frames", type=int, default=120)
    parser.add_argument("--work", default="device-check-work", help="bundle copies, engines, clip, demo video")
    parser.add_argument("--out", help="JSON to write (default: benchmarks/results/<machine>/device-check.json)")
    parser.add_argument("--machine", help="results folder name (default: from the hardware, e.g. jetson-...)")
    parser.add_argument("--no-gpu-tests", action="store_true", help="skip 'pytest -m gpu'")
    args = parser.parse_args(argv)
    return DeviceCheckConfig(bundles=args.bundles, models=tuple(args.models), precisions=tuple(args.precisions),
                             int8=args.int8, data_root=args.data_root, images=args.images, warmup=args.warmup,
                             min_runs=args.min_runs, min_seconds=args.min_seconds, clip=args.clip,
                             demo_frames=args.demo_frames, work_dir=args.work, out=args.out, machine=args.machine,
                             gpu_tests=not args.no_gpu_tests)


def main(argv: list[str] | None = None) -> int:
    logs.configure()  # progress lines on stderr, as the CLI says them
    try:
        report = run_device_check(parse_args(argv))
    except EdgesegError as exc:
        print(f"device_check: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("device_check: interrupted", file=sys.stderr)
        return 130
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
