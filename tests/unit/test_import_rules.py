"""Dependencies point one way, read from the imports themselves (ast), so a
rule broken by a new import fails here:

- ``contracts`` (what the services agree on) imports nothing of the project;
- ``reliable_events`` (the machinery meant to be lifted out whole) imports
  nothing of the project either: metrics are handed to it;
- a migration imports no live code: what it needs, it holds (live code
  changes, the past must not);
- ``ops`` (the operator's commands) imports no service's internals;
- the gateway imports nothing of person or score, nor the persistence of
  ``reliable_events``: what it shares with them is in ``contracts``.
"""

import ast
from pathlib import Path

import pytest

from harness.processes import ROOT

PROJECT = ("contracts", "reliable_events", "observability", "ops", "gateway", "person", "score", "harness", "bench")
SERVICES = ("person", "score", "gateway")
# reliable_events' modules that keep state in a database: the services' business, not the gateway's.
PERSISTENCE = (
    "reliable_events.outbox",
    "reliable_events.inbox",
    "reliable_events.idempotency",
    "reliable_events.group_commit",
    "reliable_events.tables",
    "reliable_events.database",
)


def imports_of(path: Path) -> set:
    """The project modules ``path`` imports (absolute names), wherever in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PROJECT}


def files(package: str, migrations: bool = False):
    for path in sorted((ROOT / package).rglob("*.py")):
        if ("migrations" in path.parts) == migrations:
            yield path


def outside(package: str, names) -> set:
    return {name for name in names if name.split(".")[0] != package}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", list(files("contracts")), ids=rel)
def test_contracts_import_nothing_of_the_project(path):
    assert not outside("contracts", imports_of(path))


@pytest.mark.parametrize("path", list(files("reliable_events")), ids=rel)
def test_reliable_events_imports_nothing_of_the_project(path):
    assert not outside("reliable_events", imports_of(path))


@pytest.mark.parametrize(
    "path", [p for s in ("person", "score") for p in files(s, migrations=True) if "versions" in p.parts], ids=rel
)
def test_a_migration_imports_no_live_code(path):
    assert not imports_of(path)


@pytest.mark.parametrize("path", list(files("ops")), ids=rel)
def test_ops_imports_no_services_internals(path):
    assert not {name for name in imports_of(path) if name.split(".")[0] in SERVICES}


@pytest.mark.parametrize("path", list(files("gateway")), ids=rel)
def test_the_gateway_imports_nothing_of_person_score_or_persistence(path):
    names = imports_of(path)
    assert not {n for n in names if n.split(".")[0] in ("person", "score")}
    assert not {n for n in names if n.startswith(PERSISTENCE)}


def test_the_rules_see_an_import_that_breaks_them(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import json\nfrom reliable_events.outbox import Outbox\ndef f():\n    import score.rules\n")
    assert imports_of(probe) >= {"reliable_events.outbox", "score.rules"}
