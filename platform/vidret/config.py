"""Typed, frozen configuration loaded strictly from YAML with dotted overrides.

One frozen dataclass per area (``storage``, ``data``, ``synth``, ``model``, ``diffusion``, ``train``,
``eval``, ``tune``, ``run``). Functions receive only the section they need (``cfg.model``, not ``cfg``).

Loading is strict: an unknown key or a value of the wrong type raises ``ValueError`` naming the file, the
dotted key and the expected type. Overrides use the same dotted keys (``train.lr=1e-4``); their values are
parsed as YAML scalars.

Upstream quirks of the released DiffusionRet code are named options whose default reproduces the released
behaviour ("faithful"); the documentation of each field says what the clean alternative does.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


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


SECRET_FIELDS = frozenset({"access_key_id", "secret_access_key", "session_token"})
REDACTED = "***"


@dataclass(frozen=True)
class StorageConfig:
    """Object storage access. Credentials default to the standard AWS environment variables."""

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:5555 for a local S3; None = AWS
    region: str | None = None
    anonymous: bool = False  # unsigned requests (public buckets, read only)
    access_key_id: str | None = field(default=None, repr=False)  # redacted in saved configs, not in repr
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    max_retries: int = 4  # attempts after the first on connection errors
    retry_backoff_s: float = 0.5  # base of the exponential backoff

    def __post_init__(self) -> None:
        _check(self.max_retries >= 0, "storage.max_retries", "an integer >= 0", self.max_retries)
        _check(self.retry_backoff_s >= 0, "storage.retry_backoff_s", "a number >= 0", self.retry_backoff_s)


@dataclass(frozen=True)
class SynthConfig:
    """The generated captioned video corpus (``vidret synth``)."""

    out: str = "runs/synthetic/corpus"
    videos: int = 1000
    seed: int = 0
    size: int = 64  # frame width and height in pixels
    seconds: float = 3.0
    fps: int = 8
    workers: int = 2  # local processes used to encode

    def __post_init__(self) -> None:
        _check(self.videos > 0, "synth.videos", "an integer > 0", self.videos)
        _check(self.size >= 16 and self.size % 2 == 0, "synth.size", "an even integer >= 16", self.size)
        _check(self.seconds > 0, "synth.seconds", "a number > 0", self.seconds)
        _check(self.fps > 0, "synth.fps", "an integer > 0", self.fps)
        _check(self.workers > 0, "synth.workers", "an integer > 0", self.workers)


DatasetName = Literal["msrvtt", "msvd", "activitynet", "didemo", "lsmdc", "custom", "synthetic"]


@dataclass(frozen=True)
class DataConfig:
    """Corpus, sampling and decoding."""

    dataset: DatasetName = "synthetic"
    manifest: str = ""  # URI of the Parquet manifest written by `vidret manifest` / `vidret prepare`
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    extra_eval_splits: tuple[str, ...] = ()  # e.g. ("ood",) for the synthetic corpus
    max_words: int = 32  # text length including SOT and EOT
    max_frames: int = 12
    framerate: float = 1.0  # frames sampled per second before uniform subsampling to max_frames
    size: int = 224  # short side resize (bicubic) then centre crop
    decoder: Literal["auto", "decord", "pyav"] = "auto"
    decode_timeout_s: float = 60.0
    max_bad_fraction: float = 0.01  # the job fails, listing the bad videos, above this fraction
    decode_concurrency: int = 2
    decode_cpus: float = 0.5  # per decode task; fractional so read tasks are never starved
    rows_per_block: int = 4
    augment: bool = False  # training-time augmentation (off in the method)
    prepare_out: str = ""  # `vidret prepare` writes <out>/videos/*.mp4 and <out>/manifest/<split>.parquet
    prepare_fps: float = 3.0  # frame rate of the prepared files (method 5.3)
    prepare_short_side: int = 224  # short side of the prepared files (even, aspect kept)

    def __post_init__(self) -> None:
        _check(2 <= self.max_words <= 77, "data.max_words", "an integer in [2, 77]")
        _check(1 <= self.max_frames <= 77, "data.max_frames", "an integer in [1, 77]")
        _check(self.framerate > 0, "data.framerate", "a number > 0", self.framerate)
        _check(self.size > 0, "data.size", "an integer > 0", self.size)
        _check(0.0 <= self.max_bad_fraction <= 1.0, "data.max_bad_fraction", "a number in [0, 1]")
        _check(self.decode_timeout_s > 0, "data.decode_timeout_s", "a number > 0", self.decode_timeout_s)
        _check(
            self.decode_concurrency > 0, "data.decode_concurrency", "an integer > 0", self.decode_concurrency
        )
        _check(self.rows_per_block > 0, "data.rows_per_block", "an integer > 0", self.rows_per_block)
        _check(self.prepare_fps > 0, "data.prepare_fps", "a number > 0", self.prepare_fps)
        _check(
            self.prepare_short_side >= 2 and self.prepare_short_side % 2 == 0,
            "data.prepare_short_side",
            "an even integer >= 2",
            self.prepare_short_side,
        )


@dataclass(frozen=True)
class ModelConfig:
    """CLIP backbone, temporal module and token-wise interaction."""

    preset: Literal["ViT-B-32", "ViT-B-16", "ViT-L-14", "debug", "tiny"] = "ViT-B-32"
    weights: str | None = None  # local path or URI of OpenAI (.pt) or open_clip weights; None = random init
    weights_format: Literal["auto", "openai", "open_clip"] = "auto"
    quick_gelu: bool | None = None  # None: QuickGELU for OpenAI weights, the preset's default otherwise
    temporal: Literal["seqTransf", "meanP"] = "seqTransf"
    temporal_layers: int = 4  # initialised from the first N CLIP text blocks
    wti_hidden_mult: int = 2  # weight MLPs are D -> mult*D -> 1
    wti_padding: Literal["zero", "neg_inf"] = "zero"
    """faithful ``zero``: padded token/frame pairs score 0 in the maxima; ``neg_inf`` excludes them."""
    logit_scale_max: float = 100.0
    grad_checkpointing: bool = False  # activation checkpointing of the CLIP towers

    def __post_init__(self) -> None:
        _check(self.temporal_layers >= 0, "model.temporal_layers", "an integer >= 0", self.temporal_layers)
        _check(self.wti_hidden_mult >= 1, "model.wti_hidden_mult", "an integer >= 1", self.wti_hidden_mult)
        _check(self.logit_scale_max > 0, "model.logit_scale_max", "a number > 0", self.logit_scale_max)


@dataclass(frozen=True)
class DiffusionConfig:
    """The generative re-ranker: schedule, denoisers, candidate selection and fusion."""

    steps: int = 50  # T
    schedule: Literal["cosine", "linear"] = "cosine"
    num: int = 127  # hard negatives per query in training (needs num <= global batch - 1)
    negatives_fill: Literal["positives", "error"] = "positives"
    """When a batch has fewer than ``num`` negatives (same-video duplicates): faithful ``positives`` fills the
    list with the other same-video captions/videos as "negatives" (never the pair itself); ``error`` raises."""
    neg: float = 0.0  # value of the negatives in the clean target [1, neg, ..., neg]
    d_temp: float = 100.0  # multiplier on x0_hat inside the generation cross-entropy
    attn_temp: float = 1.0  # divisor of the text-frame attention logits inside the denoisers
    frame_softmax: Literal["mask_after", "renormalise"] = "mask_after"
    """faithful ``mask_after``: padded frames stay in the softmax denominator; ``renormalise`` drops them."""
    t2v_k: int = 32
    v2t_k: int = 32
    t2v_temp: float = 1.0  # multiplier on x0_hat before the fusion softmax
    v2t_temp: float = 1.0
    t2v_alpha: float = 1.0
    v2t_alpha: float = 1.0
    clip_denoised: bool = True
    sample_steps: int = 0  # DDIM steps at inference; 0 = all T
    noise_seed: int = 42  # initial DDIM noise is seeded per query from this

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "diffusion.steps", "an integer >= 1", self.steps)
        _check(self.num >= 1, "diffusion.num", "an integer >= 1", self.num)
        _check(self.t2v_k >= 1 and self.v2t_k >= 1, "diffusion.t2v_k/v2t_k", "integers >= 1")
        _check(0 <= self.sample_steps <= self.steps, "diffusion.sample_steps", "an integer in [0, steps]")


@dataclass(frozen=True)
class TrainConfig:
    """Two-stage training on Ray Train."""

    stage: Literal["discrimination", "generation"] = "discrimination"
    epochs: int = 5
    batch_size: int = 128  # global batch, independent of the number of workers
    lr: float = 1e-4
    coef_lr: float = 1e-3  # CLIP parameters train at lr * coef_lr
    weight_decay: float = 0.2
    warmup_proportion: float = 0.1
    optimizer: Literal["bertadam", "adamw"] = "bertadam"
    """faithful ``bertadam``: no bias correction, per-tensor grad clipping; ``adamw`` is torch's AdamW."""
    schedule: Literal["warmup_cosine_unscaled", "warmup_cosine"] = "warmup_cosine_unscaled"
    clip_grad_norm: float = 1.0
    ema_decay: float = 0.99
    gather: Literal["exact", "local_slice"] = "exact"
    """``exact``: full-batch gradient; ``local_slice``: the upstream's 1/world_size gradient."""
    same_video_positives: bool = False  # faithful False: other captions of the same video are negatives
    clip_precision: Literal["fp32", "fp16_frozen"] = "fp32"
    """``fp16_frozen`` mimics the upstream, whose fp16 CLIP weights effectively never move at lr 1e-7."""
    bf16: bool = True  # autocast on GPU only
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2
    checkpoint_every: int = 200  # steps
    keep_checkpoints: int = 2
    storage_path: str = "runs/ray-results"
    init_checkpoint: str | None = None  # stage-1 checkpoint for stage 2
    val_fraction: float = 0.05  # carved from train (by seed) when the dataset has no val split
    log_every: int = 10
    max_steps: int = 0  # 0 = epochs * steps_per_epoch

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "an integer >= 1", self.epochs)
        _check(self.batch_size >= 2, "train.batch_size", "an integer >= 2", self.batch_size)
        _check(self.lr > 0, "train.lr", "a number > 0", self.lr)
        _check(0 <= self.warmup_proportion < 1, "train.warmup_proportion", "a number in [0, 1)")
        _check(0 <= self.ema_decay < 1, "train.ema_decay", "a number in [0, 1)")
        _check(self.num_workers >= 1, "train.num_workers", "an integer >= 1", self.num_workers)
        _check(
            self.batch_size % self.num_workers == 0,
            "train.batch_size",
            f"a multiple of train.num_workers ({self.num_workers})",
        )
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", "an integer >= 1", self.checkpoint_every)
        _check(0 < self.val_fraction < 1, "train.val_fraction", "a number in (0, 1)")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation, re-ranking and the report."""

    checkpoint: str | None = None
    splits: tuple[str, ...] = ("test",)
    batch_size: int = 64
    block_size: int = 256  # queries x candidates block of the similarity computation
    rerank: bool = True
    dual_softmax: bool = False  # test-time score normalisation, reported separately and labelled
    multi_caption_grouping: Literal["correct", "upstream_off_by_one"] = "correct"
    num_workers: int = 1
    report: bool = True
    report_queries: int = 8
    # -- intervals, fusion selection and reproducibility (eval/intervals.py, eval/fusion_select.py) --
    bootstrap_resamples: int = 1000  # percentile bootstrap; >= 1000 for reported intervals
    bootstrap_seed: int = 0
    bootstrap_level: float = 0.95
    report_per_outcome: int = 2  # report samples per split, direction and outcome (helped, hurt, both fail)
    threads: int = 1  # torch CPU threads of the evaluation driver (0 = torch's default, machine-dependent)
    select_fusion: bool = False  # choose diffusion.{t2v,v2t}_{alpha,temp} on data.val_split before testing
    fusion_alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    fusion_temps: tuple[float, ...] = (1.0, 10.0, 100.0)

    def __post_init__(self) -> None:
        _check(
            self.bootstrap_resamples >= 1,
            "eval.bootstrap_resamples",
            "an integer >= 1",
            self.bootstrap_resamples,
        )
        _check(
            0 < self.bootstrap_level < 1, "eval.bootstrap_level", "a number in (0, 1)", self.bootstrap_level
        )
        _check(
            self.report_per_outcome >= 0,
            "eval.report_per_outcome",
            "an integer >= 0",
            self.report_per_outcome,
        )
        _check(self.threads >= 0, "eval.threads", "an integer >= 0", self.threads)
        _check(
            len(self.fusion_alphas) > 0 and len(self.fusion_temps) > 0,
            "eval.fusion_alphas/fusion_temps",
            "non-empty lists",
        )
        _check(self.batch_size >= 1, "eval.batch_size", "an integer >= 1", self.batch_size)
        _check(self.block_size >= 1, "eval.block_size", "an integer >= 1", self.block_size)
        _check(self.num_workers >= 1, "eval.num_workers", "an integer >= 1", self.num_workers)


@dataclass(frozen=True)
class TuneConfig:
    """Ray Tune sweeps over inference (and small training) parameters."""

    kind: Literal["inference", "training"] = "inference"
    num_samples: int = 4
    max_concurrent: int = 2
    metric: str = "t2v_R1"
    alphas: tuple[float, ...] = (0.5, 1.0)
    temps: tuple[float, ...] = (1.0, 10.0)
    ks: tuple[int, ...] = (16, 32)
    sample_steps: tuple[int, ...] = (0,)
    lrs: tuple[float, ...] = (1e-4, 1e-3)  # kind "training": train.lr grid of the stage-2 sweep


@dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how it reaches Ray."""

    out: str = "runs/default"
    seed: int = 42
    ray_address: str | None = None  # None = start a local Ray instance
    num_cpus: int | None = None  # for a local instance only


