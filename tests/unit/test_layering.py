"""The house's layering (DESIGN.md §2): jobs -> actors -> reasonrec, never back; no import cycle; no stage imports
another stage. Every import counts, also the ones inside functions (a lazy import is still a dependency)."""
import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("reasonrec", "actors", "jobs")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, name: str, known: dict) -> set[str]:
    """The project modules ``name`` (at ``path``) imports: ``from a import b`` names a.b when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in out if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, name, known) - {name} for name, path in known.items()}


def test_the_library_imports_nothing_from_its_shells():
    edges = graph()
    wrong = {m: sorted(i for i in imported if i.split(".")[0] in ("actors", "jobs"))
             for m, imported in edges.items() if m.split(".")[0] == "reasonrec"}
    assert not {m: i for m, i in wrong.items() if i}
    upward = {m: sorted(i for i in imported if i.split(".")[0] == "jobs")
              for m, imported in edges.items() if m.split(".")[0] == "actors"}
    assert not {m: i for m, i in upward.items() if i}, "actors are shells the jobs wire, not the other way"


def test_no_import_cycle():
    edges = graph()
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_no_stage_imports_another_stage():
    edges = graph()
    stages = {m for m in edges if m.endswith("_stage")}
    assert len(stages) >= 4
    assert not {m: sorted(edges[m] & stages) for m in stages if edges[m] & stages}


def test_the_check_sees_a_cycle_and_a_lazy_import(tmp_path):
    """The checker itself: a lazy import inside a function is an edge, and two modules importing each other form a
    cycle (so the tests above cannot pass by looking at nothing)."""
    (tmp_path / "a.py").write_text("def f():\n    from b import g\n")
    (tmp_path / "b.py").write_text("import a\n")
    known = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert imports(known["a"], "a", known) == {"b"} and imports(known["b"], "b", known) == {"a"}
    assert sum(len(v) for v in graph().values()) > 100  # the project's own graph is not empty


def test_no_job_module_shadows_an_installed_package():
    """``python jobs/NAME.py`` (what ``ray job submit`` runs) puts jobs/ first on the path: a job module named like an
    installed package (``requests``, ``evaluate``) would replace it for everything the job imports."""
    import pkgutil
    import sys

    jobs = {p.stem for p in (REPO / "jobs").glob("*.py") if not p.stem.startswith("_")}
    paths = [p for p in sys.path if p and Path(p).resolve() != REPO]
    installed = {m.name for m in pkgutil.iter_modules(paths)}
    assert "requests" in installed and not jobs & installed, jobs & installed
