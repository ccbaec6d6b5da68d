"""How edgeseg talks while it works: warnings are never disabled process-wide, result lines name their split,
-q/-v choose how much is said, and long stages report progress."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from edgeseg import cli, logs, progress
from edgeseg.bench.latency import measure_interleaved
from edgeseg.evaluate import evaluate
from edgeseg.progress import ProgressLines
from edgeseg.zoo.contract import Preprocessing


def test_main_does_not_disable_warnings_process_wide(capsys, monkeypatch):
    """A library's FutureWarning during a command reaches the user (in the CLI's one-line form); main() once
    ignored every DeprecationWarning and FutureWarning of the process."""
    import edgeseg.zoo.stats

    real_table = edgeseg.zoo.stats.zoo_table

    def table_that_warns():  # as a library the command calls might
        warnings.warn("argument x will change meaning in 3.0", FutureWarning, stacklevel=2)
        return real_table()

    monkeypatch.setattr(edgeseg.zoo.stats, "zoo_table", table_that_warns)
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # Python's own defaults, not pytest's "record everything"
        before = list(warnings.filters)
        code, _, err = run_cli(["models"], capsys)
        assert warnings.filters == before  # and main() leaves the caller's filters as they were
    assert code == 0 and "edgeseg: warning: argument x will change meaning in 3.0" in err.splitlines()


class FakeClock:
    """A clock that moves `step` seconds each time it is read: a stage that is slow without taking any time."""

    def __init__(self, step: float) -> None:
        self.step, self.time = step, 0.0

    def __call__(self) -> float:
        self.time += self.step
        return self.time


@pytest.fixture
def edgeseg_logging():
    """The "edgeseg" logger configured as the CLI does, put back as it was afterwards."""
    import logging

    logger = logging.getLogger("edgeseg")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logs.configure()
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def run_cli(args, capsys):
    try:
        cli.main(args)
        code = 0
    except SystemExit as exit_info:
        code = 0 if exit_info.code is None else exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_progress_lines_come_once_the_interval_has_passed(edgeseg_logging, capsys):
    clock = FakeClock(4.0)  # start at 4 s; each item ends 4 s later
    lines = ProgressLines("eval", total=6, logger=edgeseg_logging, clock=clock)
    for _ in range(6):
        lines.advance()
    # Lines at 12 s (3 done) and 24 s (6 done): every 10 s or more since the last one, never per item.
    assert capsys.readouterr().err.splitlines() == ["eval: 3/6 (12 s, about 12 s left)",
                                                    "eval: 6/6 (24 s, about 0 s left)"]
    quick = ProgressLines("eval", total=6, logger=edgeseg_logging, clock=FakeClock(1.0))
    for _ in range(6):
        quick.advance()
    assert capsys.readouterr().err == ""  # a stage under 10 s says nothing


def test_a_stage_run_as_a_step_is_shown_indented_under_it(edgeseg_logging, capsys):
    """build and bench run stages inside logs.nested(indent): the stage's own lines (its module logger, no `log`
    callable) come out indented under the step line; warnings keep their one-line form; the indent ends with the
    block."""
    import logging

    stage = logging.getLogger("edgeseg.report")
    edgeseg_logging.info("[7/8] evaluate")
    with logs.nested("      "):
        stage.info("fp32: mIoU 0.4384")
        with logs.nested("  "):
            stage.info("deeper")
        stage.warning("no labelled data")
    stage.info("after")
    assert capsys.readouterr().err.splitlines() == ["[7/8] evaluate", "      fp32: mIoU 0.4384", "        deeper",
                                                    "edgeseg: warning: no labelled data", "after"]


def test_evaluation_reports_progress_on_a_slow_split(edgeseg_logging, capsys, tmp_path, monkeypatch):
    from tests.test_fit import colour_bands

    monkeypatch.setattr(progress, "now", FakeClock(10.0))  # each image takes 10 s
    contract = Preprocessing(input_size=(40, 40), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), classes=("r", "g", "b"))
    evaluate(lambda batch: batch, colour_bands(tmp_path), contract)
    assert capsys.readouterr().err.splitlines() == ["eval: 1/2 (10 s, about 10 s left)",
                                                    "eval: 2/2 (20 s, about 0 s left)"]
    edgeseg_logging.setLevel("WARNING")  # what -q sets
    evaluate(lambda batch: batch, colour_bands(tmp_path), contract)
    assert capsys.readouterr().err == ""


def test_latency_timing_reports_its_rounds(edgeseg_logging, capsys, monkeypatch):
    monkeypatch.setattr(progress, "now", FakeClock(11.0))
    stats = measure_interleaved({"fp32": lambda: None, "int8": lambda: None}, warmup=0, rounds=2, per_round=1)
    assert stats["int8"].runs == 2
    assert capsys.readouterr().err.splitlines() == ["latency rounds of fp32, int8: 1/2 (11 s, about 11 s left)",
                                                    "latency rounds of fp32, int8: 2/2 (22 s, about 0 s left)"]


def images(folder, count=5):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        cv2.imwrite(str(folder / f"{index}.png"), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    return folder


@pytest.mark.parametrize("flag", [None, "-q", "-v"])
def test_quiet_and_verbose_control_what_the_cli_says(flag, tmp_path, capsys, monkeypatch):
    import logging

    logger = logging.getLogger("edgeseg")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    monkeypatch.setattr(progress, "now", FakeClock(6.0))
    folder = images(tmp_path / "frames")
    args = ([flag] if flag else []) + ["calib", "--model", "deeplabv3plus-mobilenetv2", "--images", str(folder),
                                        "--count", "5", "--strategy", "random", "--out", str(tmp_path / "calib.json")]
    try:
        code, out, err = run_cli(args, capsys)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    assert code == 0 and (tmp_path / "calib.json").is_file(), err
    progress_lines = [line for line in err.splitlines() if line.startswith("calibration: hashing images: ")]
    debug_lines = [line for line in err.splitlines() if line.startswith("calibration: 5 of 5 images (random")]
    assert "only 5 calibration images" in err  # warnings are said at every level
    if flag == "-q":
        assert progress_lines == [] and debug_lines == []
    elif flag == "-v":
        assert progress_lines and debug_lines
    else:
        # Each image "takes" 6 s: a line once 10 s have passed since the last (or the start), not one per image.
        assert progress_lines == ["calibration: hashing images: 2/5 (12 s, about 18 s left)",
                                  "calibration: hashing images: 4/5 (24 s, about 6 s left)"] and debug_lines == []


def test_quiet_and_verbose_together_is_a_one_line_error(capsys):
    code, _, err = run_cli(["-q", "-v", "models"], capsys)
    assert code != 0 and err.strip().splitlines() == ["edgeseg: error: choose one of -q/--quiet and -v/--verbose"]


def test_only_the_ort_quantizers_warnings_are_dropped_while_quantizing():
    """ORT's per-weight "Axis 1 is out-of-range" root-logger warnings are noise; anyone else's warning is not, and
    nothing is dropped once quantizing is over (logging.disable once silenced everything, progress included)."""
    import logging

    from edgeseg.quantize import _ort_quantizer_warnings_silenced

    root, kept = logging.getLogger(), []

    class Keep(logging.Handler):
        def emit(self, record):
            kept.append(record.getMessage())

    def warn(pathname, message):
        root.handle(root.makeRecord("root", logging.WARNING, pathname, 1, message, None, None))

    ort_file = "/venv/site-packages/onnxruntime/quantization/base_quantizer.py"
    handler = Keep()
    root.addHandler(handler)
    try:
        with _ort_quantizer_warnings_silenced():
            warn(ort_file, "Axis 1 is out-of-range for weight 'ln.weight' with rank 1")
            warn("/work/app.py", "the caller's own warning")
        warn(ort_file, "after quantizing")
    finally:
        root.removeHandler(handler)
    assert kept == ["the caller's own warning", "after quantizing"]
