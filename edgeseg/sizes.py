"""Input sizes as people write them, HEIGHTxWIDTH (e.g. 360x480): one parser for the CLI, suite files and
bundle settings, so every place accepts and refuses the same text with the same words."""

from __future__ import annotations

from edgeseg.errors import UsageError

MIN_SIDE = 32  # the zoo's encoders downsample by 32


def parse_size(text: str | None) -> tuple[int, int] | None:
    """(height, width) from "HEIGHTxWIDTH"; None stays None (an option left out: the model's own size)."""
    if text is None:
        return None
    try:
        height, width = (int(part) for part in str(text).lower().split("x"))
    except ValueError:
        raise UsageError(f"size {text!r} is not HEIGHTxWIDTH, e.g. 360x480") from None
    if height < MIN_SIDE or width < MIN_SIDE:
        raise UsageError(f"size {text!r} is too small; both sides must be at least {MIN_SIDE}")
    return height, width
