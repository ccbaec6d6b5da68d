#!/usr/bin/env python3
"""Make a driving clip for `edgeseg demo` from CamVid's test frames (sequence Seq05VD, in frame order).

    python benchmarks/make_clip.py --out clip.mp4                        # 171 frames, 480x360, 30 FPS
    python benchmarks/make_clip.py --out wide.mp4 --aspect 2:1           # the same, centre-cropped to 480x240

CamVid's Seq05VD test frames are every 30th frame of a 30 FPS drive, so the clip plays 30x faster than the car
drove; --fps sets the rate written into the file. --aspect crops the centre to another shape, to try the demo's
--fit on frames that are not the model's 4:3. Needs only OpenCV; the frames are read from $EDGESEG_DATA/CamVid.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))  # runs from a checkout without installing edgeseg

import cv2  # noqa: E402

from edgeseg.demo.outputs import AtomicVideoWriter  # noqa: E402
from edgeseg.errors import EdgesegError, UsageError  # noqa: E402


def frame_paths(data_root: Path, split: str, sequence: str) -> list[Path]:
    folder = data_root / "CamVid" / split
    if not folder.is_dir():
        raise UsageError(f"{folder} not found; set EDGESEG_DATA or --data-root to the folder holding CamVid/ "
                         "('edgeseg data fetch camvid' downloads it)")
    paths = sorted(folder.glob(f"{sequence}_f*.png"), key=lambda path: int(path.stem.rsplit("_f", 1)[1]))
    if not paths:
        raise UsageError(f"no {sequence}_f*.png frames in {folder}")
    return paths


def centre_crop(image, aspect: float):
    height, width = image.shape[:2]
    if width / height > aspect:  # too wide: cut the sides
        keep = round(height * aspect)
        return image[:, (width - keep) // 2:(width - keep) // 2 + keep]
    keep = round(width / aspect)
    return image[(height - keep) // 2:(height - keep) // 2 + keep]


def parse_aspect(text: str | None) -> float | None:
    if not text:
        return None
    width, _, height = text.partition(":")
    try:
        aspect = float(width) / float(height)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--aspect {text!r}: give WIDTH:HEIGHT, e.g. 2:1 or 16:9") from None
    if aspect <= 0:
        raise UsageError(f"--aspect {text!r}: give WIDTH:HEIGHT, e.g. 2:1 or 16:9")
    return aspect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("clip.mp4"))
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("EDGESEG_DATA", "data")))
    parser.add_argument("--split", default="test")
    parser.add_argument("--sequence", default="Seq05VD")
    parser.add_argument("--frames", type=int, default=None, help="the first N frames only")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--aspect", default=None, help="centre-crop to WIDTH:HEIGHT, e.g. 2:1")
    args = parser.parse_args(argv)
    try:
        aspect = parse_aspect(args.aspect)
        paths = frame_paths(args.data_root, args.split, args.sequence)[:args.frames]
        writer = AtomicVideoWriter(args.out, args.fps)  # renamed into place only when complete
        try:
            for path in paths:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    raise UsageError(f"{path} is not a readable image")
                writer.write(centre_crop(image, aspect) if aspect else image)
        except BaseException:
            writer.abort()
            raise
        written = writer.close()
    except EdgesegError as exc:
        print(f"make_clip: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {written}: {len(paths)} frames at {args.fps:g} FPS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
