"""`ebb` is one namespace package spread over gen/ (generated) and services/ (hand-written)."""

from setuptools import find_namespace_packages, setup


def _packages(root: str) -> dict[str, str]:
    return {name: f"{root}/{name.replace('.', '/')}" for name in find_namespace_packages(root, include=["ebb.*"])}


PACKAGE_DIR = _packages("gen") | _packages("services")
setup(packages=sorted(PACKAGE_DIR), package_dir=PACKAGE_DIR)
