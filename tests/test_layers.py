"""The house imports downward: the core never imports the layers above it, no module
imports a layer above its own, and no import circle."""

import ast
import io
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
ROOTS = ("ahjax", "level1_affect", "level2_conflict", "baselines", "experiments")
FRONT_DOORS = ("ahjax", "ahjax.api", "ahjax.predict", "ahjax.streaming", "ahjax.cli",
               "ahjax.session_bench", "ahjax.__main__")
MAX_LOCAL_IMPORTS = 10
CORE = sorted((REPO / "ahjax" / "core").rglob("*.py"))
ABOVE = ("experiments", "baselines", "level1_affect", "level2_conflict", "ahjax.api",
         "ahjax.predict", "ahjax.cli", "ahjax.streaming", "ahjax.session_bench")


def imported(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in ``path`` (lazy ones too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(REPO)))
def test_core_imports_nothing_above_it(path):
    bad = sorted(m for m in imported(path) if m.split(".")[0] in ABOVE[:4] or m in ABOVE[4:])
    assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_no_module_cites_files_outside_the_repository():
    """Users have the repository only: a module may cite docs/, never a Markdown file beside
    the checkout (a path reaching up out of it)."""
    import re
    outside = re.compile(r"\.\./[\w./-]*\.md")
    # A cited document: an upper-case Markdown name in prose (not a quoted or nested path
    # of a file that code reads or writes, such as a run's results table or a wheel's notice).
    cited = re.compile(r"(?<![\w/\"'])([A-Z][A-Z_]+\.md)\b")
    ours = {p.name for p in REPO.rglob("*.md") if ".git" not in p.parts}
    offenders = []
    for path in REPO.rglob("*.py"):
        if ".git" in path.parts:
            continue
        for line in path.read_text(errors="ignore").splitlines():
            missing = [m for m in cited.findall(line) if m not in ours]
            if outside.search(line) or missing:
                offenders.append(f"{path.relative_to(REPO)}: {line.strip()[:80]}")
    assert not offenders, offenders


def test_importing_the_core_loads_no_upper_layer():
    """``import ahjax`` exposes the API lazily: the core alone pulls in nothing above it."""
    import subprocess
    import sys
    code = ("import sys, ahjax, ahjax.core.data.bah, ahjax.core.data.store, ahjax.core.metrics, ahjax.core.train.trainer; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('experiments', 'baselines', 'level1_affect', 'level2_conflict') or m == 'ahjax.api'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_experiments_import_libraries_never_each_other():
    """Each experiment is a thin config + run over the libraries; only the runner names
    them (by string, in its registry)."""
    names = {p.stem for p in (REPO / "experiments").glob("*.py")} - {"__init__"}
    for path in sorted((REPO / "experiments").glob("*.py")):
        if path.stem == "run":
            continue
        other = sorted(m for m in imported(path)
                       if m.startswith("experiments") and m.split(".")[-1] in names | {"experiments"}
                       and m != "experiments")
        assert not other, f"{path.relative_to(REPO)} imports {other}"


# ---- the project's module import graph -------------------------------------------------
def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for r in ROOTS for p in sorted((REPO / r).rglob("*.py"))}


def _own(name: str) -> str | None:
    """The project module that importing ``name`` runs (the deepest existing one), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_pep562(path: Path, func) -> bool:
    return path.name == "__init__.py" and func is not None and func.name == "__getattr__"


def own_imports(path: Path):
    """``(target module, line, enclosing function or None)`` for each import of a project
    module in ``path``, top-level and function-level."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    out = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in child.names]   # a submodule, or a name in base
            else:
                visit(child, inner)
                continue
            for target in {_own(n) for n in names} - {None}:
                out.append((target, child.lineno, func))
    visit(tree, None)
    return out


def import_graph(skip_pep562: bool = True) -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for target, _, func in own_imports(path):
            if target != name and not (skip_pep562 and _is_pep562(path, func)):
                graph[name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> int:
    """0 core, 1 level1_affect, 2 level2_conflict, 3 baselines, 4 front doors, 5 experiments."""
    top = module.split(".")[0]
    if module == "ahjax.core" or module.startswith("ahjax.core."):
        return 0
    if module in FRONT_DOORS:
        return 4
    ranks = {"level1_affect": 1, "level2_conflict": 2, "baselines": 3, "experiments": 5}
    if top in ranks:
        return ranks[top]
    raise AssertionError(f"{module}: no layer; place it in test_layers.layer")


def test_no_import_circle():
    """No circle among the project's modules, counting function-level imports too (a
    package's PEP 562 ``__getattr__`` is the one lazy import allowed to point back)."""
    circles = strongly_connected(import_graph())
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_imports_only_go_down():
    """core < level1_affect < level2_conflict < baselines < front doors < experiments;
    sideways within a layer is fine."""
    up = [f"{MODULES[m].relative_to(REPO)}:{line} {m} imports {t}"
          for m, path in MODULES.items() for t, line, func in own_imports(path)
          if layer(t) > layer(m) and not _is_pep562(path, func)]
    assert not up, "\n".join(up)


def test_extract_and_stream_are_the_functions_after_every_module_is_imported():
    """No submodule or re-export shadows ``ahjax.extract`` and ``ahjax.stream``."""
    code = f"""
import importlib, importlib.util, inspect, sys
optional = ("torch", "ray", "llama_cpp", "transformers", "mediapipe")
missing = [d for d in optional if importlib.util.find_spec(d) is None]
for name in {sorted(m for m in MODULES if not m.endswith("__main__"))!r}:
    try:
        importlib.import_module(name)
    except ImportError as err:   # an optional dependency missing: that module is skipped
        gone = getattr(err, "name", None) or ""
        if gone.split(".")[0] in {ROOTS!r} or not (gone in missing or any(d in str(err) for d in missing)):
            raise
import ahjax, ahjax.api, ahjax.streaming
assert inspect.isfunction(ahjax.extract) and ahjax.extract is ahjax.api.extract, ahjax.extract
assert inspect.isfunction(ahjax.stream) and ahjax.stream is ahjax.streaming.stream, ahjax.stream
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def _comment_lines(path: Path) -> tuple[set[int], set[int]]:
    """Lines holding a comment, and lines that are only a comment."""
    text = path.read_text()
    anywhere = {t.start[0] for t in tokenize.generate_tokens(io.StringIO(text).readline)
                if t.type == tokenize.COMMENT}
    lines = text.splitlines()
    return anywhere, {n for n in anywhere if lines[n - 1].lstrip().startswith("#")}


def test_few_function_local_imports_each_with_its_reason():
    """Imports of the project's own modules go at the top; at most a few stay in a function
    (an optional heavy dependency, a light command line), each with a comment saying why on
    its line or the line above. A package's PEP 562 ``__getattr__`` is not counted."""
    local, silent = [], []
    for path in MODULES.values():
        anywhere, only = _comment_lines(path)
        for _, line, func in own_imports(path):
            if func is None or _is_pep562(path, func):
                continue
            where = f"{path.relative_to(REPO)}:{line}"
            if where in local:
                continue
            local.append(where)
            if line not in anywhere and line - 1 not in only:
                silent.append(where)
    assert not silent, f"function-local imports without a reason: {silent}"
    assert len(local) <= MAX_LOCAL_IMPORTS, (
        f"{len(local)} function-local imports of the project's modules (at most "
        f"{MAX_LOCAL_IMPORTS}): {local}")
