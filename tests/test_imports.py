"""The package's import graph, parsed from the source (imports inside functions count too): no cycles, the core
never imports the command line or the tools, and the rewards never import torch or the config."""

import ast
from pathlib import Path

from deepseek_rl.paths import PACKAGE_DIR

PACKAGE = "deepseek_rl"
# Entry points: thin modules whose job is to import the command line.
ENTRY = {"deepseek_rl.train", "deepseek_rl.cli.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}


def imported(path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(modules of this package, top-level names of other packages) that `path` imports anywhere in it."""
    inner, outer = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from a.b import c`: c may be a submodule (a.b.c) or a name defined in a.b
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n if n in known else node.module for n in names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == PACKAGE:
                inner.add(name if name in known else name.rsplit(".", 1)[0])
            else:
                outer.add(name.split(".")[0])
    return inner, outer


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    found = modules()
    edges, external = {}, {}
    for name, path in found.items():
        edges[name], external[name] = imported(path, set(found))
    return edges, external


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def closure(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return seen


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_parser_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from deepseek_rl.config import schema\n    import torch\n")
    inner, outer = imported(source, {"deepseek_rl.config", "deepseek_rl.config.schema"})
    assert inner == {"deepseek_rl.config.schema"} and outer == {"torch"}


def test_no_import_cycles():
    edges, _ = graph()
    assert len(edges) > 50  # the whole package was parsed
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_the_core_does_not_import_the_command_line_or_the_tools():
    edges, _ = graph()
    outside = ("deepseek_rl.cli", "deepseek_rl.tools")
    for name, targets in edges.items():
        if name in ENTRY or name.startswith(outside):
            continue
        bad = sorted(t for t in targets if t.startswith(outside))
        assert not bad, f"{name} imports {bad}"


def test_the_rewards_import_neither_torch_nor_the_config():
    edges, external = graph()
    for name in (n for n in edges if n.startswith("deepseek_rl.rewards")):
        reached = closure(edges, name)
        assert not any(r.startswith("deepseek_rl.config") for r in reached), f"{name} reaches the config"
        assert not any("torch" in external[r] for r in reached), f"{name} reaches torch"


# The architecture table's layers, lowest first (docs/architecture.md): a module imports only its own package and
# the layers below its own. A module belongs to the layer of its longest matching name.
LAYERS = [
    ("", "errors", "paths"),  # "": the package's __init__ (__version__; `train` and `load_recipe` imported lazily)
    ("hub",),
    ("sandbox",),
    ("rewards",),
    ("data.tasks", "data.transforms"),  # the procedural tasks and row transforms, which the config names
    ("config",),
    ("batch",),
    ("data",),
    ("models", "algo"),
    ("infra", "preflight"),
    ("rollout",),
    ("stages",),
    ("api",),
    ("cli",),
    ("train",),
    ("tools",),
]
# The one edge upwards: the package's __init__ imports api on first use of `deepseek_rl.train` (PEP 562 __getattr__)
LAZY = {("", "api")}


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the matching name) of a module of the package."""
    short = module.removeprefix(PACKAGE).lstrip(".")
    best = max(
        ((i, name) for i, names in enumerate(LAYERS) for name in names
         if short == name or short.startswith(name + ".") or (name == "" and short == "")),
        key=lambda found: len(found[1]),
    )  # fmt: skip
    return best


def test_every_import_follows_the_layer_order():
    edges, _ = graph()
    wrong = []
    for name, targets in edges.items():
        (mine, own) = layer_of(name)
        for target in targets:
            (theirs, their_name) = layer_of(target)
            if their_name != own and theirs >= mine and (own, their_name) not in LAZY:
                wrong.append(f"{name} (layer {mine}: {own}) imports {target} (layer {theirs}: {their_name})")
    assert not wrong, "\n".join(sorted(wrong))


def documented_edges() -> dict[str, set[str]]:
    """The `imports` column of docs/architecture.md's table: layer name -> the names it may import."""
    text = (PACKAGE_DIR.parent / "docs" / "architecture.md").read_text()
    table = text[text.index("| layer |") : text.index("\n\n", text.index("| layer |"))]
    found = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = [n.strip("` ") for n in cells[0].split(",")]
        allowed = {n.strip("` ") for n in cells[2].split(",") if n.strip("` ") not in ("", "stdlib")}
        allowed = {"" if n == "__init__" else n for n in allowed}  # the package's __init__
        for name in names:
            found[name] = allowed
    return found


def test_the_architecture_page_lists_every_edge_between_layers():
    edges, _ = graph()
    documented = documented_edges()
    assert {n for names in LAYERS for n in names if n} <= set(documented), "a layer is missing from the table"
    documented[""] = set()
    missing = set()
    for name, targets in edges.items():
        own = layer_of(name)[1]
        for target in targets:
            theirs = layer_of(target)[1]
            if theirs != own and own in documented and theirs not in documented[own] and (own, theirs) not in LAZY:
                missing.add(f"{own} -> {theirs}")
    assert not missing, f"edges not in docs/architecture.md: {sorted(missing)}"
