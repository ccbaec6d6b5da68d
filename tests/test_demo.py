"""`edgeseg demo`: the rendered video matches the model, live sources drop old frames and reconnect, Ctrl-C and
missing cameras end cleanly, and the device side never imports torch."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.demo.app import DemoConfig, run_demo
from edgeseg.demo.pipeline import BoundedChannel, ChannelClosed, LatestSlot, Pipeline
from edgeseg.demo.render import compose, draw_legend, make_style
from edgeseg.errors import UsageError
from edgeseg.zoo.contract import Preprocessing
from tests.conftest import REPO, camvid_root, make_camvid, synthetic_scene
from tests.log_lines import captured
from tests.test_cli import assert_one_line_error, run_cli

MODEL_SIZE = (180, 240)  # (height, width): small enough for a busy CPU
CLIP_FRAMES = 12


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> Path:
    """fcn-resnet18 with random weights (fixed seed) exported to ONNX; parity checked on CamVid when present."""
    torch = pytest.importorskip("torch")
    from edgeseg.export import ExportConfig, export_model
    from edgeseg.zoo.weights import load_model

    folder = tmp_path_factory.mktemp("demo-model")
    data_root = camvid_root() or make_camvid(folder / "data")
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # two training runs share this machine's cores
    try:
        artifact = export_model(load_model("fcn-resnet18", "random"), "fcn-resnet18",
                                ExportConfig(size=MODEL_SIZE, data_root=str(data_root), parity_images=1),
                                folder / "model.onnx")
    finally:
        torch.set_num_threads(threads)
    return artifact.path


def write_clip(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def synthetic_clip(tmp_path_factory) -> Path:
    """16 toy driving frames (no dataset needed) as an mp4."""
    rng = np.random.default_rng(0)
    frames = [cv2.cvtColor(synthetic_scene(rng, (120, 160))[0], cv2.COLOR_RGB2BGR) for _ in range(16)]
    return write_clip(tmp_path_factory.mktemp("clip") / "synthetic.mp4", frames)


@pytest.fixture(scope="module")
def camvid_clip(real_data, tmp_path_factory) -> Path:
    """The first 12 CamVid test frames of sequence Seq05VD, in frame order, as a 10 FPS mp4."""
    def frame_number(path: Path) -> int:
        return int(path.stem.rsplit("_f", 1)[1])

    paths = sorted((real_data / "CamVid" / "test").glob("Seq05VD_f*.png"), key=frame_number)[:CLIP_FRAMES]
    if len(paths) < CLIP_FRAMES:
        pytest.skip("CamVid test split has fewer than 12 Seq05VD frames")
    return write_clip(tmp_path_factory.mktemp("camvid-clip") / "seq05vd.mp4", [cv2.imread(str(p)) for p in paths])


# ---------------------------------------------------------------- the rendered video is the model's prediction


def expected_render(runner, frame_bgr: np.ndarray, mode: str, alpha: float = 0.5) -> np.ndarray:
    """What the demo should draw for a decoded frame, computed independently of the demo's code."""
    from edgeseg.evaluate import labels_at

    preprocessing = runner.preprocessing
    height, width = preprocessing.input_size
    rgb = cv2.cvtColor(cv2.resize(frame_bgr, (width, height), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    labels = labels_at(runner.infer(preprocessing.normalize(rgb)), (height, width))
    labels = cv2.resize(labels, (frame_bgr.shape[1], frame_bgr.shape[0]), interpolation=cv2.INTER_NEAREST)
    palette_bgr = np.zeros((256, 3), np.uint8)
    palette_bgr[:preprocessing.num_classes] = np.asarray(preprocessing.palette, np.uint8)[:, ::-1]
    mask = palette_bgr[labels]
    if mode == "mask":
        return mask
    return (frame_bgr.astype(np.float32) * (1 - alpha) + mask.astype(np.float32) * alpha).round().astype(np.uint8)


def close_fraction(actual: np.ndarray, expected: np.ndarray, tolerance: int = 40) -> float:
    """Share of pixels whose channels all lie within `tolerance` (mp4v blurs colour edges)."""
    difference = np.abs(actual.astype(np.int16) - expected.astype(np.int16)).max(axis=2)
    return float((difference <= tolerance).mean())


@pytest.mark.camvid
@pytest.mark.parametrize("mode", ["mask", "overlay"])
def test_saved_video_shows_the_models_predictions(mode, demo_model, camvid_clip, tmp_path, capsys):
    from edgeseg.runners import open_runner

    out = tmp_path / f"{mode}.mp4"
    options = ["--model", str(demo_model), "--source", str(camvid_clip), "--no-show", "--save", str(out),
               "--mode", mode, "--no-hud", "--no-legend", "--threads", "1"]
    if mode == "mask":  # through the console entry point once; the overlay run calls run_demo directly
        code, stdout, _ = run_cli(["demo", *options], capsys)
        assert code == 0 and f"{CLIP_FRAMES} frames" in stdout and "end-of-source" in stdout
    else:
        summary = run_demo(DemoConfig(model=str(demo_model), source=str(camvid_clip), show=False, save=str(out),
                                      mode=mode, hud=False, legend=False, threads=1))
        assert summary["frames"] == CLIP_FRAMES and summary["dropped_frames"] == 0
        assert summary["stopped_by"] == "end-of-source" and summary["saved"] == str(out)

    source_frames, saved_frames = read_video(camvid_clip), read_video(out)
    assert len(saved_frames) == len(source_frames) == CLIP_FRAMES
    assert saved_frames[0].shape == source_frames[0].shape == (360, 480, 3)
    assert not list(tmp_path.glob(".*partial*")), "the temporary video was not renamed into place"

    with open_runner(demo_model, device="cpu", threads=1) as runner:
        for index in (0, CLIP_FRAMES // 2, CLIP_FRAMES - 1):
            expected = expected_render(runner, source_frames[index], mode)
            if index == 0:  # a random model must still predict several classes, or the comparison proves little
                colours, counts = np.unique(expected_render(runner, source_frames[0], "mask").reshape(-1, 3),
                                            axis=0, return_counts=True)
                assert (counts / counts.sum() >= 0.01).sum() >= 2, colours
            agreement = close_fraction(saved_frames[index], expected)
            assert agreement >= (0.97 if mode == "mask" else 0.95), f"frame {index}: {agreement:.3f}"
            if mode == "mask":  # and another frame's prediction fits worse: the check looks at the right frame
                unrelated = np.roll(expected, expected.shape[1] // 3, axis=1)
                assert close_fraction(saved_frames[index], unrelated) < agreement


# ---------------------------------------------------------------- live sources: reconnect and latest-frame slot


class FakeCapture:
    """A camera that delivers `frames` frames at about 50 FPS, then fails; opened=False models a failed reopen."""

    def __init__(self, frames: int, opened: bool = True):
        self.remaining = frames
        self.opened = opened
        self.image = np.full((120, 160, 3), 90, np.uint8)

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return self.opened

    def read(self):
        time.sleep(0.02)
        if not self.opened or self.remaining <= 0:
            return False, None
        self.remaining -= 1
        return True, self.image.copy()

    def get(self, prop):
        return 30.0

    def release(self):
        self.opened = False


def test_stream_that_drops_reconnects_with_backoff_then_ends_cleanly(demo_model):
    # Open: 5 frames, then the stream drops. Attempt 1 fails, attempt 2 reconnects: 3 frames, drops again.
    # Then every reopen fails: 3 attempts with doubling waits, and the demo ends with a summary.
    captures = iter([FakeCapture(5), FakeCapture(0, opened=False), FakeCapture(3)])
    opened_targets = []

    def capture_factory(target):
        opened_targets.append(target)
        return next(captures, None) or FakeCapture(0, opened=False)

    cfg = DemoConfig(model=str(demo_model), source="rtsp://user:secret@camera.local/stream", show=False,
                     threads=1, reconnect_attempts=3, reconnect_delay_s=0.01, reconnect_max_delay_s=0.03)
    with captured("edgeseg.demo.sources") as said:
        summary = run_demo(cfg, capture_factory=capture_factory)
    messages = said.lines

    attempts = [found.group(1) for found in map(re.compile(r"reconnect attempt (\S+ in \S+ s)").search, messages)
                if found]
    assert attempts == [
        "1/3 in 0.01 s", "2/3 in 0.02 s",  # first drop: reconnected on the second attempt
        "1/3 in 0.01 s", "2/3 in 0.02 s", "3/3 in 0.03 s",  # second drop: waits double up to the cap, then give up
    ]
    assert any("reconnected" in message for message in messages)
    assert any("gave up after 3 reconnect attempts" in message for message in messages)
    assert not any("secret" in message for message in messages), "stream credentials leaked into the log"
    assert opened_targets == ["rtsp://user:secret@camera.local/stream"] * 6
    assert summary["stopped_by"] == "source-lost" and summary["reconnects"] == 5
    assert summary["captured"] == 8 and summary["frames"] >= 1
    assert summary["frames"] + summary["dropped_frames"] == 8  # a live source drops, it never loses track


def test_latest_slot_keeps_only_the_newest_frame():
    slot = LatestSlot()
    for frame in range(1, 4):
        assert slot.put(frame)
    assert slot.get(timeout=0.1) == 3 and slot.dropped == 2
    with pytest.raises(queue.Empty):
        slot.get(timeout=0.01)
    slot.put(4)
    slot.close()
    assert slot.get(timeout=0.1) == 4  # what was there when the source ended is still delivered
    with pytest.raises(ChannelClosed):
        slot.get(timeout=0.1)
    assert not slot.put(5)


def test_bounded_channel_keeps_every_frame_in_order():
    channel = BoundedChannel(2)

    def produce():
        for item in range(20):
            channel.put(item)
        channel.close()

    producer = threading.Thread(target=produce)
    producer.start()
    received = []
    while True:
        try:
            received.append(channel.get(timeout=1.0))
        except ChannelClosed:
            break
        time.sleep(0.001)  # a slower consumer: the producer must wait, not drop
    producer.join()
    assert received == list(range(20))


class CountingSource:
    """Frames as fast as a 200 FPS camera; `live` decides how the pipeline buffers them."""

    reconnects = 0
    lost = False

    def __init__(self, frames: int, live: bool):
        self.remaining, self.live, self.fps = frames, live, 200.0

    def read(self):
        time.sleep(0.005)
        if self.remaining == 0:
            return None
        self.remaining -= 1
        return np.zeros((8, 8, 3), np.uint8)

    def close(self):
        pass


class SlowRunner:
    """A model slower than the camera (20 ms per frame)."""

    backend, output_kind = "fake", "labels"
    preprocessing = Preprocessing(input_size=(8, 8), classes=("a", "b"), palette=((0, 0, 0), (255, 255, 255)))

    def infer(self, batch):
        time.sleep(0.02)
        return np.zeros((1, 8, 8), np.uint8)


@pytest.mark.parametrize("live", [True, False])
def test_pipeline_drops_old_frames_only_for_live_sources(live):
    pipeline = Pipeline(CountingSource(40, live), SlowRunner(), stop_event=threading.Event(), keep_latest_only=live)
    pipeline.start()
    indices = [prediction.frame.index for prediction in pipeline.predictions()]
    assert pipeline.stop() and pipeline.error is None and pipeline.captured == 40
    assert indices == sorted(indices)
    if live:
        assert pipeline.dropped > 0 and len(indices) + pipeline.dropped == 40
    else:
        assert pipeline.dropped == 0 and indices == list(range(40))


# ---------------------------------------------------------------- clean stops and clear errors


def test_ctrl_c_leaves_a_finalised_video_and_a_summary(demo_model, synthetic_clip, tmp_path):
    stop_after = 4

    def press_ctrl_c(frames_rendered, image):
        if frames_rendered == stop_after:
            raise KeyboardInterrupt

    out = tmp_path / "interrupted.mp4"
    summary = run_demo(DemoConfig(model=str(demo_model), source=str(synthetic_clip), show=False, save=str(out),
                                  threads=1), on_frame=press_ctrl_c)
    assert summary["stopped_by"] == "interrupt" and summary["frames"] == stop_after
    assert summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"] > 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["interrupted.mp4"]  # renamed, no temp file left
    capture = cv2.VideoCapture(str(out))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == stop_after
    capture.release()
    assert len(read_video(out)) == stop_after


def test_missing_camera_is_one_line_error(tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")  # never loaded: the source is checked first
    if not Path("/dev/video9").exists():
        code, _, err = run_cli(["demo", "--model", str(model), "--source", "/dev/video9", "--no-show"], capsys)
        assert_one_line_error(code, err, "camera /dev/video9 does not exist")
    index = next((str(i) for i in range(7, 10) if not Path(f"/dev/video{i}").exists()), None)
    if index is not None:
        code, _, err = run_cli(["demo", "--model", str(model), "--source", index, "--no-show"], capsys)
        assert_one_line_error(code, err, f"camera {index} could not be opened")


def test_unknown_class_is_one_line_error(demo_model, synthetic_clip, capsys):
    code, _, err = run_cli(["demo", "--model", str(demo_model), "--source", str(synthetic_clip), "--no-show",
                            "--classes", "Car,Unicorn"], capsys)
    assert_one_line_error(code, err, "unknown class 'Unicorn'")
    assert "Pedestrian" in err  # the message lists the classes there are


# ---------------------------------------------------------------- rendering


def test_blur_background_keeps_road_users_of_either_label_set_sharp():
    from edgeseg.data.palettes import CAMVID, CITYSCAPES

    camvid = make_style(CAMVID.classes, CAMVID.palette, effect="blur-background")
    assert [CAMVID.classes[i] for i in np.flatnonzero(camvid.sharp)] == ["Car", "Pedestrian", "Bicyclist"]
    cityscapes = make_style(CITYSCAPES.classes, CITYSCAPES.palette, effect="blur-background")
    assert {CITYSCAPES.classes[i] for i in np.flatnonzero(cityscapes.sharp)} == {
        "car", "person", "rider", "bicycle", "motorcycle", "truck", "bus"}

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    labels = np.zeros((64, 96), np.uint8)
    labels[20:40, 30:60] = CAMVID.classes.index("Car")
    blurred = compose(frame, labels, make_style(CAMVID.classes, CAMVID.palette, effect="blur-background", alpha=0.0))
    car = labels == CAMVID.classes.index("Car")
    assert np.array_equal(blurred[car], frame[car]) and not np.array_equal(blurred[~car], frame[~car])


def test_classes_filter_legend_and_side_by_side():
    from edgeseg.data.palettes import CAMVID

    with pytest.raises(UsageError, match="unknown class 'Lorry'"):
        make_style(CAMVID.classes, CAMVID.palette, shown=("Car", "Lorry"))
    style = make_style(CAMVID.classes, CAMVID.palette, shown=("car", "Road"), mode="side-by-side")
    assert [name for name, _ in style.legend_entries] == ["Road", "Car"]
    frame = np.full((90, 120, 3), 50, np.uint8)
    labels = np.full((45, 60), CAMVID.classes.index("Sky"), np.uint8)  # model resolution: upscaled to the frame
    labels[30:, :] = CAMVID.classes.index("Road")
    image = compose(frame, labels, style)
    assert image.shape == (90, 240, 3)
    assert np.array_equal(image[:, :120], frame)  # the camera half
    assert (image[:60, 120:] == 0).all()  # Sky is hidden: black in the mask half
    assert tuple(image[80, 200]) == tuple(reversed(CAMVID.palette[CAMVID.classes.index("Road")]))  # BGR
    with_legend = draw_legend(image.copy(), style.legend_entries)
    changed = np.argwhere((with_legend != image).any(axis=2))
    assert changed[:, 1].min() >= 120  # the legend sits in the top-right corner, on the mask half


# ---------------------------------------------------------------- device side: no torch


def test_demo_never_imports_torch(demo_model, synthetic_clip):
    script = f"""
import sys
import edgeseg.demo, edgeseg.demo.app, edgeseg.demo.outputs, edgeseg.demo.pipeline, edgeseg.demo.render
import edgeseg.demo.sources
assert 'torch' not in sys.modules, 'importing the demo imported torch'
from edgeseg.cli import main
main(['demo', '--model', {str(demo_model)!r}, '--source', {str(synthetic_clip)!r}, '--no-show', '--max-frames', '2',
      '--threads', '1'])
loaded = sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'torchvision', 'transformers'))
assert not loaded, loaded
print('no torch')
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "2 frames" in result.stdout and "no torch" in result.stdout


def test_demo_fps_script_reports_the_median_round(demo_model, synthetic_clip, tmp_path):
    """benchmarks/demo_fps.py: alternating rounds, every round's ratio recorded, the headline is their median."""
    import json

    out = tmp_path / "fps.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "demo_fps.py"), "--model", str(demo_model),
                             "--source", str(synthetic_clip), "--frames", "6", "--warmup", "1", "--rounds", "3",
                             "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    ratios = record["demo_over_model_fps_rounds"]
    assert len(ratios) == len(record["rounds"]) == 3
    assert record["demo_over_model_fps"] == sorted(ratios)[1]
    assert record["demo"]["frames"] == 6 and record["model_only"]["iterations"] == 6
    assert set(record["demo"]["stage_ms"]) == {"capture", "preprocess", "infer", "postprocess", "render"}


def test_demo_fps_script_refuses_a_camera(demo_model):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "demo_fps.py"), "--model", str(demo_model),
                             "--source", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "camera's rate caps" in result.stderr and "Traceback" not in result.stderr
