"""Loading: YAML files and dotted overrides into a ``Config``; dumping, redaction and path resolution."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from vidret.config.coerce import build
from vidret.config.schema import REDACTED, SECRET_FIELDS, Config, FieldError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_DC = TypeVar("_DC", bound="DataclassInstance")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float (YAML 1.1 would make it a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML safely (no object construction), with scientific-notation floats."""
    return yaml.load(text, Loader=_Loader)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise FieldError(key, "a key below a mapping")
        node = child
    node[parts[-1]] = value


def _shown_override(text: str) -> str:
    """``repr`` of an override for a message, its value replaced by ``***`` when it sets a credential."""
    key = text.split("=", 1)[0].strip()
    if "=" in text and set(key.split(".")) & SECRET_FIELDS:
        return repr(f"{key}={REDACTED}")
    return repr(text)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-4"`` -> ``("train.lr", 0.0001)``. Values are YAML scalars; ``1e-4`` is a float."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    shown = _shown_override(text)
    if not key:
        raise ValueError(f"override {shown}: empty key")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"override {shown}: value is not valid YAML ({e.__class__.__name__})") from None
    # ValueError: a tagged scalar that does not convert (``!!int x``, ``2001-13-01``); RecursionError:
    # nesting.
    except (ValueError, RecursionError) as e:
        detail = "" if shown != repr(text) else f": {e}"
        raise ValueError(
            f"override {shown}: value is not valid YAML ({e.__class__.__name__}{detail})"
        ) from None
    return key, value


def config_from_dict(values: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a ``Config`` from nested mappings, strictly. Errors name ``source`` and the dotted key."""
    try:
        return typing.cast(Config, build(Config, values, ""))
    except FieldError as e:
        raise ValueError(f"{source}: {e}") from None


def _yaml_reason(err: yaml.YAMLError) -> str:
    """What is wrong and where, without the source lines PyYAML quotes (they could hold a credential)."""
    if not isinstance(err, yaml.MarkedYAMLError):
        return str(err)
    parts = []
    for text, mark in ((err.context, err.context_mark), (err.problem, err.problem_mark)):
        if text:
            parts.append(text + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""))
    return "; ".join(parts) or err.__class__.__name__


def _read_tree(path: str | Path | None) -> dict[str, Any]:
    """The YAML mapping at ``path`` ({} for None or an empty file); ``ValueError`` naming the file
    otherwise."""
    if path is None:
        return {}
    source, p = str(path), Path(path)
    if not p.is_file():
        raise ValueError(f"{source}: config file not found")
    try:
        loaded = yaml_load(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{source}: expected UTF-8 text, byte {e.start} is invalid ({e.reason})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{source}: not valid YAML: {_yaml_reason(e)}") from None
    # ValueError: a tagged scalar that does not convert (``!!int x``, a timestamp ``2001-13-01``).
    except ValueError as e:
        raise ValueError(f"{source}: not valid YAML: {e}") from None
    except RecursionError:
        raise ValueError(f"{source}: not valid YAML: nested too deeply") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{source}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded


def _from_overrides(key: str, path: str | Path | None, overrides: typing.Sequence[str]) -> bool:
    """Whether the error at dotted ``key`` comes from the overrides: one sets that key, a key above it or
    below
    it, or the file alone is valid (a cross-field check that an override broke)."""
    for text in overrides:
        o = text.split("=", 1)[0].strip()
        if key == o or key.startswith((f"{o}.", f"{o}[")) or o.startswith(f"{key}."):
            return True
    if not overrides:
        return False
    try:
        build(Config, _read_tree(path), "")
    except ValueError:  # FieldError included: the file alone is invalid too
        return False
    return True


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides.

    Every error is a ``ValueError`` naming the file (or ``<defaults>``), the dotted key and, when an override
    caused it, ``(override ...)``.
    """
    source = str(path) if path is not None else "<defaults>"
    tree = _read_tree(path)
    for text in overrides:
        key, value = parse_override(text)
        try:
            _set_dotted(tree, key, value)
        except FieldError as e:
            raise ValueError(f"{source} (override {_shown_override(text)}): {e}") from None
    try:
        return typing.cast(Config, build(Config, tree, ""))
    except FieldError as e:
        where = f"{source} (override)" if _from_overrides(e.key, path, overrides) else source
        raise ValueError(f"{where}: {e}") from None


def to_dict(cfg: Any, redact: bool = True) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists); secrets replaced by ``***`` unless
    ``redact=False``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v, redact)
        elif isinstance(v, tuple):
            v = list(v)
        if redact and f.name in SECRET_FIELDS and v is not None:
            v = REDACTED
        out[f.name] = v
    return out


def dump_yaml(cfg: Any) -> str:
    """YAML text of the resolved config with secrets redacted."""
    return yaml.safe_dump(to_dict(cfg, redact=True), sort_keys=False)


PATH_FIELDS = (
    ("run", "out"),
    ("synth", "out"),
    ("data", "manifest"),
    ("data", "prepare_out"),
    ("train", "storage_path"),
    ("train", "init_checkpoint"),
    ("eval", "checkpoint"),
    ("model", "weights"),
)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def with_absolute_paths(cfg: Config, cwd: str | None = None) -> Config:
    """Relative local paths of ``cfg`` made absolute against ``cwd`` (default: the current directory).

    Ray workers do not share the driver's working directory, so the driver resolves paths once. URIs with a
    scheme (``s3://``, ``file://``) are left as they are.
    """
    import os

    base = cwd or os.getcwd()
    out = cfg
    for section, name in PATH_FIELDS:
        sec = getattr(out, section)
        value = getattr(sec, name)
        if value and not _SCHEME.match(value) and not os.path.isabs(value):
            out = dataclasses.replace(
                out, **{section: dataclasses.replace(sec, **{name: os.path.join(base, value)})}
            )
    return out


def replace(cfg: _DC, **changes: Any) -> _DC:
    """``dataclasses.replace`` re-exported so callers do not reach for private helpers; typed as the input."""
    return dataclasses.replace(cfg, **changes)
