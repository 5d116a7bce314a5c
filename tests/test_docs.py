"""The docs stay true: the Python blocks of docs/extending.md run, every public name of
`maskednas` has a docstring example and the examples pass (doctest), and README.md stays a
front door (at most 250 lines, every local link resolving)."""
from __future__ import annotations

import doctest
import importlib
import inspect
import re
from pathlib import Path

import pytest

import maskednas

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_the_worked_examples_of_extending_md_run():
    blocks = python_blocks(ROOT / "docs" / "extending.md")
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/extending.md", "exec"), namespace)


def documented(name: str):
    """The object whose docstring documents a public name (a registry: its defining module)."""
    obj = getattr(maskednas, name)
    if inspect.isfunction(obj) or inspect.isclass(obj):
        return obj
    return importlib.import_module(maskednas._HOMES[name])


@pytest.mark.parametrize("name", maskednas.__all__)
def test_every_public_name_has_a_passing_docstring_example(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write, write here
    obj = documented(name)
    tests = [t for t in doctest.DocTestFinder(recurse=False).find(obj, name) if t.examples]
    assert tests, f"maskednas.{name} has no docstring example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    assert runner.failures == 0


def test_the_package_docstring_example_names_public_functions():
    for name in re.findall(r"maskednas\.(\w+)\(", maskednas.__doc__):
        assert name in maskednas.__all__, name


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


# results whose docs tables are laid out differently (summarised per preset or per rank count)
REWORDED = {"default_run.md", "ddp-throughput.md", "ddp-throughput-b256.md"}


@pytest.mark.parametrize("results", sorted(p.name for p in (ROOT / "benchmarks" / "results").glob("*.md")
                                           if p.name not in REWORDED))
def test_the_docs_tables_are_the_results_files(results):
    """Every figure row of a results table stands verbatim in docs/benchmarks.md: a figure
    edited by hand, or a results file re-measured without the docs, fails here."""
    docs = set((ROOT / "docs" / "benchmarks.md").read_text().splitlines())
    rows = [line for line in (ROOT / "benchmarks" / "results" / results).read_text().splitlines()
            if line.startswith("|") and not set(line) <= set("|-: ")]
    assert rows and [r for r in rows if r not in docs] == []
