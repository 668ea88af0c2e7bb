"""Import direction and where `ray` / `torch.distributed` may appear (STYLE.md, habits 1 and 5)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "platform" / "vidret"

# Layer of each area; a module may import only from its own layer or lower ones.
# cli -> {train, eval, tune, search} -> {features, data.pipeline} -> {runtime, layout}
#     -> {model, diffusion, data, storage} -> config
LAYER = {
    "config": 0,
    "storage": 1,
    "data": 2,
    "model": 2,
    "diffusion": 2,
    "eval.metrics": 2,  # pure NumPy ranking maths with no vidret imports: shared by features.scoring and tune
    "runtime": 3,
    "layout": 3,
    "data.pipeline": 4,
    "features": 4,
    "train": 5,
    "eval": 5,
    "tune": 5,
    "search": 5,
    "cli": 6,
    "quickstart": 6,
    "__main__": 7,
}
SIBLINGS = ("train", "eval", "tune", "search")
"""Same layer, never importing each other: they share through features/, model/build.py and layout.py."""
RAY_ALLOWED = ("cli", "runtime", "data.pipeline", "features", "train", "eval", "tune", "search")
SPLIT_AREAS = ("data.pipeline", "eval.metrics")  # sub-modules that sit on another layer than their package


def _area(dotted: str) -> str:
    for area in SPLIT_AREAS:
        if dotted == area or dotted.startswith(area + "."):
            return area
    return dotted.split(".", maxsplit=1)[0]


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__") or "__init__"
        out.append((name, ast.parse(path.read_text(), filename=str(path))))
    return out


def _package(name: str) -> list[str]:
    """``vidret.<name>``'s package, as dotted parts (for resolving relative imports)."""
    parts = ["vidret", *name.split(".")] if name != "__init__" else ["vidret"]
    is_package = (PKG.joinpath(*parts[1:]) / "__init__.py").exists()
    return parts if is_package else parts[:-1]


def _imports(tree: ast.Module, name: str = "__init__") -> list[str]:
    """Every module ``tree`` imports, at any depth (inside functions and ``if TYPE_CHECKING`` too)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                base = _package(name)[: len(_package(name)) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            names.append(module)
            names += [f"{module}.{a.name}" for a in node.names]
    return names


def test_import_direction() -> None:
    bad = []
    for name, tree in _modules():
        if name == "__init__":
            continue
        mine = LAYER[_area(name)]
        for imp in _imports(tree, name):
            if not imp.startswith("vidret.") or imp == "vidret.__version__":
                continue
            target = _area(imp[len("vidret.") :])
            if target in LAYER and LAYER[target] > mine and _area(name) != target:
                bad.append(f"{name} imports {imp}")
            if _area(name) in SIBLINGS and target in SIBLINGS and target != _area(name):
                bad.append(f"{name} imports {imp} ({_area(name)} and {target} are siblings)")
            # model and diffusion are siblings except that model.retrieval composes diffusion
            if _area(name) == "diffusion" and target == "model":
                bad.append(f"{name} imports {imp} (diffusion must not depend on model)")
    assert not bad, "\n".join(bad)


def test_ray_and_torch_distributed_stay_at_the_edges() -> None:
    bad = []
    for name, tree in _modules():
        for imp in _imports(tree, name):
            if (imp == "ray" or imp.startswith("ray.")) and not name.startswith(RAY_ALLOWED):
                bad.append(f"{name} imports {imp}")
            if imp.startswith("torch.distributed") and name != "train.distributed":
                bad.append(f"{name} imports {imp}")
            if imp == "torch" and any(a == "distributed" for a in _from_names(tree, "torch")):
                bad.append(f"{name} does `from torch import distributed`")
    assert not bad, "\n".join(bad)


def _from_names(tree: ast.Module, module: str) -> list[str]:
    return [
        a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module == module
        for a in n.names
    ]


def test_no_import_time_side_effects() -> None:
    """Modules define things; they do not run code at import (only defs, classes, constants, imports)."""
    allowed = (
        ast.Import,
        ast.ImportFrom,
        ast.FunctionDef,
        ast.AsyncFunctionDef,
        ast.ClassDef,
        ast.Assign,
        ast.AnnAssign,
        ast.If,
        ast.Try,
    )
    bad = []
    for name, tree in _modules():
        for node in tree.body:
            if name == "__main__" and isinstance(node, ast.If):
                continue  # the `if __name__ == "__main__"` guard
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # docstring
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                func = ast.unparse(node.value.func)
                if func.endswith(("add_implicit_resolver", "register")):
                    continue  # declarative registrations on our own classes
                bad.append(f"{name}: top-level call {func}()")
            elif not isinstance(node, allowed):
                bad.append(f"{name}: top-level {type(node).__name__}")
    assert not bad, "\n".join(bad)


def test_every_module_has_a_layer() -> None:
    """A new top-level area must be placed in LAYER (else its imports would go unchecked)."""
    missing = sorted({_area(n) for n, _ in _modules() if n != "__init__" and _area(n) not in LAYER})
    assert not missing, f"add to LAYER: {missing}"


def test_the_check_sees_imports_inside_functions() -> None:
    """An eval -> train import hidden in a function body is caught (what the layering test relies on)."""
    tree = ast.parse("def f():\n    from vidret.train.loop import x\n    from . import job\n")
    found = _imports(tree, "eval.retrieval")
    assert "vidret.train.loop" in found
    assert "vidret.eval.job" in found
