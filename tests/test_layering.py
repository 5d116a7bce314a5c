"""The rooms and their order, as a checked contract: a room imports only rooms below it, never
one above and never itself through another (so no cycle), and nothing imports the project by
a bare top-level name (`import ops`) or through `sys.path` tricks. The table is the README's."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# from the bottom up; a room may import the rooms before it in this list
ROOMS = ["common", "ops", "parallel", "datasource", "export", "latency", "supernet", "derive",
         "training", "search", "pipeline", "command"]
COMMAND = {"cli", "train", "__init__", "__main__"}  # the root's modules: the command and the API
LIBRARY_ROOMS = set(ROOMS) - {"command"}


def room_of(module: str) -> str | None:
    """The room of a dotted module name inside the package (None: outside it)."""
    parts = module.split(".")
    if parts[0] != "maskednas":
        return None
    # `maskednas` itself and its public names (`from maskednas import load`) are the API's
    return parts[1] if len(parts) > 1 and parts[1] in LIBRARY_ROOMS else "command"


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative imports resolved."""
    package = ["maskednas", *path.relative_to(root).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if module == "maskednas":  # from maskednas import parallel: the names are the modules
                found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, module))
    return found


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for room in ROOMS:
        files = ([root / f"{m}.py" for m in sorted(COMMAND)] if room == "command"
                 else sorted((root / room).rglob("*.py")))
        allowed = set(ROOMS[:ROOMS.index(room)]) | {room}
        for path in files:
            for line, module in imports(path, root):
                where = f"{path.relative_to(root)}:{line}"
                if module.split(".")[0] in LIBRARY_ROOMS:
                    bad.append(f"{where} imports {module!r} by a bare name; write maskednas.{module}")
                target = room_of(module)
                if target is not None and target not in allowed:
                    bad.append(f"{where}: {room} imports {module} ({target} is above it)")
    return bad


def test_every_room_imports_only_rooms_below_it():
    assert violations() == []


def test_every_installed_subpackage_is_a_room():
    """A new top-level folder must take its place in the order."""
    import tomllib
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert {p.split(".")[1] for p in packages if p.count(".") >= 1} == LIBRARY_ROOMS | {"configs"}
    assert not list((ROOT / "configs").glob("*.py"))  # configs/ holds data only


def test_the_check_fails_on_a_planted_upward_import(tmp_path):
    """An upward import, a bare one and a relative one that climbs are each caught."""
    for room in LIBRARY_ROOMS:
        (tmp_path / room).mkdir()
    for name in COMMAND:
        (tmp_path / f"{name}.py").write_text("")
    (tmp_path / "ops" / "planted.py").write_text("from maskednas.search.loop import Searcher\n")
    (tmp_path / "export" / "bare.py").write_text("import ops\n")
    (tmp_path / "derive" / "relative.py").write_text("from ..pipeline import run\n")
    (tmp_path / "supernet" / "fine.py").write_text("from maskednas.export import build\n")
    assert sorted(violations(tmp_path)) == [
        "derive/relative.py:1: derive imports maskednas.pipeline (pipeline is above it)",
        "export/bare.py:1 imports 'ops' by a bare name; write maskednas.ops",
        "ops/planted.py:1: ops imports maskednas.search.loop (search is above it)"]


def edits_sys_path(path: Path) -> bool:
    """Whether the file calls sys.path.insert/append/extend."""
    return any(isinstance(n, ast.Attribute) and n.attr in ("insert", "append", "extend")
               and ast.unparse(n.value) == "sys.path" for n in ast.walk(ast.parse(path.read_text())))


@pytest.mark.parametrize("folder", ["benchmarks", "tests"])
def test_benchmarks_and_tests_use_the_installed_package(folder):
    """No `sys.path` edits and no bare top-level imports of the project's rooms."""
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if edits_sys_path(path):
            bad.append(f"{path.relative_to(ROOT)} edits sys.path")
        bad += [f"{path.relative_to(ROOT)}:{line} imports {module}" for line, module in imports(path)
                if module.split(".")[0] in LIBRARY_ROOMS]
    assert bad == []
