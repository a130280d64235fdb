"""The import graph of the project's own modules (lib/, models/ and the top-level scripts), read
with Python's ast: no module imports one that imports it back, directly or through others, and no
module imports from a higher layer than its own (the layers of the README's layout section)."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def own_modules():
    """{module name: path} of lib/, models/ (their sub-packages too) and the top-level scripts."""
    found = {p.stem: p for p in ROOT.glob("*.py")}
    for package in ("lib", "models"):
        for path in (ROOT / package).rglob("*.py"):
            if path.stem != "__init__":
                parts = path.relative_to(ROOT).with_suffix("").parts
                found[".".join(parts)] = path
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


def readme_layers():
    """{module name: layer number} from the rows '| N name | `path`, ... | what |' of the
    README's layout section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for line in section.splitlines():
        row = re.match(r"\| (\d+) [^|]*\| ([^|]+) \|", line)
        if row is None:
            continue
        for path in re.findall(r"`([\w/]+)\.py`", row.group(2)):
            name = path.replace("/", ".")
            assert name not in layers, f"{path} is in two layers of the README"
            layers[name] = int(row.group(1))
    return layers


def upward_imports(graph, layers):
    """['a (layer 2) imports b (layer 3)', ...]: the imports that point up."""
    return [
        f"{module} (layer {layers[module]}) imports {other} (layer {layers[other]})"
        for module in sorted(graph)
        for other in sorted(graph[module])
        if layers[other] > layers[module]
    ]


def test_every_module_has_a_layer_and_imports_point_down():
    modules = own_modules()
    layers = readme_layers()
    unplaced = sorted(set(modules) - set(layers))
    assert not unplaced, f"modules without a layer in the README's layout: {unplaced}"
    gone = sorted(set(layers) - set(modules))
    assert not gone, f"the README's layout names modules that do not exist: {gone}"
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    assert layers["lib.errors"] < layers["lib.config"] < layers["lib.model_base"] < layers["train"]
    assert upward_imports(graph, layers) == []


def test_the_layer_check_finds_an_upward_import():
    layers = {"lib.low": 1, "lib.high": 2}
    assert upward_imports({"lib.low": {"lib.high"}, "lib.high": set()}, layers) == [
        "lib.low (layer 1) imports lib.high (layer 2)"
    ]
    assert upward_imports({"lib.low": set(), "lib.high": {"lib.low"}}, layers) == []
