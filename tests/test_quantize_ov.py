"""NNCF INT8 for OpenVINO (edgeseg.quantize_ov) on a small real ONNX model: the IR it writes, and that NNCF's
own output (its logger, its rich progress bars) never lands on stdout, which is for results."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="the openvino extra is not installed")
pytest.importorskip("nncf", reason="the openvino extra is not installed")

ROOT = Path(__file__).resolve().parents[1]

# One process per run, as the CLI would be: stdout is the process's real stdout, whatever NNCF bound at import.
SCRIPT = """
import json, sys
from pathlib import Path
import cv2, numpy as np, onnx, logging, rich, nncf
from tests.engine_helpers import make_model
from edgeseg import logs
from edgeseg.calibration import CalibConfig, make_calibration_set
from edgeseg.export import onnx_preprocessing
from edgeseg.quantize_ov import quantize_nncf

folder, verbosity = Path(sys.argv[1]), int(sys.argv[2])
logs.configure(verbosity)
onnx.save(make_model("fp32"), str(folder / "model.onnx"))
(folder / "images").mkdir()
rng = np.random.default_rng(0)
for index in range(4):
    cv2.imwrite(str(folder / "images" / f"{index}.png"), rng.integers(0, 255, (32, 32, 3), np.uint8))
calibration = make_calibration_set(onnx_preprocessing(folder / "model.onnx"),
                                   CalibConfig(images_dir=str(folder / "images"), count=4, strategy="random"),
                                   folder / "calibration.json")
nncf_handlers = list(logging.getLogger("nncf").handlers)  # its stdout handler, from the import
assert nncf_handlers
quantize_nncf(folder / "model.onnx", calibration.path, folder / "model.int8.ov.xml")
after = {"nncf_handlers_restored": logging.getLogger("nncf").handlers == nncf_handlers,
         "rich_console_restored": not rich.get_console().stderr and not rich.get_console().quiet}
(folder / "after.json").write_text(json.dumps(after))
"""


def _quantize(folder: Path, verbosity: int) -> subprocess.CompletedProcess:
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(verbosity)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)


@pytest.mark.slow
def test_nncf_writes_an_ir_and_nothing_on_stdout(tmp_path):
    from edgeseg import logs

    quiet = _quantize(tmp_path / "quiet", logs.QUIET)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stdout == ""  # no NNCF progress bar, no "INFO:nncf:" line
    assert "NNCF INT8" not in quiet.stderr and "Statistics collection" not in quiet.stderr  # -q: the result only
    normal = _quantize(tmp_path / "normal", logs.NORMAL)
    assert normal.returncode == 0, normal.stderr[-3000:]
    assert normal.stdout == ""
    said = [line for line in normal.stderr.splitlines() if line.startswith("NNCF INT8")]
    assert len(said) == 1 and re.fullmatch(r"NNCF INT8 \(performance preset, default scheme, 4 calibration images\): "
                                           r"model\.int8\.ov\.xml in \d+ s", said[0]), normal.stderr
    folder = tmp_path / "normal"
    assert json.loads((folder / "after.json").read_text()) == {"nncf_handlers_restored": True,
                                                               "rich_console_restored": True}
    xml, weights = folder / "model.int8.ov.xml", folder / "model.int8.ov.bin"
    manifest = json.loads((folder / "model.int8.ov.xml.json").read_text())
    assert manifest["precision"] == "int8" and manifest["calibration"]["count"] == 4
    # An IR is two files: its size is both
    assert manifest["artifact"]["bytes"] == xml.stat().st_size + weights.stat().st_size
    assert not [path.name for path in folder.iterdir() if path.name.startswith(".")]  # no scratch folder left
