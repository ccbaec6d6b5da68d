"""edgeseg/sizes.py: the one HEIGHTxWIDTH parser, used by the CLI, bench suite files and bundle settings."""

import pytest

from edgeseg.errors import UsageError
from edgeseg.sizes import parse_size


def test_sizes_parse_and_refuse_alike():
    assert parse_size("360x480") == (360, 480) and parse_size("32X64") == (32, 64)
    assert parse_size(None) is None  # an option left out: the model's own size
    for text, message in (("big", "is not HEIGHTxWIDTH"), ("360x480x3", "is not HEIGHTxWIDTH"),
                          ("16x480", "too small; both sides must be at least 32")):
        with pytest.raises(UsageError, match=message):
            parse_size(text)


def test_every_size_option_uses_the_one_parser():
    from edgeseg import cli
    from edgeseg.bench import suite
    from edgeseg.engine import bundle

    assert cli.parse_size is suite.parse_size is bundle.parse_size is parse_size
