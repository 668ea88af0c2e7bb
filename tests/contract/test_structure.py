"""The package's shape: layering (imports inside functions included), no import cycles, small modules and
functions, and comments that cite only what is in the repository (docs/architecture.md explains the layers).

Every check is a plain function over ``(module name, source)`` pairs, so the tests below can also feed them a
deliberately bad module and prove that they catch it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "platform" / "vidret"

# Layer of each area (a module's dotted path under vidret, longest matching prefix wins). A module may import
# from its own area and from lower layers; areas on one layer are siblings and do not import each other,
# except for the edges listed in SIBLING_EDGES.
LAYERS: dict[str, int] = {
    "config": 0,
    "console": 0,
    "storage": 1,
    "planning": 1,
    "data": 2,
    "model": 2,
    "diffusion": 2,
    "eval.metrics": 2,  # pure NumPy ranking maths (no vidret imports): shared by features.scoring and tune
    "runtime": 3,
    "layout": 3,
    "tracking": 3,
    "watchdog": 4,
    "preflight": 4,
    "startup": 4,  # connect, refuse local paths across nodes, plan (runtime + planning)
    "data.pipeline": 4,
    "data.executors": 5,
    "features": 5,
    "train": 6,
    "eval": 6,
    "tune": 6,
    "search": 6,
    "quickstart": 7,
    "cli": 8,
    "__main__": 9,
    "__init__": 9,
}
# model.retrieval composes the diffusion denoiser (the reverse is forbidden).
SIBLING_EDGES = {("model", "diffusion")}

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
# Citations of documents that are not in the repository: the method reference's section signs without a
# repository path, the stack notes' pitfall numbers, or the reference files by name.
OUTSIDE_CITATION = re.compile(
    r"diffusionret-method|ray-notes|shared/reference|STYLE\.md|synthetic-feasibility"
    r"|(?<!\.md )§ ?\d|(?<!stack-notes\.md )(?<![\w/.-])P\d{1,2}\b(?! ?[=(\[])"
)


def area_of(dotted: str) -> str:
    """The LAYERS key that owns module ``dotted`` (the longest matching prefix)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key
    raise KeyError(f"vidret.{dotted} is in no layer: add its area to LAYERS in {Path(__file__).name}")


def package_modules() -> list[tuple[str, str]]:
    """``(dotted name under vidret, source)`` for every module of the package."""
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__") or "__init__"
        out.append((name, path.read_text()))
    return out


def vidret_imports(name: str, source: str) -> Iterator[str]:
    """Dotted targets under vidret of every import in the module, at any depth (functions included)."""
    is_pkg = False
    init = PKG.joinpath(*name.split(".")) / "__init__.py"
    if init.exists():
        is_pkg = True
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                up = here[: len(here) - (node.level - 1)]
                base = ".".join(["vidret", *up, *([base] if base else [])])
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("vidret.") and t != "vidret.__version__":
                yield t[len("vidret.") :]


def _resolve(target: str, known: set[str]) -> str | None:
    """The module a dotted import target names (``a.b.name`` -> ``a.b``), or None for the package root."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in known:
            return cand
    return None


def layering_violations(modules: Iterable[tuple[str, str]]) -> list[str]:
    """Imports that go up a layer or sideways between sibling areas."""
    bad = []
    for name, source in modules:
        if name == "__init__":
            continue
        mine = area_of(name)
        for target in vidret_imports(name, source):
            theirs = area_of(target)
            related = theirs == mine or theirs.startswith(mine + ".") or mine.startswith(theirs + ".")
            if related and LAYERS[theirs] <= LAYERS[mine]:
                continue
            if (mine, theirs) in SIBLING_EDGES:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                bad.append(f"vidret.{name} imports vidret.{target} ({mine} -> {theirs})")
    return bad


def import_cycles(modules: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module in the import graph (Tarjan)."""
    mods = dict(modules)
    known = set(mods)
    graph = {
        n: sorted({r for t in vidret_imports(n, src) if (r := _resolve(t, known)) and r != n})
        for n, src in mods.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_package_init(name: str) -> bool:
    return (PKG.joinpath(*name.split(".")) / "__init__.py").exists() or name == "__init__"


def long_functions(name: str, source: str) -> list[str]:
    """Functions and methods longer than MAX_FUNCTION_LINES (decorators and docstring included)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                out.append(f"vidret.{name}.{node.name}: {n} lines")
    return out


def outside_citations(source: str) -> list[str]:
    """Comment and string lines that cite a document that is not in the repository."""
    return [line.strip() for line in source.splitlines() if OUTSIDE_CITATION.search(line)]


# ---------------------------------------------------------------------------------------------- the tests


def test_every_module_has_a_layer() -> None:
    for name, _ in package_modules():
        area_of(name)


def test_layering() -> None:
    bad = layering_violations(package_modules())
    assert not bad, "\n".join(bad)


def test_layering_catches_an_eval_to_train_import_inside_a_function() -> None:
    """The check is not vacuous: a deliberately added eval -> train import (hidden in a function) fails it."""
    bad_eval = "def f():\n    from vidret.train import loop\n    return loop\n"
    assert layering_violations([("eval.job", bad_eval)]) == [
        "vidret.eval.job imports vidret.train (eval -> train)",
        "vidret.eval.job imports vidret.train.loop (eval -> train)",
    ]
    relative = "from ..train import loop\n"
    assert layering_violations([("eval.job", relative)])
    assert layering_violations([("data.video", "import vidret.model.clip\n")])  # sideways, one layer
    assert layering_violations([("diffusion.rerank", "from vidret.model import retrieval\n")])
    assert not layering_violations([("model.retrieval", "from vidret.diffusion import denoiser\n")])


def test_no_import_cycles() -> None:
    cycles = import_cycles(package_modules())
    assert not cycles, cycles


def test_cycle_check_finds_a_cycle() -> None:
    mods = [("data.a", "from vidret.data import b\n"), ("data.b", "def f():\n    import vidret.data.a\n")]
    assert import_cycles(mods) == [["data.a", "data.b"]]


def test_modules_and_functions_are_small() -> None:
    big = []
    for name, source in package_modules():
        lines = source.count("\n") + 1
        if lines > MAX_MODULE_LINES:
            big.append(f"vidret.{name}: {lines} lines")
        big += long_functions(name, source)
    assert not big, "\n".join(big)


def test_comments_cite_only_the_repository() -> None:
    bad = []
    for root in ("platform", "jobs", "benchmarks", "tests", "configs"):
        for path in sorted((ROOT / root).rglob("*")):
            if path.suffix in {".py", ".yaml"} and path.name != Path(__file__).name:
                bad += [f"{path.relative_to(ROOT)}: {line}" for line in outside_citations(path.read_text())]
    assert not bad, "\n".join(bad)


def test_citation_check_catches_outside_references() -> None:
    assert outside_citations("# see ray-notes P8\n")
    assert outside_citations("x = 1  # the method, §3.4\n")
    assert outside_citations('"""Per diffusionret-method.md section 5.1."""\n')
    assert not outside_citations("# docs/method.md §3.4 and docs/stack-notes.md P8\n")
