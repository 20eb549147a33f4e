"""The shape of the code: dependencies point api -> destinations -> projections ->
ledger, no module imports itself back (imports inside functions count too), the CLI's parser loads
none of the engine (so `hookledger --help` answers at once), and only the recorder
(`ledger.recorder`) names a backend or reaches the log table."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"ledger": 0, "projections": 1, "destinations": 2, "api": 3}


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}


def _ours(name: str) -> str | None:
    """The module of ours that an import of `name` loads (a package for its members)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(t for n in names if (t := _ours(n)) is not None and t != module)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def test_the_graph_is_read_from_every_module():
    assert {"ledger.recorder", "projections.worker", "api.app", "api.cli"} <= GRAPH.keys()
    assert "ledger.recorder" in GRAPH["projections.worker"]


def test_dependencies_point_one_way():
    against = [
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        for t in targets
        if LAYERS[t.split(".")[0]] > LAYERS[m.split(".")[0]]
    ]
    assert against == []


def test_no_module_imports_itself_back():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_cli_parser_loads_none_of_the_engine():
    probe = (
        "import sys; from api.cli import build_parser; build_parser(); "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'starlette', 'jinja2', 'uvicorn', 'psycopg', 'alembic'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == []


# Where each backend's differences may be spelled out: the recorder, and the config's
# check of a URL's scheme (it runs before any database code is imported).
BACKEND_MODULES = ("ledger.recorder", "ledger.config")
DRIVERS = ("sqlite3", "psycopg", "sqlalchemy.dialects")
BACKEND_NAMES = {"sqlite", "postgresql", "postgres"}
LOG_TABLE_SQL = ("FROM events", "INTO events", "UPDATE events", "JOIN events")


def _backend_words(module: str) -> list[str]:
    """What in `module` names a backend or reaches the log table around the recorder."""
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith(DRIVERS)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(DRIVERS):
                found.append(node.module)
            if node.module == "ledger.recorder.schema" and "events" in [a.name for a in node.names]:
                found.append("import of the events table")
        elif isinstance(node, ast.Attribute) and node.attr == "paramstyle":
            found.append(node.attr)
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "name"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "dialect"
        ):
            found.append("dialect.name")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [repr(node.value)] if node.value in BACKEND_NAMES else []
            found += [f"SQL {s!r}" for s in LOG_TABLE_SQL if s in node.value]
    return found


def test_no_module_outside_the_recorder_names_a_backend_or_reads_the_log_around_it():
    outside = [m for m in MODULES if not m.startswith(BACKEND_MODULES)]
    assert "projections.worker" in outside and "api.console.event_log" in outside
    found = {m: words for m in outside if (words := _backend_words(m))}
    assert found == {}


def test_the_backend_check_sees_what_it_forbids():
    assert "psycopg" in _backend_words("ledger.recorder.postgres")
    assert "dialect.name" in _backend_words("ledger.recorder")
    assert "import of the events table" in _backend_words("ledger.recorder.base")
    assert "SQL 'FROM events'" in _backend_words("ledger.recorder.postgres")
