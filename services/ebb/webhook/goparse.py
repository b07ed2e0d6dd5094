"""Go-style value parsing for the webhook; the code lives in `ebb.common.goparse`."""

from __future__ import annotations

from ebb.common.goparse import INT32_MAX

__all__ = ["INT32_MAX"]
