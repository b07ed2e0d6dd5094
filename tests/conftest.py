"""Fixtures shared by all tiers; plain helpers live in helpers.py."""

import sys
from pathlib import Path

import pytest

# `bench` lives at the repo root, beside `tests`: its pure parts and its in-memory
# transport are tested and used here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture
def python() -> str:
    return sys.executable