@dataclass(frozen=True)
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    run: RunConfig = field(default_factory=RunConfig)


class _FieldError(ValueError):
    """A check failed inside a dataclass; carries the dotted key so the loader can name the file."""

    def __init__(self, key: str, expected: str, got: Any = dataclasses.MISSING):
        self.key, self.expected = key, expected
        suffix = "" if got is dataclasses.MISSING else f", got {got!r}"
        super().__init__(f"{key}: expected {expected}{suffix}")


def _check(ok: bool, key: str, expected: str, got: Any = dataclasses.MISSING) -> None:
    if not ok:
        raise _FieldError(key, expected, got)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise _FieldError. Only lossless conversions (int -> float)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is not bool:
            return value
        raise _FieldError(key, _type_name(tp), value)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _FieldError(key, _type_name(tp), value)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except _FieldError:
                continue
        raise _FieldError(key, _type_name(tp), value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _FieldError(key, _type_name(tp), value)
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _FieldError(key, "a mapping", value)
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _FieldError(key, "bool", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _FieldError(key, "int", value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int beyond float range; too long to quote
                raise _FieldError(key, "a float within float range (|x| < 1.8e308)") from None
        raise _FieldError(key, "float", value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _FieldError(key, "str", value)
    raise AssertionError(f"unsupported config type {tp!r} at {key}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        # An empty, padded or non-string key (``train..lr``, ``1:``) is quoted so the message shows it.
        shown = k if isinstance(k, str) and k and k.strip() == k else repr(k)
        key = f"{prefix}.{shown}" if prefix else shown
        if k not in names:
            raise _FieldError(key, f"a known key (one of: {', '.join(sorted(names))})")
        try:
            kwargs[k] = _coerce(v, hints[k], key)
        except _FieldError as e:
            if k in SECRET_FIELDS:  # never echo a credential, even a mistyped one
                raise _FieldError(e.key, f"{e.expected} (the value is not shown)") from None
            raise
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise _FieldError(key, "a key below a mapping")
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
    # ValueError: a tagged scalar that does not convert (``!!int x``, ``2001-13-01``); RecursionError: nesting.
    except (ValueError, RecursionError) as e:
        detail = "" if shown != repr(text) else f": {e}"
        raise ValueError(
            f"override {shown}: value is not valid YAML ({e.__class__.__name__}{detail})"
        ) from None
    return key, value


def config_from_dict(values: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a ``Config`` from nested mappings, strictly. Errors name ``source`` and the dotted key."""
    try:
        return _build(Config, values, "")
    except _FieldError as e:
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
    """The YAML mapping at ``path`` ({} for None or an empty file); ``ValueError`` naming the file otherwise."""
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
    """Whether the error at dotted ``key`` comes from the overrides: one sets that key, a key above it or below
    it, or the file alone is valid (a cross-field check that an override broke)."""
    for text in overrides:
        o = text.split("=", 1)[0].strip()
        if key == o or key.startswith((f"{o}.", f"{o}[")) or o.startswith(f"{key}."):
            return True
    if not overrides:
        return False
    try:
        _build(Config, _read_tree(path), "")
    except ValueError:  # _FieldError included: the file alone is invalid too
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
        except _FieldError as e:
            raise ValueError(f"{source} (override {_shown_override(text)}): {e}") from None
    try:
        return _build(Config, tree, "")
    except _FieldError as e:
        where = f"{source} (override)" if _from_overrides(e.key, path, overrides) else source
        raise ValueError(f"{where}: {e}") from None


def to_dict(cfg: Any, redact: bool = True) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists); secrets replaced by ``***`` unless ``redact=False``."""
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


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported so callers do not reach for private helpers."""
    return dataclasses.replace(cfg, **changes)
