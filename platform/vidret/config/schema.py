"""The configuration's schema: one frozen dataclass per area, validated in ``__post_init__``.

Upstream quirks of the released DiffusionRet code are named options; the documentation of each field says
what each setting does and which one reproduces the upstream (docs/method.md §10).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

SECRET_FIELDS = frozenset({"access_key_id", "secret_access_key", "session_token"})
REDACTED = "***"


class FieldError(ValueError):
    """A check failed inside a dataclass; carries the dotted key so the loader can name the file."""

    def __init__(self, key: str, expected: str, got: Any = dataclasses.MISSING):
        self.key, self.expected = key, expected
        suffix = "" if got is dataclasses.MISSING else f", got {got!r}"
        super().__init__(f"{key}: expected {expected}{suffix}")


def check(ok: bool, key: str, expected: str, got: Any = dataclasses.MISSING) -> None:
    if not ok:
        raise FieldError(key, expected, got)


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
    shared_filesystem: bool = False
    """Local paths are on a file system every node mounts at the same place (NFS, a shared disk). Without it
    a job on a cluster of more than one node refuses local ``run.out``, ``train.storage_path``, manifest and
    video paths."""

    def __post_init__(self) -> None:
        check(self.max_retries >= 0, "storage.max_retries", "an integer >= 0", self.max_retries)
        check(self.retry_backoff_s >= 0, "storage.retry_backoff_s", "a number >= 0", self.retry_backoff_s)


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
        check(self.videos > 0, "synth.videos", "an integer > 0", self.videos)
        check(self.size >= 16 and self.size % 2 == 0, "synth.size", "an even integer >= 16", self.size)
        check(self.seconds > 0, "synth.seconds", "a number > 0", self.seconds)
        check(self.fps > 0, "synth.fps", "an integer > 0", self.fps)
        check(self.workers > 0, "synth.workers", "an integer > 0", self.workers)


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
    decode_actors: Literal["fixed", "auto"] = "fixed"
    """``fixed``: every decode pool has ``decode_concurrency`` actors, and a job that cannot place them all
    fails before it starts; ``auto``: pools shrink (to 1 actor at least) until the job fits the cluster."""
    rows_per_block: int = 4
    augment: bool = False  # training-time augmentation (off in the method)
    prepare_out: str = ""  # `vidret prepare` writes <out>/videos/*.mp4 and <out>/manifest/<split>.parquet
    prepare_fps: float = 3.0  # frame rate of the prepared files (method 5.3)
    prepare_short_side: int = 224  # short side of the prepared files (even, aspect kept)
    on_duplicate: Literal["error", "keep-first"] = "error"  # `vidret manifest`: one id naming two videos

    def __post_init__(self) -> None:
        check(2 <= self.max_words <= 77, "data.max_words", "an integer in [2, 77]")
        check(1 <= self.max_frames <= 77, "data.max_frames", "an integer in [1, 77]")
        check(self.framerate > 0, "data.framerate", "a number > 0", self.framerate)
        check(self.size > 0, "data.size", "an integer > 0", self.size)
        check(0.0 <= self.max_bad_fraction <= 1.0, "data.max_bad_fraction", "a number in [0, 1]")
        check(self.decode_timeout_s > 0, "data.decode_timeout_s", "a number > 0", self.decode_timeout_s)
        check(
            self.decode_concurrency > 0, "data.decode_concurrency", "an integer > 0", self.decode_concurrency
        )
        check(self.rows_per_block > 0, "data.rows_per_block", "an integer > 0", self.rows_per_block)
        check(self.prepare_fps > 0, "data.prepare_fps", "a number > 0", self.prepare_fps)
        check(
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
        check(self.temporal_layers >= 0, "model.temporal_layers", "an integer >= 0", self.temporal_layers)
        check(self.wti_hidden_mult >= 1, "model.wti_hidden_mult", "an integer >= 1", self.wti_hidden_mult)
        check(self.logit_scale_max > 0, "model.logit_scale_max", "a number > 0", self.logit_scale_max)


@dataclass(frozen=True)
class DiffusionConfig:
    """The generative re-ranker: schedule, denoisers, candidate selection and fusion."""

    steps: int = 50  # T
    schedule: Literal["cosine", "linear"] = "cosine"
    num: int = 127  # hard negatives per query in training (needs num <= global batch - 1)
    negatives_fill: Literal["positives", "error"] = "positives"
    """When a batch has fewer than ``num`` negatives (same-video duplicates): ``positives`` (the default; the
    upstream instead takes ties of -1, possibly the pair itself) fills the list with the other same-video
    captions/videos as "negatives", most similar first (never the pair itself); ``error`` raises."""
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
        check(self.steps >= 1, "diffusion.steps", "an integer >= 1", self.steps)
        check(self.num >= 1, "diffusion.num", "an integer >= 1", self.num)
        check(self.t2v_k >= 1 and self.v2t_k >= 1, "diffusion.t2v_k/v2t_k", "integers >= 1")
        check(0 <= self.sample_steps <= self.steps, "diffusion.sample_steps", "an integer in [0, steps]")


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
        check(self.epochs >= 1, "train.epochs", "an integer >= 1", self.epochs)
        check(self.batch_size >= 2, "train.batch_size", "an integer >= 2", self.batch_size)
        check(self.lr > 0, "train.lr", "a number > 0", self.lr)
        check(0 <= self.warmup_proportion < 1, "train.warmup_proportion", "a number in [0, 1)")
        check(0 <= self.ema_decay < 1, "train.ema_decay", "a number in [0, 1)")
        check(self.num_workers >= 1, "train.num_workers", "an integer >= 1", self.num_workers)
        check(
            self.batch_size % self.num_workers == 0,
            "train.batch_size",
            f"a multiple of train.num_workers ({self.num_workers})",
        )
        check(self.checkpoint_every >= 1, "train.checkpoint_every", "an integer >= 1", self.checkpoint_every)
        check(0 < self.val_fraction < 1, "train.val_fraction", "a number in (0, 1)")


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
    """``correct`` (the default): each video's own captions form its group; ``upstream_off_by_one``
    reproduces the upstream's grouping (docs/method.md), to compare with published MSVD numbers."""
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
        check(
            self.bootstrap_resamples >= 1,
            "eval.bootstrap_resamples",
            "an integer >= 1",
            self.bootstrap_resamples,
        )
        check(
            0 < self.bootstrap_level < 1, "eval.bootstrap_level", "a number in (0, 1)", self.bootstrap_level
        )
        check(
            self.report_per_outcome >= 0,
            "eval.report_per_outcome",
            "an integer >= 0",
            self.report_per_outcome,
        )
        check(self.threads >= 0, "eval.threads", "an integer >= 0", self.threads)
        check(
            len(self.fusion_alphas) > 0 and len(self.fusion_temps) > 0,
            "eval.fusion_alphas/fusion_temps",
            "non-empty lists",
        )
        check(self.batch_size >= 1, "eval.batch_size", "an integer >= 1", self.batch_size)
        check(self.block_size >= 1, "eval.block_size", "an integer >= 1", self.block_size)
        check(self.num_workers >= 1, "eval.num_workers", "an integer >= 1", self.num_workers)


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


