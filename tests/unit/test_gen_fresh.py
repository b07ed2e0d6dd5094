"""gen/ must be exactly what the pinned grpcio-tools produces from protos/."""

import subprocess
import sys

from helpers import REPO


def test_generated_code_is_up_to_date():
    res = subprocess.run([sys.executable, str(REPO / "tools" / "gen.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_no_hand_written_init_in_namespace_roots():
    # `ebb` is a namespace package over gen/ and services/; an __init__.py would hide half.
    assert not (REPO / "gen" / "ebb" / "__init__.py").exists()
    assert not (REPO / "services" / "ebb" / "__init__.py").exists()
