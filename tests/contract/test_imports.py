"""Import direction and where `ray` / `torch.distributed` may appear (STYLE.md, habits 1 and 5)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "platform" / "vidret"

# Layer of each top-level area; a module may import only from its own layer or lower ones.
LAYER = {
    "config": 0,
    "console": 0,
    "storage": 1,
    "preflight": 2,
    "data": 2,
    "model": 2,
    "diffusion": 2,
    "data.pipeline": 3,
    "train": 3,
    "eval": 3,
    "tracking": 3,
    "cli": 4,
    "quickstart": 4,
    "__main__": 5,
}
RAY_ALLOWED = ("cli", "data.pipeline", "train", "eval", "tracking")


def _area(dotted: str) -> str:
    parts = dotted.split(".")
    if parts[:2] == ["data", "pipeline"]:
        return "data.pipeline"
    return parts[0]


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__") or "__init__"
        out.append((name, ast.parse(path.read_text(), filename=str(path))))
    return out


def _imports(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_import_direction() -> None:
    bad = []
    for name, tree in _modules():
        if name == "__init__":
            continue
        mine = LAYER[_area(name)]
        for imp in _imports(tree):
            if not imp.startswith("vidret.") or imp == "vidret.__version__":
                continue
            target = _area(imp[len("vidret.") :])
            if target in LAYER and LAYER[target] > mine and _area(name) != target:
                bad.append(f"{name} imports {imp}")
            # model and diffusion are siblings except that model.retrieval composes diffusion
            if _area(name) == "diffusion" and target == "model":
                bad.append(f"{name} imports {imp} (diffusion must not depend on model)")
    assert not bad, "\n".join(bad)


def test_ray_and_torch_distributed_stay_at_the_edges() -> None:
    bad = []
    for name, tree in _modules():
        for imp in _imports(tree):
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
