"""Where rendered frames go: an mp4 written atomically, and an OpenCV window."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import UsageError

QUIT_KEYS = (ord("q"), ord("Q"), 27)  # q or Esc


class AtomicVideoWriter:
    """cv2.VideoWriter ('mp4v') into a temporary name in the destination folder, renamed into place by close().

    A reader never sees a half-written file under the real name, and because close() runs in a `finally`, a run
    stopped with Ctrl-C still ends with a finalised, playable video. The writer opens on the first frame, whose
    size (side-by-side doubles the width) is only known then."""

    def __init__(self, path: str | Path, fps: float, fourcc: str = "mp4v") -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".m4v", ".mov", ".avi", ".mkv"):
            raise UsageError(f"--save {self.path}: give a video file name ending in .mp4")
        if self.path.is_dir():
            raise UsageError(f"--save {self.path} is a folder; give a file name such as {self.path / 'demo.mp4'}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Same folder, so the final rename is atomic; same suffix, because OpenCV picks the container from it.
        self.temp_path = self.path.with_name(f".{self.path.stem}.partial-{os.getpid()}{self.path.suffix}")
        self.fps = fps
        self.fourcc = fourcc
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, image: np.ndarray) -> None:
        height, width = image.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(str(self.temp_path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                                           (width, height))
            if not self._writer.isOpened():
                self._writer = None
                raise UsageError(f"cannot write {self.path}: OpenCV could not open an '{self.fourcc}' video writer "
                                 f"there; check the folder is writable")
            self._size = (width, height)
        if (width, height) != self._size:
            # A camera can come back from a reconnect at another resolution; a video has one frame size.
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(np.ascontiguousarray(image))
        self.frames += 1

    def close(self) -> Path | None:
        """Finalise and rename into place; the path written, or None when no frame was written."""
        if self._writer is None:
            return None
        self._writer.release()  # writes the mp4 index: without it the file does not play
        self._writer = None
        os.replace(self.temp_path, self.path)
        return self.path


    def abort(self) -> None:
        """Drop what was written: the temporary file goes, nothing appears under the real name."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self.temp_path.unlink(missing_ok=True)


class Window:
    """An OpenCV window; q, Esc or closing the window asks the demo to stop."""

    def __init__(self, title: str = "edgeseg demo") -> None:
        if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise UsageError("no display to show the demo on (DISPLAY is not set); use --no-show, with --save "
                             "out.mp4 to keep the result")
        self.title = title
        try:  # open it now, so a build without GUI support fails before the model loads, not mid-run
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise UsageError("this OpenCV cannot open windows (opencv-python-headless?); use --no-show, or install "
                             "opencv-python") from exc
        self._opened = True

    def show(self, image: np.ndarray) -> bool:
        """Show a frame; False when the user asked to quit."""
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        if key in QUIT_KEYS:
            return False
        return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        if self._opened:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)  # let the GUI loop process the destroy
