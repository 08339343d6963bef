"""The package's dependencies run one way: each layer imports only the layers below it, and
no module is part of an import cycle, function-level (lazy) imports included. Read from the
source, so a cycle that happens not to break at import time is still caught."""

import ast
import re
from pathlib import Path

import qstar_dagster

ROOT = Path(qstar_dagster.__file__).parent

# Lowest first. A module belongs to the first layer whose prefix it has; `lineage` (the store,
# its schema, and its typed readers and writers) sits under every stage, which all record.
LAYERS = [
    ("core", ("qstar_dagster", "qstar_dagster.spec")),  # the root (sets the environment), the spec helper
    ("tasks", ("qstar_dagster.tasks",)),
    ("lineage", ("qstar_dagster.lineage",)),
    ("generation", ("qstar_dagster.generation",)),
    ("search", ("qstar_dagster.search",)),
    ("labeling", ("qstar_dagster.labeling",)),
    ("datasets", ("qstar_dagster.datasets",)),
    ("training", ("qstar_dagster.training",)),
    ("evaluation", ("qstar_dagster.evaluation",)),
    ("orchestration", ("qstar_dagster.plots", "qstar_dagster.resources", "qstar_dagster.automation", "qstar_dagster.assets",
                       "qstar_dagster.jobs", "qstar_dagster.rounds", "qstar_dagster.definitions",
                       "qstar_dagster.cli")),
]


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = ("qstar_dagster",) + p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its source."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def layer(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # the bare root names itself only, so that a new package must be given a layer
            matches = module == prefix or (prefix != "qstar_dagster" and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[1]):  # the longest prefix decides
                best = (i, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_architecture.py; add it to LAYERS"
    return best[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_layers_import_only_downwards():
    upward = [f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
              for m, targets in import_graph().items() for t in sorted(targets) if layer(t) > layer(m)]
    assert upward == []


def test_only_orchestration_imports_dagster():
    """Pure cores, thin Dagster wrappers: a stage's logic runs and is tested without Dagster."""
    orchestration = len(LAYERS) - 1
    offenders = []
    for name, path in modules().items():
        if layer(name) == orchestration:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{name} imports {n}" for n in names if n.split(".")[0] == "dagster"]
    assert offenders == []


def test_the_checks_catch_what_they_look_for():
    """The graph reader sees lazy imports, and the checks flag a cycle and an upward import."""
    graph = import_graph()
    assert "qstar_dagster.labeling.pipeline" in graph["qstar_dagster.training.prm"]  # imported in a function
    bad = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(bad) == [["a", "b", "c"]]
    assert layer("qstar_dagster.search.value") < layer("qstar_dagster.training.prm")


SQL = re.compile(r"\b(SELECT\b.*\bFROM|INSERT INTO|DELETE FROM|UPDATE \w+ SET|CREATE (OR REPLACE )?(TABLE|VIEW))\b",
                 re.DOTALL)


def sql_outside_lineage() -> list[str]:
    out = []
    for name, path in modules().items():
        if name.startswith("qstar_dagster.lineage"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                out.append(f"{name}:{node.lineno}")
    return out


def test_sql_lives_in_lineage():
    """Stages read and write the store through lineage/'s typed readers and writers (the
    `qstar sql` command runs the user's own query, which is no literal)."""
    assert sql_outside_lineage() == []
    assert SQL.search('f"""SELECT a\n FROM t WHERE x"""') and not SQL.search("qstar sql \"select * from trees\"")


def test_every_module_imports_and_every_imported_name_exists():
    """A name moved between modules leaves no stale import behind, lazy (function-level)
    imports and the bench scripts included: each `from qstar_dagster.x import name` names
    something x has."""
    import importlib

    missing = []
    bench = {f"bench/{p.name}": p for p in sorted((ROOT.parent / "bench").glob("*.py"))}  # scripts: read, not run
    for name, path in sorted(modules().items()) + list(bench.items()):
        if name in modules():
            importlib.import_module(name)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("qstar_dagster"):
                module = importlib.import_module(node.module)
                missing += [f"{name}:{node.lineno} {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name) and f"{node.module}.{a.name}" not in modules()]
    assert missing == []
