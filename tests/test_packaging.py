"""Every source folder ships in a regular (non-editable) install."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_code_folder_is_a_declared_package():
    """The package list is explicit (the checkout's root is `maskednas`): a new subpackage that
    is not declared would be missing from the wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = set(config["tool"]["setuptools"]["packages"])
    code_dirs = {p.parent.relative_to(ROOT) for p in ROOT.glob("**/*.py")
                 if p.parent != ROOT and p.relative_to(ROOT).parts[0] not in
                 ("tests", "benchmarks", "build", ".venv", ".venv-ci")}
    missing = {".".join(("maskednas", *d.parts)) for d in code_dirs} - declared
    assert not missing, f"add to [tool.setuptools] packages (and give an __init__.py): {missing}"
    assert all((ROOT / d / "__init__.py").is_file() for d in code_dirs)


def test_nothing_imports_the_command_line_front():
    """train.py and cli.py are argument parsing on top of `pipeline`: libraries, benchmarks and
    tests use `maskednas.run`, so nobody imports them (train.py is `maskednas run`)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py-modules" not in config["tool"].get("setuptools", {})
    importers = [str(p.relative_to(ROOT)) for p in ROOT.glob("**/*.py")
                 if not p.is_relative_to(ROOT / ".venv") and not p.is_relative_to(ROOT / ".venv-ci")
                 and p.name != "train.py"
                 and re.search(r"^\s*(import train\b|from train import|from maskednas(\.cli| import cli)\b)",
                               p.read_text(), re.M)]
    assert importers == [] or importers == ["__main__.py"]
