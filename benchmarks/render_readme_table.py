#!/usr/bin/env python3
"""Regenerate the README's benchmark table from `edgeseg bench` results, between the markers
<!-- bench-table:start --> and <!-- bench-table:end -->.

    python benchmarks/render_readme_table.py                       # every benchmarks/results/*/results.json,
                                                                   # its device-check.json merged in
    python benchmarks/render_readme_table.py benchmarks/results/cpu-xeon-8c/results.json
    python benchmarks/render_readme_table.py --check               # exit 1 if the README is out of date (CI)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))  # runs from a checkout without installing edgeseg
sys.path.insert(0, str(Path(__file__).resolve().parent))  # cpu_openvino, beside this script

from edgeseg.bench.readme import default_result_paths, update_readme  # noqa: E402
from edgeseg.errors import EdgesegError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", type=Path, help="results.json or device-check.json files (default: "
                                                               "all under benchmarks/results)")
    parser.add_argument("--readme", type=Path, default=CHECKOUT / "README.md")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 when the README is out of date")
    args = parser.parse_args(argv)
    # each machine's results.json (with its device-check.json merged in), or its device-check.json alone
    results = args.results or default_result_paths(CHECKOUT / "benchmarks" / "results")
    try:
        changed = update_readme(args.readme, results, check=args.check)
        # The CPU-vs-OpenVINO table (benchmarks/cpu_openvino.py), between its own markers.
        from cpu_openvino import render_readme

        changed = render_readme(args.readme, check=args.check) or changed
    except EdgesegError as exc:
        print(f"render_readme_table: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if changed:
            print(f"{args.readme} is out of date; run benchmarks/render_readme_table.py", file=sys.stderr)
        return 1 if changed else 0
    print(f"{args.readme}: {'updated' if changed else 'already current'} from {len(results)} results file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
