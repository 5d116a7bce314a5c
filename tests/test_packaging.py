"""Every source folder ships in a regular (non-editable) install."""
import re
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


def test_nothing_imports_the_command_line_front():
    """train.py is argument parsing on top of `pipeline`: libraries, benchmarks and tests use
    `pipeline.run`, so train.py is not installed as a module and nobody imports it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py-modules" not in config["tool"].get("setuptools", {})
    importers = [str(p.relative_to(ROOT)) for p in ROOT.glob("**/*.py")
                 if not p.is_relative_to(ROOT / ".venv") and not p.is_relative_to(ROOT / ".venv-ci")
                 and re.search(r"^\s*(import train\b|from train import)", p.read_text(), re.M)]
    assert importers == []
