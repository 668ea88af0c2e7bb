"""Where `ray` / `torch.distributed` may appear, and no import-time side effects (docs/architecture.md)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "platform" / "vidret"

# Where `ray` may be imported (module dotted-name prefixes). The layering itself is in test_structure.py.
RAY_ALLOWED = (
    "cli",
    "runtime",
    "watchdog",
    "preflight",
    "startup",
    "tracking",
    "data.pipeline",
    "data.executors",
    "features",
    "train",
    "eval",
    "tune",
    "search",
)


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
