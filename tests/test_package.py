"""The package as a user installs it: a wheel whose only top-level import name is `maskednas`
(with the shipped configs inside), installed apart from the checkout and run from a directory
outside it, as the `maskednas` command and as `import maskednas`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the source tree: setuptools reuses a checkout's build/ folder, whose
    stale files would go into the wheel."""
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source") / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "runs", ".venv*", "*.egg-info", "__pycache__", "results"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(out), str(source)], check=True, capture_output=True)
    (path,) = out.glob("maskednas-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    return target


def test_the_wheels_only_top_level_name_is_maskednas(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"maskednas"}
    assert "maskednas/configs/digits.yaml" in names and "maskednas/ops/candidates.py" in names
    assert not [n for n in names if n.startswith(("maskednas/tests/", "maskednas/benchmarks/"))]
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "maskednas = maskednas.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def outside(installed: Path, tmp_path: Path, *command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    return subprocess.run([sys.executable, *command], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_installed_copy_is_the_one_imported_outside_the_checkout(installed, tmp_path):
    done = outside(installed, tmp_path, "-c", "import maskednas, maskednas.ops; "
                   "print(maskednas.__file__); print(sorted(maskednas.shipped_configs())[:2])")
    assert done.returncode == 0, done.stderr
    path, configs = done.stdout.splitlines()
    assert Path(path).is_relative_to(installed) and configs == "['cifar10', 'cifar10_subset']"


def test_the_command_runs_a_shipped_config_from_another_directory(installed, tmp_path):
    script = installed / "bin" / "maskednas"  # the console script pip wrote
    help_text = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(installed)})
    assert help_text.returncode == 0 and "commands: run, front, latency, inspect, configs" in help_text.stdout
    done = outside(installed, tmp_path, "-m", "maskednas", "run", "--config", "digits",
                   "search.epochs=1", "search.warmup_epochs=0", "finetune.epochs=0",
                   "data.batch_size=256", "name=r", "threads=2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / "r" / "export" / "model.safetensors").is_file()
    shown = outside(installed, tmp_path, "-m", "maskednas", "inspect", "runs/r/export")
    assert shown.returncode == 0 and shown.stdout.startswith("macro network: 8x8 input"), shown.stderr
    assert "MACs" in shown.stdout and "test_acc" in shown.stdout
