"""The layout keeps the pipeline readable: fuzz/'s stages import only earlier stages, nothing
imports the command line, no import circle, short modules and functions, and each file name of
a finding directory is spelled in one module only."""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The pipeline, in order: a stage may import itself and the stages before it.
STAGES = ("errors", "generate", "execute", "compare", "record", "campaign", "triage", "report", "scale", "serve", "cli")
FINDING_FILES = ("program.prog", "program.json", "model.json", "kernel.json", "divergence.json", "console.log",
                 "meta.json", "minimized.prog", "minimize.json", "reproducibility.json", "repro.c")


def modules(top: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / top).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "fuzz" and len(parts) > 1 else None


def test_stages_import_only_earlier_stages():
    backwards = []
    for name, path in modules("fuzz").items():
        own = stage(name)
        for imported in imports(name, path):
            other = stage(imported)
            if own in STAGES and other in STAGES and STAGES.index(other) > STAGES.index(own):
                backwards.append(f"{name} -> {imported}")
    assert backwards == []


def test_nothing_but_the_command_line_imports_it():
    users = [f"{name} -> {imported}" for top in ("fuzz", "bench", "targets", "reference")
             for name, path in modules(top).items() if stage(name) != "cli"
             for imported in imports(name, path) if imported.startswith("fuzz.cli")]
    assert users == []


def test_lower_layers_do_not_import_higher_ones():
    """reference/ is the pure model; targets/ runs programs; neither knows the engine."""
    for top, forbidden in (("reference", ("targets", "fuzz", "corpus")), ("targets", ("fuzz",))):
        wrong = [f"{name} -> {imported}" for name, path in modules(top).items()
                 for imported in imports(name, path) if imported.split(".")[0] in forbidden]
        assert wrong == [], top


def test_no_import_circle_between_modules():
    known = {**modules("fuzz"), **modules("reference"), **modules("targets")}
    graph = defaultdict(set)
    for name, path in known.items():
        graph[name] = {imported for imported in imports(name, path) if imported in known and imported != name}
    # A module's package __init__ runs first on import: only circles of real modules count.
    circles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"
    for node in list(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_modules_and_functions_are_short():
    long_files, long_functions = [], []
    for name, path in modules("fuzz").items():
        source = path.read_text()
        if source.count("\n") > 400:
            long_files.append(name)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{name}.{node.name}")
    assert (long_files, long_functions) == ([], [])


def test_each_finding_file_name_is_spelled_in_one_module():
    spelled = defaultdict(list)
    for top in ("fuzz", "bench"):
        for name, path in modules(top).items():
            source = path.read_text()
            for file_name in FINDING_FILES:
                if f'"{file_name}"' in source or f"'{file_name}'" in source:
                    spelled[file_name].append(name)
    assert {file_name: owners for file_name, owners in spelled.items() if owners != ["fuzz.record.store"]} == {}
    assert set(spelled) == set(FINDING_FILES)
