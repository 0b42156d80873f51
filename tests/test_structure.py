"""The package's shape: every module says what it owns, imports go one way, the entry point stays thin."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nplm"


def modules() -> dict[str, Path]:
    """nplm's modules by dotted name (the launcher folder is imported as hydra_plugins.nplm_launcher)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out["hydra_plugins.nplm_launcher" if name == "nplm.sweep.launcher" else name] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The nplm modules a module imports, at its top or inside its functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def test_every_module_opens_with_a_docstring_saying_what_it_owns():
    for name, path in modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc) > 40, f"{name} has no docstring saying what it owns"


def test_no_import_circles():
    mods = modules()
    graph = {name: imports(path, set(mods)) - {name} for name, path in mods.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph.get(name, ())):
            assert state.get(dep) != "open", "import circle: " + " -> ".join(trail + [name, dep])
            if dep not in state:
                visit(dep, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    # the test can fail: a circle made on purpose is found
    graph["nplm.loop"] = graph["nplm.loop"] | {"nplm.train"}
    state.clear()
    try:
        for name in sorted(graph):
            if name not in state:
                visit(name, [])
    except AssertionError as e:
        assert "nplm.train" in str(e)
    else:
        raise AssertionError("a circle made on purpose was not found")


def test_entry_point_is_thin_and_sweeps_never_import_the_command():
    lines = [ln for ln in (ROOT / "train.py").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) < 40, "train.py composes the config and hands it to nplm/command.py"
    known = set(modules())
    for name, path in modules().items():
        if name.startswith(("nplm.sweep", "hydra_plugins")):
            assert "nplm.command" not in imports(path, known), name
