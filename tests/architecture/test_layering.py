"""The import graph of ``node/``, computed from the source: no cycles, no upward imports.

The layers, bottom to top (README "Architecture"; each package's docstring says the same):
every import inside ``node`` goes to the same layer or one below it. Lazy imports inside
functions count too: a cycle hidden in a function body is still a cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

NODE = Path(__file__).resolve().parents[2] / "node"

LAYERS = ["base", "p2p", "cage", "consensus", "receipts", "app", "roles", "sdk", "console", "testnet", "cli"]
RANK = {name: i for i, name in enumerate(LAYERS)}
# The one place a layer reaches over a sibling it must not carry: `metanode daemon start`
# runs the daemon, so the CLI's daemon group (and only it) imports the roles layer.
ALLOWED = {("node.cli.daemon", "roles")}
# sdk and cli are what a user's program and the command line load: neither carries server code.
FORBIDDEN = {("sdk", "roles"), ("cli", "roles"), ("testnet", "roles"),
             # the console is a client too: the node's formats and the SDK, never its server or engine code
             ("console", "roles"), ("console", "app"), ("console", "cage")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(NODE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from node.x import y` may name a submodule y
            found.update(f"{target}.{a.name}" for a in node.names)
    return {name for name in found if name == "node" or name.startswith("node.")}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def module_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in NODE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in imports_of(path):
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]  # `from node.x import name`: the module is node.x
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def test_every_top_level_package_is_a_layer() -> None:
    loose = sorted(
        p.name for p in NODE.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists() and p.name not in RANK)
        or (p.suffix == ".py" and p.name not in {"__init__.py", "__main__.py"})
    )
    assert not loose, f"modules outside the documented layers: {loose}"


def test_no_upward_imports() -> None:
    upward = []
    for source, targets in module_graph().items():
        src_layer = layer_of(source)
        for target in targets:
            dst_layer = layer_of(target)
            if src_layer is None or dst_layer is None or src_layer == dst_layer:
                continue
            if (source, dst_layer) in ALLOWED:
                continue
            if RANK[dst_layer] > RANK[src_layer] or (src_layer, dst_layer) in FORBIDDEN:
                upward.append(f"{source} ({src_layer}) imports {target} ({dst_layer})")
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def test_no_import_cycles_between_modules() -> None:
    graph = module_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.rpartition(".")[0] == node or node.rpartition(".")[0] == nxt:
                continue  # a package and its own submodules (re-exports) are one unit
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_cycles_between_packages() -> None:
    packages: dict[str, set[str]] = defaultdict(set)
    for source, targets in module_graph().items():
        for target in targets:
            src, dst = layer_of(source), layer_of(target)
            if src and dst and src != dst:
                packages[src].add(dst)
    seen_cycles = [(a, b) for a in packages for b in packages[a] if a in packages.get(b, set())]
    assert not seen_cycles, f"layers importing each other: {seen_cycles}"