AnnKind = Literal["auto", "flat", "ivf", "hnsw"]


@dataclass(frozen=True)
class SearchConfig:
    """Text-to-video search over an index of a video library (``vidret index`` / ``search`` / ``serve``).

    Query path: ANN prefilter (top ``prefilter_m`` on pooled embeddings) -> exact WTI on those ->
    optional diffusion re-rank of the best ``rerank_k`` (0 = ``diffusion.t2v_k``) -> top ``k``.
    """

    prefilter_m: int = 200  # candidates kept by the ANN prefilter for the exact WTI
    k: int = 10  # results per query (default of a request)
    max_k: int = 100  # largest k a request may ask for
    rerank: bool = True  # default of a request; needs a stage-2 (generation) checkpoint
    rerank_k: int = 0  # candidates re-ranked by the diffusion model; 0 = diffusion.t2v_k
    ann: AnnKind = "auto"  # auto: exact flat up to flat_max vectors, IVF above
    flat_max: int = 50_000
    ivf_lists: int = 0  # IVF cells; 0 = 4 * sqrt(N) (at most N / 39, faiss's training minimum)
    nprobe: int = 64  # IVF cells visited per query
    hnsw_m: int = 32  # HNSW links per node
    ef: int = 256  # HNSW efSearch (must be well above prefilter_m)
    part_size: int = 1024  # videos per committed index part (the unit of resuming)
    thumb_size: int = 96  # longest side of the JPEG thumbnail, pixels
    max_query_chars: int = 1000  # longer queries are refused (400)
    host: str = "127.0.0.1"  # `vidret serve` HTTP address
    port: int = 8000
    replicas: int = 1  # fixed replicas, or the minimum when autoscaling
    max_replicas: int = 0  # > replicas turns on autoscaling between replicas and max_replicas
    target_ongoing_requests: float = 2.0  # autoscaling target per replica
    max_ongoing_requests: int = 16  # queued + running requests a replica accepts
    replica_cpus: float = 1.0  # CPUs reserved per replica (its torch threads)

    def __post_init__(self) -> None:
        check(self.prefilter_m >= 1, "search.prefilter_m", "an integer >= 1", self.prefilter_m)
        check(1 <= self.k <= self.max_k, "search.k", f"an integer in [1, search.max_k={self.max_k}]", self.k)
        check(self.rerank_k >= 0, "search.rerank_k", "an integer >= 0", self.rerank_k)
        check(self.flat_max >= 0, "search.flat_max", "an integer >= 0", self.flat_max)
        check(self.ivf_lists >= 0, "search.ivf_lists", "an integer >= 0", self.ivf_lists)
        check(self.nprobe >= 1, "search.nprobe", "an integer >= 1", self.nprobe)
        check(self.hnsw_m >= 2, "search.hnsw_m", "an integer >= 2", self.hnsw_m)
        check(self.ef >= 1, "search.ef", "an integer >= 1", self.ef)
        check(self.part_size >= 1, "search.part_size", "an integer >= 1", self.part_size)
        check(16 <= self.thumb_size <= 512, "search.thumb_size", "an integer in [16, 512]", self.thumb_size)
        check(self.max_query_chars >= 1, "search.max_query_chars", "an integer >= 1", self.max_query_chars)
        check(0 <= self.port <= 65535, "search.port", "an integer in [0, 65535]", self.port)
        check(self.replicas >= 1, "search.replicas", "an integer >= 1", self.replicas)
        check(
            self.max_replicas == 0 or self.max_replicas >= self.replicas,
            "search.max_replicas",
            f"0 (no autoscaling) or an integer >= search.replicas={self.replicas}",
            self.max_replicas,
        )
        check(self.target_ongoing_requests > 0, "search.target_ongoing_requests", "a number > 0")
        check(self.max_ongoing_requests >= 1, "search.max_ongoing_requests", "an integer >= 1")
        check(self.replica_cpus > 0, "search.replica_cpus", "a number > 0", self.replica_cpus)


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking. TensorBoard scalars are always written under ``<run.out>/tensorboard``; MLflow
    also gets the params, metrics and report when ``mlflow_uri`` is set (``pip install 'vidret[tracking]'``).
    """

    mlflow_uri: str = (
        ""  # "" = off; a local store (file:/abs/mlruns or a path) or a server (http://host:5000)
    )


@dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how it reaches Ray."""

    out: str = "runs/default"
    seed: int = 42
    ray_address: str | None = None  # None = start a local Ray instance
    num_cpus: int | None = None  # for a local instance only
    pending_timeout_s: float = 300.0  # an actor or placement group pending longer than this ends the job
    autoscale_wait_s: float = 600.0  # how long a job waits for autoscaler nodes it needs
    autoscale_max_cpus: float | None = (
        None  # the autoscaler's upper bound on cluster CPUs (None: no autoscaler)
    )
    autoscale_max_gpus: float | None = None  # the same for GPUs

    def __post_init__(self) -> None:
        check(self.pending_timeout_s > 0, "run.pending_timeout_s", "a number > 0", self.pending_timeout_s)
        check(self.autoscale_wait_s >= 0, "run.autoscale_wait_s", "a number >= 0", self.autoscale_wait_s)
        for name in ("autoscale_max_cpus", "autoscale_max_gpus"):
            value = getattr(self, name)
            check(value is None or value >= 0, f"run.{name}", "null or a number >= 0", value)


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
    search: SearchConfig = field(default_factory=SearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)
