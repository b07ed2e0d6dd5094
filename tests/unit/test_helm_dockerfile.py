"""The Dockerfile the chart's image is built from: non-root, `python -m` entry point.

No container engine runs here, so the image is never built in tests; this reads the
Dockerfile as its instructions and checks it against the chart's values and the package.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
VALUES = REPO / "helm" / "ebb" / "values.yaml"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    out = []
    for line in logical:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    assert starts, "no FROM"
    return steps[starts[-1] :]


STEPS = instructions(DOCKERFILE.read_text())
FINAL = final_stage(STEPS)


def _last(word: str) -> str:
    found = [args for w, args in FINAL if w == word]
    assert found, f"the final stage has no {word}"
    return found[-1]


def _build_args() -> dict[str, str]:
    args = {}
    for word, rest in STEPS:
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
    return args


def test_base_image_is_python_311_slim():
    base = FINAL[0][1].split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: _build_args()[m[1]], base)
    assert base == "python:3.11-slim"


def test_runs_as_numeric_non_root_user_matching_the_chart():
    user = _last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "USER must be numeric so runAsNonRoot can be verified"
    assert int(uid) == 65532 and int(gid or uid) == 65532
    pod = yaml.safe_load(VALUES.read_text())["podSecurityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"], pod["runAsNonRoot"]) == (int(uid), int(gid), True)
    # Nothing after USER switches back to root.
    after = FINAL[[w for w, _ in FINAL].index("USER") :]
    assert not [a for w, a in after if w == "USER" and a.split(":")[0] in ("0", "root")]


def test_entrypoint_is_python_dash_m_and_default_is_the_controller():
    assert json.loads(_last("ENTRYPOINT")) == ["python", "-m"]
    assert json.loads(_last("CMD")) == ["ebb.controller"]


@pytest.mark.parametrize(
    "module", ["ebb.controller", "ebb.autoscaler", "ebb.activator", "ebb.webhook", "ebb.queue"]
)
def test_every_service_module_is_runnable_with_dash_m(module):
    assert importlib.util.find_spec(f"{module}.__main__") is not None


def test_installs_the_project_wheel_built_from_the_package_sources():
    build_copies = " ".join(args for word, args in STEPS if word == "COPY")
    for source in ("pyproject.toml", "setup.py", "README.md", "gen", "services"):
        assert source in build_copies
    runs = " ".join(args for word, args in STEPS if word == "RUN")
    assert "pip wheel" in runs
    assert "pip install --no-index --find-links /wheels ebb" in runs


def test_dockerignore_sends_only_the_package_sources():
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "setup.py", "README.md", "gen", "services"}


def test_instruction_parser_handles_continuations_and_comments():
    steps = instructions("FROM a AS b\n# c\nRUN x \\\n  # inside\n  && y\nUSER 1:1\n")
    assert steps == [("FROM", "a AS b"), ("RUN", "x && y"), ("USER", "1:1")]
