"""Top-level entry kept for `python cli.py ...` from a checkout; the installed console script is `edgeseg`."""

from edgeseg.cli import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
