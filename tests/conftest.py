"""Fixtures shared by all tiers; plain helpers live in helpers.py."""

import sys

import pytest


@pytest.fixture
def python() -> str:
    return sys.executable
