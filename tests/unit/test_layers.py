"""Imports point down the request's path (DESIGN.md section 1, issue 11 item 6).

Every import under ``src/ferryman`` is read with `ast`, including those under
``if TYPE_CHECKING:`` and those inside functions: a circle hidden behind either
is still a circle.  Two rules:

1. **Layers.**  A module may import its own room, a room on the same row, or a
   room on a lower row of `LAYERS` below; never a higher row.  A module's room
   is the longest prefix of its dotted name that the table lists.
2. **No cycles between modules.**  Cycles are checked module by module, the
   granularity Python executes (a module cycle is what forces TYPE_CHECKING and
   function-local imports).  Packages on different rows cannot form a cycle
   without an upward import, which rule 1 already refuses; packages on the same
   row (pipeline's admit / route / cache and its phase framework) are peers
   whose order is the runtime phase list compiled per Plan, not an import
   order: ``pipeline/stage.py``'s decisions carry route's `Target` while the
   routers return those decisions, a loop of packages with none of modules.

The order, top (may import everything below) to bottom, and where it departs
from the path ``accept -> parse -> admit -> route -> cache -> upstream ->
respond -> log``:

====  ===========================  ==================================================
row   rooms                        why here
====  ===========================  ==================================================
0     __main__                     ``python -m ferryman``
1     cli                          argv -> config -> server
2     config                       compiles the Plan, so it imports every room's
                                   Plan types (a room owns the types it reads)
3     server, observe.admin        ACCEPT.  The admin API is a second listener that
                                   reads the running engine: an entry point beside
                                   server/, although DESIGN files it under observe/
4     conn                         the asyncio edge
5     pipeline                     ADMIT, ROUTE, CACHE, the phase framework and
                                   respond: peers (see rule 2); plan.py holds the
                                   root `Plan`, which each request's context carries
6     upstream                     UPSTREAM: server choice (balancer, health), pool,
                                   dial, connection
7     observe                      LOG sinks (access log, metrics), called from above
8     http1                        PARSE comes second on the path but is the pure
                                   vocabulary (events, headers, serialize) that every
                                   later room speaks, so it sits below them all
9     errors, ferryman             the error table; the package's own ``__init__``
====  ===========================  ==================================================
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("ferryman.__main__",),
    ("ferryman.cli",),
    ("ferryman.config",),
    ("ferryman.server", "ferryman.observe.admin"),
    ("ferryman.conn",),
    ("ferryman.pipeline",),
    ("ferryman.upstream",),
    ("ferryman.observe",),
    ("ferryman.http1",),
    ("ferryman.errors", "ferryman"),
)

# Import cycles still to be cut.  Empty since the conn/ circle was cut (issue 11 item 5:
# the connection's parts see it as `conn/client.py` `ClientConn`).  Add nothing: a new
# circle is cut, not listed.
KNOWN_CYCLE_EDGES: frozenset[tuple[str, str]] = frozenset()


# ---------------------------------------------------------------- the graph


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package ``__init__``) for every module of ferryman."""
    out = {}
    for path in sorted((SRC / "ferryman").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _modules()
Edges = dict[str, dict[str, int]]  # importer -> {imported: first line}


def _known(name: str) -> str:
    """The module an import of ``name`` loads: itself, or its closest enclosing package."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> Iterable[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "ferryman" or alias.name.startswith("ferryman."):
                yield _known(alias.name)
        return
    if node.level:
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source != "ferryman" and not source.startswith("ferryman."):
        return
    for alias in node.names:  # ``from pkg import mod`` loads the module pkg.mod
        full = f"{source}.{alias.name}"
        yield full if full in MODULES else _known(source)


def _parents(name: str) -> Iterable[str]:
    parts = name.split(".")
    for i in range(1, len(parts)):
        yield ".".join(parts[:i])


def import_graph(implicit: bool = False) -> Edges:
    """Every ferryman -> ferryman import, anywhere in the file (TYPE_CHECKING, functions).

    Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``: with
    ``implicit`` those count too (for cycles), except the importer's own
    enclosing packages (already loading).
    """
    edges: Edges = {}
    for name, (path, is_pkg) in MODULES.items():
        package = name if is_pkg else name.rpartition(".")[0]
        own = set(_parents(name))
        out: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(node, package):
                for t in (*_parents(target), target) if implicit else (target,):
                    if t != name and t not in own and t in MODULES:
                        out.setdefault(t, node.lineno)
        edges[name] = out
    return edges


def row_of(module: str) -> int:
    best, row = "", -1
    for i, rooms in enumerate(LAYERS):
        for room in rooms:
            if (module == room or module.startswith(room + ".")) and len(room) > len(best):
                best, row = room, i
    assert row >= 0, f"{module} is in no row of LAYERS: add its room to the table"
    return row


def cycles(edges: Edges, ignored: frozenset[tuple[str, str]] = frozenset()) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph = {a: [b for b in sorted(bs) if (a, b) not in ignored] for a, bs in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            succ = graph.get(v, [])
            if i < len(succ):
                work.append((v, i + 1))
                w = succ[i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return found


def _render(edges: Edges, comp: list[str]) -> str:
    inside = set(comp)
    return "\n".join(
        f"    {a} -> {b}  (line {edges[a][b]})" for a in comp for b in sorted(edges[a]) if b in inside
    )


# ---------------------------------------------------------------- the rules

EDGES = import_graph()
ALL_EDGES = import_graph(implicit=True)  # with the package __init__s an import runs


def test_every_module_has_a_row() -> None:
    for name in MODULES:
        row_of(name)


def test_imports_point_down() -> None:
    upward = sorted(
        (a, b, line)
        for a, bs in EDGES.items()
        for b, line in bs.items()
        if row_of(b) < row_of(a)
    )
    assert not upward, "imports from a lower layer to a higher one (see LAYERS):\n" + "\n".join(
        f"    {a} (row {row_of(a)}) -> {b} (row {row_of(b)}), line {line}" for a, b, line in upward
    )


def test_no_import_cycles() -> None:
    found = cycles(ALL_EDGES, KNOWN_CYCLE_EDGES)
    assert not found, "import cycles:\n" + "\n\n".join(_render(ALL_EDGES, c) for c in found)


def test_known_cycle_edges_still_close_a_cycle() -> None:
    in_cycle = {(a, b) for c in cycles(ALL_EDGES) for a in c for b in c if b in ALL_EDGES[a]}
    stale = sorted(KNOWN_CYCLE_EDGES - in_cycle)
    assert not stale, f"no longer on an import cycle: delete from KNOWN_CYCLE_EDGES: {stale}"


# ---------------------------------------------------------------- the checker itself


def test_checker_sees_hidden_imports() -> None:
    """TYPE_CHECKING blocks, function-local and relative imports all count."""
    assert "ferryman.conn.client" in EDGES["ferryman.conn.cache_flow"]  # under TYPE_CHECKING
    assert "ferryman.config.load" in EDGES["ferryman.config.compile"]  # inside build_plan()
    src = (
        "if TYPE_CHECKING:\n    from .router import Target\n"
        "def f():\n    from ..stage import Decision\n    from .. import stage\n    import ferryman.errors\n"
    )
    found = {
        t
        for n in ast.walk(ast.parse(src))
        if isinstance(n, ast.Import | ast.ImportFrom)
        for t in _targets(n, "ferryman.pipeline.route")
    }
    assert found == {"ferryman.pipeline.route.router", "ferryman.pipeline.stage", "ferryman.errors"}


def test_cycle_finder() -> None:
    edges: Edges = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles(edges, frozenset({("c", "a")})) == []
    assert row_of("ferryman.observe.admin") < row_of("ferryman.conn.engine")
    assert row_of("ferryman.conn.engine") < row_of("ferryman.observe.access_log")
