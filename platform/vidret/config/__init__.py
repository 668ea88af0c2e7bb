"""Typed, frozen configuration loaded strictly from YAML with dotted overrides.

One frozen dataclass per area (``storage``, ``data``, ``synth``, ``model``, ``diffusion``, ``train``,
``eval``, ``tune``, ``search``, ``run``). Functions receive only the section they need (``cfg.model``,
not ``cfg``).

Loading is strict: an unknown key or a value of the wrong type raises ``ValueError`` naming the file, the
dotted key and the expected type. Overrides use the same dotted keys (``train.lr=1e-4``); their values are
parsed as YAML scalars.

Upstream quirks of the released DiffusionRet code are named options; the README's table says which setting
reproduces the released behaviour (not always the default), and the documentation of each field says what
the alternative does.
"""

from vidret.config.loading import (
    config_from_dict,
    dump_yaml,
    load_config,
    parse_override,
    replace,
    to_dict,
    with_absolute_paths,
    yaml_load,
)
from vidret.config.schema import (
    REDACTED,
    SECRET_FIELDS,
    Config,
    DataConfig,
    DiffusionConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    SearchConfig,
    StorageConfig,
    SynthConfig,
    TrainConfig,
    TuneConfig,
)

__all__ = [
    "REDACTED",
    "SECRET_FIELDS",
    "Config",
    "DataConfig",
    "DiffusionConfig",
    "EvalConfig",
    "ModelConfig",
    "RunConfig",
    "SearchConfig",
    "StorageConfig",
    "SynthConfig",
    "TrainConfig",
    "TuneConfig",
    "config_from_dict",
    "dump_yaml",
    "load_config",
    "parse_override",
    "replace",
    "to_dict",
    "with_absolute_paths",
    "yaml_load",
]
