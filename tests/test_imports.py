"""No import cycle in src/trilemma: every module's imports, at module level or inside functions,
read from the source, and the family modules the loader imports by name (the registry's
`module` paths), form a graph without a cycle. `from package import submodule` counts the
submodule only: the package's __init__ runs too, but a package whose __init__ reaches its own
submodules (`trilemma.i2i` loads `trilemma.i2i.srgan` through the loader, and srgan imports
`trilemma.i2i.nets`) is Python's usual shape, not a cycle between modules."""

from __future__ import annotations

from pathlib import Path

from test_stage_deps import imported_modules
from trilemma.registry import REGISTRY

SRC = Path(__file__).resolve().parents[1] / "src"
LOADER = "trilemma.loader"  # imports each registered family's module by its dotted path


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted((SRC / "trilemma").rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The modules of src/trilemma that `name` imports anywhere in its body, read as the stage
    deps test reads them, and for the loader the family modules it imports by name."""
    found = imported_modules(MODULES[name], packages=False)
    if name == LOADER:
        found |= {entry.module for entry in REGISTRY.values()}
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_src_trilemma_has_no_import_cycle():
    graph = {name: imports_of(name) for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_walk_sees_imports_inside_functions_and_finds_a_cycle():
    assert "trilemma.figures" in imports_of("trilemma.families.progan")
    assert "trilemma.families.dcgan" in imports_of(LOADER)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_registry_entry_names_a_module_of_the_package():
    assert all(entry.module in MODULES for entry in REGISTRY.values())
