"""The import graph of the project's own modules (lib/, models/ and the top-level scripts), read
with Python's ast: no module imports one that imports it back, directly or through others."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def own_modules():
    """{module name: path} of lib/*, models/* and the top-level scripts."""
    found = {p.stem: p for p in ROOT.glob("*.py")}
    for package in ("lib", "models"):
        for path in (ROOT / package).glob("*.py"):
            if path.stem != "__init__":
                found[f"{package}.{path.stem}"] = path
    return found


def imports_of(path, modules):
    """The project modules that ``path`` imports (at the top or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        out |= {name for name in names if name in modules}
    return out


def find_cycle(graph):
    """One cycle of ``graph`` ({node: set of nodes}) as a list, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    modules = own_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    assert "lib.retrieval" in graph["lib.eval"]  # the reader sees the imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
