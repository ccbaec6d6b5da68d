"""Run by .ci/core-install with the python of a fresh venv holding only `pip install .` (no extras) plus
onnxruntime: what a Jetson gets. Checks the console script works there with no torch importable:
--help of the root, demo and engine; a demo run on a tiny ONNX model; one bad option; Ctrl-C during a demo.

usage: python .ci/core_install_check.py FIXTURES   (FIXTURES from `python -m tests.make_tiny_onnx FIXTURES`)
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

fixtures = Path(sys.argv[1]).resolve()
edgeseg = str(Path(sys.executable).parent / "edgeseg")
failures = []


def check(condition: bool, what: str, detail: str = "") -> None:
    print(("ok   " if condition else "FAIL ") + what)
    if not condition:
        failures.append(what)
        if detail:
            print("     " + detail.strip().replace("\n", "\n     ")[-3000:])


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([edgeseg, *args], cwd=fixtures, capture_output=True, text=True, timeout=120)


for name in ("torch", "onnx"):
    check(importlib.util.find_spec(name) is None, f"{name} is not importable in the core install")
version = subprocess.run([sys.executable, "-m", "pip", "show", "typer"], capture_output=True, text=True).stdout
print("typer", next((line.split()[-1] for line in version.splitlines() if line.startswith("Version")), "?"))

for args in (["--help"], ["demo", "--help"], ["engine", "--help"]):
    result = run(*args)
    check(result.returncode == 0 and "Usage" in result.stdout, f"edgeseg {' '.join(args)}",
          result.stdout + result.stderr)

for leftover in ("out.mp4", "out.json", "interrupted.mp4"):
    (fixtures / leftover).unlink(missing_ok=True)
result = run("demo", "--model", "tiny.onnx", "--source", "frames", "--no-show", "--save", "out.mp4",
             "--json", "out.json")
summary = json.loads((fixtures / "out.json").read_text()) if (fixtures / "out.json").is_file() else {}
check(result.returncode == 0 and summary.get("frames") == 4 and (fixtures / "out.mp4").stat().st_size > 0,
      "edgeseg demo on a tiny ONNX model (4 frames, --save, --json)", result.stdout + result.stderr)

result = run("demo", "--model", "tiny.onnx", "--source", "frames", "--no-show", "--alpha", "2")
errors = [line for line in result.stderr.splitlines() if line.strip()]
check(result.returncode == 2 and len(errors) == 1 and errors[0].startswith("edgeseg: error: --alpha"),
      "a bad option is one 'edgeseg: error:' line", result.stderr)

process = subprocess.Popen([edgeseg, "demo", "--model", "tiny.onnx", "--source", "clip.mp4", "--realtime",
                            "--no-show", "--save", "interrupted.mp4"], cwd=fixtures, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           # SIGINT as in a terminal: a CI job run in the background has it ignored, and so would
                           # the demo (edgeseg leaves an ignored SIGINT ignored)
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
time.sleep(4)
process.send_signal(signal.SIGINT)
out, err = process.communicate(timeout=60)
leftovers = [path.name for path in fixtures.iterdir() if ".partial" in path.name or path.name.endswith(".tmp")]
check(process.returncode == 130 and "edgeseg: interrupted" in err and "Traceback" not in err and not leftovers,
      "Ctrl-C during a demo: exit 130, one line, the video finalised, no temporary file left",
      f"exit {process.returncode}\n{out}\n{err}\nleft: {leftovers}")

if failures:
    sys.exit(f"core install check failed: {', '.join(failures)}")
print("core install check passed")
