"""Frames of another shape: letterbox, crop and dynamic-size models map the mask back onto the frame exactly, the
pad never shows up as a class, and the HUD and the summary read one recorder (no 0.0 before anything was measured).

The model is a few ONNX nodes made here, whose class 0 wins exactly where the input is the normalised mean (the
pad) and nowhere in a real image, so "the pad never appears as a class" is something the test can see fail."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.demo.app import DemoConfig, format_summary, run_demo
from edgeseg.fit import plan_fit
from edgeseg.demo.render import hud_lines
from edgeseg.demo.stats import DemoStats
from edgeseg.errors import UsageError
from edgeseg.zoo.contract import Preprocessing
from tests.conftest import camvid_root, synthetic_scene

CLASSES = ("Pad", "Plain", "Red", "Green", "Blue")  # "Pad": what the model says where it sees the dataset mean
PALETTE = ((255, 0, 255), (128, 128, 128), (200, 30, 30), (30, 200, 30), (30, 30, 200))
MODEL_SIZE = (96, 96)


def make_model(path: Path, *, dynamic: bool = False, pad: str = "mean") -> Path:
    """pixel_values 1x3xHxW -> logits 1x5xHxW: class 0 = 1000 * (0.01 - sum|x|) (10 on the pad, where x is 0; below
    -8 on any uint8 image, whose normalised pixels are never all within 0.01 of the mean), class 1 = 0, classes
    2-4 = a seeded 3x3 convolution. So a real pixel is never class 0 and a pad pixel always is."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.6, (3, 3, 3, 3)).astype(np.float32)
    height, width = ("height", "width") if dynamic else MODEL_SIZE
    nodes = [
        helper.make_node("Abs", ["pixel_values"], ["magnitude"]),
        helper.make_node("ReduceSum", ["magnitude", "channel_axis"], ["distance"], keepdims=1),
        helper.make_node("Sub", ["tolerance", "distance"], ["margin"]),
        helper.make_node("Mul", ["margin", "steepness"], ["pad_score"]),
        helper.make_node("Mul", ["distance", "zero"], ["plain_score"]),
        helper.make_node("Conv", ["pixel_values", "weights", "bias"], ["colour_scores"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["pad_score", "plain_score", "colour_scores"], ["logits"], axis=1),
    ]
    initializers = [numpy_helper.from_array(np.array([1], np.int64), "channel_axis"),
                    numpy_helper.from_array(np.array(0.01, np.float32), "tolerance"),
                    numpy_helper.from_array(np.array(1000.0, np.float32), "steepness"),
                    numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                    numpy_helper.from_array(weights, "weights"),
                    numpy_helper.from_array(np.zeros(3, np.float32), "bias")]
    graph = helper.make_graph(
        nodes, "fit-probe", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, len(CLASSES), height, width])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    preprocessing = Preprocessing(input_size=MODEL_SIZE, classes=CLASSES, palette=PALETTE, pad=pad)
    helper.set_model_props(model, {"edgeseg.preprocessing": preprocessing.to_json(), "edgeseg.output": "logits"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fit-models")
    return {"static": make_model(folder / "static.onnx"), "dynamic": make_model(folder / "dynamic.onnx", dynamic=True),
            "reflect": make_model(folder / "reflect.onnx", pad="reflect")}


@pytest.fixture(scope="module")
def wide_frame() -> np.ndarray:
    """A 2:1 street frame (240x480): a CamVid test frame with its top and bottom rows cut, else a toy scene."""
    root = camvid_root()
    if root is not None:
        frame = cv2.imread(str(sorted((root / "CamVid" / "test").glob("Seq05VD_f*.png"))[0]), cv2.IMREAD_COLOR)
        return np.ascontiguousarray(frame[60:300])
    return cv2.cvtColor(synthetic_scene(np.random.default_rng(1), (240, 480))[0], cv2.COLOR_RGB2BGR)


def run_once(model: Path, frame: np.ndarray, folder: Path, **options) -> tuple[np.ndarray, dict]:
    """The demo over a one-image folder, mask mode without legend or HUD: the rendered image is the mask's colours,
    with no video compression in between."""
    folder.mkdir()
    cv2.imwrite(str(folder / "frame.png"), frame)
    shown = []
    summary = run_demo(DemoConfig(model=str(model), source=str(folder), show=False, mode="mask", legend=False,
                                  hud=False, threads=1, **options),
                       on_frame=lambda count, image: shown.append(image.copy()))
    assert len(shown) == 1
    return shown[0], summary


def predict(session, rgb_input: np.ndarray, pad_rows: tuple[int, int] = (0, 0), mirror: bool = False) -> np.ndarray:
    """The model's labels for an RGB image, with `pad_rows` rows above/below: the mean colour, or the image
    mirrored at its edge."""
    if mirror:
        rgb_input = cv2.copyMakeBorder(rgb_input, *pad_rows, 0, 0, cv2.BORDER_REFLECT_101)
        pad_rows = (0, 0)
    normalised = Preprocessing(input_size=rgb_input.shape[:2]).normalize(rgb_input)
    padded = np.pad(normalised, ((0, 0), (0, 0), pad_rows, (0, 0)))  # 0 after normalising is the mean colour
    return session.run(None, {"pixel_values": padded})[0][0].argmax(axis=0).astype(np.uint8)


def colours(labels: np.ndarray) -> np.ndarray:
    table = np.zeros((256, 3), np.uint8)
    table[:len(PALETTE)] = np.asarray(PALETTE, np.uint8)[:, ::-1]  # BGR, as drawn
    return table[labels]


def test_letterboxed_mask_is_the_prediction_on_the_padded_input_cropped_back(models, wide_frame, tmp_path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(models["static"]), providers=["CPUExecutionProvider"])
    # 240x480 into 96x96: scaled by 0.2 to 48x96, 24 rows of pad above and below.
    content = cv2.cvtColor(cv2.resize(wide_frame, (96, 48), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    on_padded_input = predict(session, content, pad_rows=(24, 24))
    assert (on_padded_input[:24] == 0).all() and (on_padded_input[72:] == 0).all()  # the model calls the pad "Pad"
    assert not (on_padded_input[24:72] == 0).any()  # and nothing else
    expected = cv2.resize(np.ascontiguousarray(on_padded_input[24:72]), (480, 240), interpolation=cv2.INTER_NEAREST)
    assert len(np.unique(expected)) >= 3, "the probe model should see several classes in a real frame"

    shown, summary = run_once(models["static"], wide_frame, tmp_path / "letterbox")
    assert summary["fit"] == "letterbox"  # the default: aspect kept
    assert shown.shape == wide_frame.shape
    assert np.array_equal(shown, colours(expected))  # pixel for pixel
    assert not (shown == np.asarray(PALETTE[0][::-1], np.uint8)).all(axis=2).any()  # the pad is never a class

    # The default pad mirrors the frame at its edge (no flat band for the model to label): the same geometry.
    mirrored = predict(session, content, pad_rows=(24, 24), mirror=True)
    expected_mirrored = cv2.resize(np.ascontiguousarray(mirrored[24:72]), (480, 240), interpolation=cv2.INTER_NEAREST)
    shown_mirrored, _ = run_once(models["reflect"], wide_frame, tmp_path / "letterbox-reflect")
    assert np.array_equal(shown_mirrored, colours(expected_mirrored))
    assert not np.array_equal(mirrored[:24], on_padded_input[:24])  # the pad really was different

    # The old squeeze is still there on request, and it is a different picture of the same frame.
    squeezed, summary = run_once(models["static"], wide_frame, tmp_path / "resize", fit="resize")
    assert summary["fit"] == "resize"
    full_input = cv2.cvtColor(cv2.resize(wide_frame, (96, 96), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    expected_squeezed = cv2.resize(predict(session, full_input), (480, 240), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(squeezed, colours(expected_squeezed))
    assert not np.array_equal(squeezed, shown)


def test_crop_labels_the_centre_and_leaves_the_edges_unlabelled(models, wide_frame, tmp_path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(models["static"]), providers=["CPUExecutionProvider"])
    # 240x480 covering 96x96: scale 0.4, the model sees the central 240x240.
    centre = cv2.cvtColor(cv2.resize(wide_frame[:, 120:360], (96, 96), interpolation=cv2.INTER_LINEAR),
                          cv2.COLOR_BGR2RGB)
    expected = np.zeros((240, 480, 3), np.uint8)  # void is black in mask mode (and the camera image in overlay)
    expected[:, 120:360] = colours(cv2.resize(predict(session, centre), (240, 240), interpolation=cv2.INTER_NEAREST))
    shown, _ = run_once(models["static"], wide_frame, tmp_path / "crop", fit="crop")
    assert np.array_equal(shown, expected)


def test_dynamic_model_runs_at_the_frames_aspect_rounded_to_the_stride(models, wide_frame, tmp_path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(models["dynamic"]), providers=["CPUExecutionProvider"])
    # 96x96 = 9216 pixels at 2:1 is 68x136, rounded to the stride 32: 64x128, no pad at all.
    assert plan_fit((240, 480), Preprocessing(MODEL_SIZE), dynamic=True).input_size == (64, 128)
    resized = cv2.cvtColor(cv2.resize(wide_frame, (128, 64), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    expected = cv2.resize(predict(session, resized), (480, 240), interpolation=cv2.INTER_NEAREST)
    assert not (expected == 0).any()
    shown, _ = run_once(models["dynamic"], wide_frame, tmp_path / "dynamic")
    assert np.array_equal(shown, colours(expected))


def test_fit_geometry_for_tall_and_odd_frames():
    contract = Preprocessing((360, 480))
    tall = plan_fit((1080, 607), contract)  # a phone held upright: pillarbox
    assert (tall.content.height, tall.content.top) == (360, 0)
    assert tall.content.width == round(607 * 360 / 1080) and tall.content.left == (480 - tall.content.width) // 2
    same = plan_fit((720, 960), contract, "crop")  # same aspect: nothing cut
    assert not same.cropped and not same.padded
    with pytest.raises(UsageError, match="unknown --fit 'stretch'"):
        plan_fit((10, 10), contract, "stretch")
    with pytest.raises(UsageError, match="unknown fit"):
        Preprocessing((8, 8), fit="stretch")
    with pytest.raises(UsageError, match="unknown pad"):
        Preprocessing((8, 8), pad="zeros")
    read_back = Preprocessing.from_dict(json.loads(Preprocessing((8, 8)).to_json()))
    assert (read_back.fit, read_back.pad, read_back.stride) == ("letterbox", "reflect", 32)
    # A contract written before these fields existed (checkpoints, ONNX metadata, sidecars) reads with the defaults.
    assert Preprocessing.from_dict({"input_size": [8, 8]}).fit == "letterbox"


def test_bad_fit_is_one_line_error(models, capsys):
    from tests.test_cli import assert_one_line_error, run_cli

    code, _, err = run_cli(["demo", "--model", str(models["static"]), "--source", "0", "--no-show",
                            "--fit", "stretch"], capsys)
    assert_one_line_error(code, err, "--fit 'stretch' is not accepted; choose one of: letterbox, crop, resize")


# ---------------------------------------------------------------- HUD and summary: one recorder, no early zeros


def test_hud_and_summary_read_one_recorder_without_zeros_before_a_measurement():
    stats = DemoStats(window=3)
    before = "\n".join(hud_lines(stats.window(), "ort-cpu", 0))
    assert "--" in before and "0.0" not in before
    assert stats.summary()["mean_fps"] is None

    stage_ms = {"capture": 1.0, "preprocess": 2.0, "infer": 40.0, "postprocess": 3.0, "render": 4.0}
    stats.record(stage_ms, captured_at=9.95, rendered_at=10.0)
    first = hud_lines(stats.window(), "ort-cpu", 0)
    assert first[0].startswith("-- FPS (last 3)") and "infer 40.0" in first[1]  # stage times known, a rate not yet
    for step in range(1, 5):  # 20 FPS, then a slower last frame
        stats.record(stage_ms, captured_at=10.0 + 0.05 * step - 0.05, rendered_at=10.0 + 0.05 * step)
    stats.record(dict(stage_ms, infer=140.0), captured_at=10.2, rendered_at=10.45)
    window, run = stats.window(), stats.whole_run()
    assert window.fps == pytest.approx(2 / 0.3) and window.label == "last 3 frames"  # 10.15, 10.2, 10.45
    assert run.fps == pytest.approx(5 / 0.45) and run.label == "whole run"
    assert window.stage_ms["infer"] == pytest.approx(220 / 3) and run.stage_ms["infer"] == pytest.approx(340 / 6)
    summary = stats.summary()
    assert summary["mean_fps"] == round(run.fps, 2) and summary["window"]["fps"] == round(window.fps, 2)
    assert hud_lines(window, "ort-cpu", 0)[0].startswith(f"{window.fps:5.1f} FPS (last 3)")


def test_summary_line_labels_both_rates(models, wide_frame, tmp_path):
    _, summary = run_once(models["static"], wide_frame, tmp_path / "one")
    text = format_summary({**summary, "dropped_frames": 0})
    assert "1 frames, -- FPS (whole run; last 30 frames: -- FPS)" in text  # one frame: no rate, not 0.0
    assert "0.0 FPS" not in text
