"""Regenerate gen/ from protos/ with grpcio-tools (pb2, pyi, grpc); `--check` only compares."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"


def generate(out_dir: Path) -> None:
    """Run protoc over every .proto under protos/ into out_dir."""
    import grpc_tools
    from grpc_tools import protoc  # test/gen-time dependency only

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def differences(a: Path, b: Path) -> list[str]:
    """Relative paths of files that differ between two generated trees."""
    names_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    names_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    diff = sorted(str(n) for n in names_a ^ names_b)
    for name in sorted(names_a & names_b):
        if not filecmp.cmp(a / name, b / name, shallow=False):
            diff.append(str(name))
    return diff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if gen/ is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gen"
        out.mkdir()
        generate(out)
        if args.check:
            diff = differences(out, GEN)
            if diff:
                print("gen/ is stale; run `tox -e gen`:", *diff, sep="\n  ", file=sys.stderr)
                return 1
            print("gen/ is up to date")
            return 0
        shutil.rmtree(GEN, ignore_errors=True)
        shutil.copytree(out, GEN)
        print(f"regenerated {GEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
