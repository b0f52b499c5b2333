"""The house imports downward: the core never imports the layers above it."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
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
