"""Every SQL statement of innera and its workers is named at its call site, with a literal.

The name is the ``name`` label of ``innera_db_query_duration_seconds`` and
``innera_db_query_errors_total`` and the description of the statement's Sentry span, so it
must exist (an unnamed statement is lumped into ``unnamed``), be stable and readable
(``<area>.<what>``, lower case) and come from the code, never from data (a label set bounded
by the code). This test reads the source with ``ast``:

- every ``.execute(``, ``.executemany(``, ``.stream(`` and ``.copy(`` call passes
  ``name=`` a string literal of :data:`NAME`, or the ``name`` parameter of the function it is
  in: a *forwarder*, a private helper that runs statements for its callers;
- every call of a forwarder passes ``name=`` the same way (forwarders may forward further);
- the calls that are not innera's statements are listed in :data:`NOT_STATEMENTS`.

:func:`query_names` is the set of names the code can produce; a live server's ``/metrics``
may show no other (``tests/test_observability.py``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("innera", "workers")
STATEMENT_METHODS = frozenset({"execute", "executemany", "stream", "copy"})
NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")

#: (file, receiver as written): calls of those method names that are not statements run
#: through innera's connection
NOT_STATEMENTS = {
    # the adapter itself, handing the named statement on (to its cursor, to psycopg)
    ("innera/db/connection.py", "cur"): "TrioConnection.execute: its cursor's execute",
    ("innera/db/cursor.py", "super()"): "TrioCursor: psycopg's cursor",
    # the embedded PostgreSQL's bootstrap, before any pool: psycopg's blocking connection
    ("innera/embedded.py", "conn"): "a blocking psycopg connection creating the database",
    # an HTTP request, not SQL
    ("workers/push_providers.py", "client"): "httpx.AsyncClient.stream",
}


@dataclass
class Findings:
    names: dict[str, set[str]] = field(default_factory=dict)  # name → the files using it
    problems: list[str] = field(default_factory=list)
    forwarders: dict[str, set[str]] = field(default_factory=dict)  # file → function names


def _functions(tree: ast.AST) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef | None,
                                                ast.Call]]:
    """Every call with the innermost function it is in (None: module level)."""
    def walk(node: ast.AST, func: ast.FunctionDef | ast.AsyncFunctionDef | None
             ) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef | None, ast.Call]]:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else func
            if isinstance(child, ast.Call):
                yield func, child
            yield from walk(child, inner)
    yield from walk(tree, None)


def _parameters(func: ast.FunctionDef | ast.AsyncFunctionDef | None) -> set[str]:
    if func is None:
        return set()
    a = func.args
    return {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)}


def check_source(relative: str, source: str, forwarders: set[str], findings: Findings
                 ) -> set[str]:
    """Check one module's statements and the calls of its ``forwarders``; returns the
    functions found forwarding a name (to be checked as forwarders in turn)."""
    new: set[str] = set()
    for func, call in _functions(ast.parse(source)):
        target = call.func
        callee = (target.attr if isinstance(target, ast.Attribute)
                  else target.id if isinstance(target, ast.Name) else None)
        statement = (isinstance(target, ast.Attribute) and callee in STATEMENT_METHODS
                     and (relative, ast.unparse(target.value)) not in NOT_STATEMENTS)
        if not statement and callee not in forwarders:
            continue
        where = f"{relative}:{call.lineno} {ast.unparse(target)}(…)"
        given = next((k.value for k in call.keywords if k.arg == "name"), None)
        if isinstance(given, ast.Constant) and isinstance(given.value, str):
            if NAME.match(given.value):
                findings.names.setdefault(given.value, set()).add(relative)
            else:
                findings.problems.append(f"{where}: name {given.value!r} is not <area>.<what>")
        elif isinstance(given, ast.Name) and given.id == "name" and func is not None \
                and "name" in _parameters(func):
            if not func.name.startswith("_"):
                findings.problems.append(f"{where}: {func.name} forwards a statement name "
                                         "but is public: name the statements inside it")
            new.add(func.name)
        elif given is None:
            findings.problems.append(f"{where}: no name= (a statement needs a literal name)")
        else:
            findings.problems.append(f"{where}: name= {ast.unparse(given)} is not a literal")
    return new


@cache
def scan() -> Findings:
    """Check innera/ and workers/ (forwarders resolved to a fixpoint, per module)."""
    findings = Findings()
    sources = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
               for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}
    for relative, source in sources.items():
        forwarders: set[str] = set()
        while True:
            trial = Findings()
            found = check_source(relative, source, forwarders, trial)
            if found <= forwarders:
                break
            forwarders |= found
        findings.problems += trial.problems
        for name, files in trial.names.items():
            findings.names.setdefault(name, set()).update(files)
        if forwarders:
            findings.forwarders[relative] = forwarders
    return findings


def query_names() -> set[str]:
    """Every statement name the code can produce."""
    return set(scan().names)


def test_every_statement_has_a_literal_name() -> None:
    assert scan().problems == []


def test_names_are_many_and_each_belongs_to_one_module() -> None:
    """A name points at one module: two modules sharing one could not be told apart."""
    names = scan().names
    assert len(names) >= 80
    shared = {name: sorted(files) for name, files in names.items() if len(files) > 1}
    assert shared == {}
    assert {"accounts.create", "auth.user_by_email", "entries.read", "entries.insert",
            "search.scan", "imports.copy_entries", "jobs.mark_running"} <= set(names)


def test_the_forwarders_are_the_known_private_helpers() -> None:
    assert scan().forwarders == {
        "innera/jobs/tables.py": {"_update"},
        "workers/account_deletion.py": {"_execute", "_delete_batched"},
    }


def test_the_checker_catches_what_it_must() -> None:
    source = '''
async def unnamed(conn):
    await conn.execute("SELECT 1")

async def dynamic(conn, table):
    await conn.execute("SELECT 1", name=f"{table}.read")

async def badly_named(conn):
    await conn.cursor().execute("SELECT 1", name="Entries Read")

async def _helper(conn, *, name):
    await conn.execute("SELECT 1", name=name)

async def calls_helper(conn):
    await _helper(conn)

async def forwards_twice(conn, name):
    await _helper(conn, name=name)

async def fine(conn):
    async with conn.cursor().copy("COPY t FROM STDIN", name="t.copy"):
        pass
'''
    findings = Findings()
    forwarders: set[str] = set()
    while True:
        trial = Findings()
        found = check_source("x.py", source, forwarders, trial)
        if found <= forwarders:
            break
        forwarders |= found
    problems = "\n".join(trial.problems)
    assert "x.py:3 conn.execute(…): no name=" in problems
    assert "x.py:6 conn.execute(…): name= f'{table}.read' is not a literal" in problems
    assert "'Entries Read' is not <area>.<what>" in problems
    assert "x.py:15 _helper(…): no name=" in problems
    assert "forwards_twice forwards a statement name but is public" in problems
    assert len(trial.problems) == 5
    assert set(trial.names) == {"t.copy"} and forwarders == {"_helper", "forwards_twice"}
    assert findings.problems == []
