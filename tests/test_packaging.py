"""Every source folder ships in a regular (non-editable) install."""
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_code_folder_is_a_declared_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(find_packages(str(ROOT), include=include))
    code_dirs = {p.parent.name for p in ROOT.glob("*/*.py")} - {"tests", "benchmarks"}
    assert code_dirs <= found, f"missing __init__.py or include pattern: {code_dirs - found}"
    assert config["tool"]["setuptools"]["py-modules"] == ["train"]
