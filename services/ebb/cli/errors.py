"""The one error type the CLI reports as a single line on stderr with exit code 1."""

from __future__ import annotations


class CliError(Exception):
    """An expected failure: `main()` prints `ebb: <message>` (no traceback) and returns 1."""
