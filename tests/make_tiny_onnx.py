"""`python -m tests.make_tiny_onnx OUT_DIR`: what the core-install check runs `edgeseg demo` on.

Writes OUT_DIR/tiny.onnx (engine_helpers.make_model: a real Conv+Relu graph on 1x3x32x32, two classes, with
edgeseg's preprocessing in its metadata), OUT_DIR/frames/ (four PNGs) and OUT_DIR/clip.mp4 (300 frames at
25 fps, 12 s when played with --realtime: long enough to send Ctrl-C into). It needs onnx, so it runs in the
dev environment; the core install that runs the demo has neither onnx nor torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import onnx

from tests.engine_helpers import make_model


def write_fixtures(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(make_model("fp32"), str(out / "tiny.onnx"))
    rng = np.random.default_rng(0)
    (out / "frames").mkdir(exist_ok=True)
    for index in range(4):
        cv2.imwrite(str(out / "frames" / f"{index:04d}.png"), rng.integers(0, 255, (48, 64, 3), np.uint8))
    writer = cv2.VideoWriter(str(out / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    for index in range(300):
        writer.write(np.full((48, 64, 3), index % 255, np.uint8))
    writer.release()


if __name__ == "__main__":
    write_fixtures(Path(sys.argv[1]))
