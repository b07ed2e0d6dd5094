"""Helpers for typed, validated settings built from flags and environment."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAX_UNIX_PATH_BYTES = 107  # a unix socket's sun_path holds 108 bytes, the last one a NUL
# An instance address naming a unix socket: `unix:/abs/path` (the local runtime lists its
# queues so to the activator; see endpoints.proto).
UNIX_ADDRESS_PREFIX = "unix:"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class SettingsError(ValueError):
    """A setting is missing or out of range; the message names the key and the rule."""


def parse_json_object(key: str, raw: str) -> dict:
    """A setting holding a JSON object; "" (or blanks) is {}."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SettingsError(f"{key} = {raw!r}, must be a JSON object ({exc})") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{key} = {raw!r}, must be a JSON object")
    return value


def parse_duration_s(key: str, value: str | float | int) -> float:
    """`"10s"`, `"1m"`, `"250ms"`, `"1h"` or a bare number of seconds, as seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise SettingsError(f"{key} = {value!r}, must be a duration like 30s, 1m or 500ms")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_port(key: str, value: str | int) -> int:
    """A TCP port 0..65535 (0 = pick a free one)."""
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{key} = {value!r}, must be an integer port 0..65535") from None
    if not 0 <= port <= 65535:
        raise SettingsError(f"{key} = {port}, must be in 0..65535")
    return port


def parse_host(key: str, value: str | None) -> str:
    """An address to bind: 127.0.0.1 by default; 0.0.0.0 in a pod (the Helm chart)."""
    host = (value or "127.0.0.1").strip()
    if any(c.isspace() or c in "/?#@" for c in host):
        raise SettingsError(f"{key} = {value!r}, must be a host name or an IP address")
    return host


@dataclass(frozen=True)
class Flag:
    """One setting: its flag, the env var that may supply it, and its default."""

    name: str  # flag name without dashes, e.g. "grpc-port"
    env: str  # environment variable, e.g. "EBB_AUTOSCALER_GRPC_PORT"
    default: str | None
    help: str


def read_flags(
    prog: str, flags: Sequence[Flag], argv: Sequence[str] | None, environ: Mapping[str, str]
) -> dict[str, str | None]:
    """Parse argv; a flag not given falls back to its env var, then its default.

    Returns raw strings by flag name (dashes kept); the caller converts and validates them.
    """
    parser = argparse.ArgumentParser(prog=prog)
    for flag in flags:
        parser.add_argument(f"--{flag.name}", dest=flag.name, default=None, help=f"{flag.help} (env {flag.env})")
    parsed = vars(parser.parse_args(list(argv) if argv is not None else None))
    values: dict[str, str | None] = {}
    for flag in flags:
        given = parsed[flag.name]
        values[flag.name] = given if given is not None else environ.get(flag.env, flag.default)
    return values


def env_view(environ: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """The environment to read settings from (os.environ unless one is injected)."""
    return os.environ if environ is None else environ
