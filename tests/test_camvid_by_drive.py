"""benchmarks/camvid_by_drive.py: per-drive scores whose merged confusion matrices give `edgeseg eval`'s."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from edgeseg.evaluate import EvalConfig, evaluate_model
from tests.conftest import REPO


def test_drive_scores_merge_into_the_split_score(toy_checkpoint, tmp_path):
    data, checkpoint = toy_checkpoint
    root = tmp_path / "data"
    shutil.copytree(data, root)
    for folder in ("test", "testannot"):  # two drives: frames 0-4 stay Seq01, 5-7 become Seq02
        for path in sorted((root / "CamVid" / folder).iterdir())[5:]:
            path.rename(path.with_name(path.name.replace("Seq01", "Seq02")))
    out = tmp_path / "by_drive.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "camvid_by_drive.py"), "fcn-resnet18",
                    "--weights", f"fcn-resnet18={checkpoint}", "--splits", "test", "--threads", "1",
                    "--out", str(out)], check=True, capture_output=True, env={**os.environ, "EDGESEG_DATA": str(root)})
    test = json.loads(out.read_text())["models"]["fcn-resnet18"]["splits"]["test"]
    assert {drive: scores["images"] for drive, scores in test["drives"].items()} == {"Seq01": 5, "Seq02": 3}
    whole = evaluate_model(EvalConfig(model="fcn-resnet18", weights=str(checkpoint), data_root=str(root)))
    assert test["images"] == 8 and test["miou"] == pytest.approx(whole["miou"])
    assert test["per_class_iou"] == pytest.approx(whole["per_class_iou"])
