"""How edgeseg talks while it works: warnings are never disabled process-wide, result lines name their split,
-q/-v choose how much is said, and long stages report progress."""

from __future__ import annotations

import warnings

import pytest

from edgeseg import cli


def test_main_does_not_disable_warnings_process_wide():
    with warnings.catch_warnings():  # restores the filters main() may change, whatever happens
        before = list(warnings.filters)
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["models", "--no-such-option"])
        assert exit_info.value.code != 0
        added = [entry for entry in warnings.filters if entry not in before]
        assert not [entry for entry in added if entry[0] == "ignore"], added
