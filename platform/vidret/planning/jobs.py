"""What each job asks Ray for, from the config: stage 1, stage 2, the feature cache, evaluation, Tune and
the search index. Pure; :func:`plan_job` checks a job against a :class:`~vidret.planning.fit.Cluster`.

The asks mirror what the jobs request: Train workers at ``train.cpus_per_worker`` CPUs (plus a GPU with
``train.use_gpu``); a decode pool of ``data.decode_concurrency`` actors at ``data.decode_cpus`` per
pipeline; feature-encoder actors at :data:`ENCODER_CPUS`; re-rank tasks at one CPU; Tune trials at one CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from vidret.config import Config, DataConfig
from vidret.planning.fit import Ask, Cluster, Phase, Plan, PlanError, check_phases


def _gpus(cfg: Config) -> dict[str, float]:
    return {"GPU": 1.0} if cfg.train.use_gpu else {}


def _workers(cfg: Config) -> Ask:
    knobs = {"CPU": ("train.cpus_per_worker",), "GPU": ("train.num_workers",)}
    return Ask("workers", cfg.train.num_workers, {"CPU": cfg.train.cpus_per_worker, **_gpus(cfg)}, knobs)


def _decode_pools(data: DataConfig, pools: int, per_pool: int) -> Ask:
    # a zero-CPU pool is placed off the head by data.pipeline (off_head_options), so it is planned that way
    return Ask(
        "decode actors",
        pools * per_pool,
        {"CPU": data.decode_cpus},
        {"CPU": ("data.decode_cpus",)},
        off_head=data.decode_cpus <= 0,
    )


def _bad_video_logs(count: int) -> Ask:
    return Ask("bad-video logs", count, {"CPU": 0.0}, off_head=True)


ENCODER_CPUS = 0.5  # per feature-encoder actor (the cache's text and video passes)


def stage1_phases(cfg: Config, per_pool: int) -> list[Phase]:
    """Stage 1: the Train workers, a decode pool per worker, the validation decode actor (0 CPU: it runs
    while the training pools hold theirs) and one bad-video log per pipeline; then the feature cache of
    the selected weights."""
    world = cfg.train.num_workers
    asks = (
        _workers(cfg),
        _decode_pools(cfg.data, world, per_pool),
        Ask("validation decode actors", 1, {"CPU": 0.0}, off_head=True),
        _bad_video_logs(world + 1),
    )
    return [Phase("stage 1", asks), *cache_phases(cfg, per_pool)]


def cache_phases(cfg: Config, per_pool: int) -> list[Phase]:
    """The feature cache: a text pass (one encoder actor), then a video pass (a decode pool feeding one
    encoder actor, plus the bad-video log)."""
    encoder = Ask("encoder actors", 1, {"CPU": ENCODER_CPUS})
    return [
        Phase("feature cache (texts)", (encoder,)),
        Phase(
            "feature cache (videos)",
            (_decode_pools(cfg.data, 1, per_pool), encoder, _bad_video_logs(1)),
        ),
    ]


def stage2_phases(cfg: Config, per_pool: int) -> list[Phase]:
    """Stage 2: the feature cache for the stage-1 weights, then the Train workers on cached features."""
    return [*cache_phases(cfg, per_pool), Phase("stage 2", (_workers(cfg),))]


RERANK_TASK_CPUS = 1.0  # a re-rank task (Ray's default for a task)


def evaluation_phases(cfg: Config, per_pool: int) -> list[Phase]:
    """Evaluation: the feature cache, then ``eval.num_workers`` re-rank tasks (queued; in the driver at 1)."""
    phases = cache_phases(cfg, per_pool)
    if cfg.eval.rerank and cfg.eval.num_workers > 1:
        tasks = Ask("re-rank tasks", cfg.eval.num_workers, {"CPU": RERANK_TASK_CPUS}, gang=False)
        phases.append(Phase("evaluation (re-rank)", (tasks,)))
    return phases


TRIAL_CPUS = 1.0  # Tune rejects a trial of 0 CPU


def tune_phases(cfg: Config, per_pool: int, trials: int) -> list[Phase]:
    """Tune: the feature cache, then ``trials`` concurrent trials of 1 CPU; a training trial also holds its
    trainer's workers (a gang: a trial that started without room for them waits forever)."""
    trial = Ask("trials", trials, {"CPU": TRIAL_CPUS}, {"CPU": ("tune.max_concurrent",)})
    asks: tuple[Ask, ...] = (trial,)
    if cfg.tune.kind == "training":
        w = _workers(cfg)
        asks = (trial, replace(w, what="trial workers", count=trials * w.count))
    else:
        asks = (replace(trial, gang=False),)
    return [*cache_phases(cfg, per_pool), Phase("tune", asks)]


def index_phases(
    cfg: Config, per_pool: int, encoder_actors: int, encoder_cpus: float, encoder_gpus: float = 0.0
) -> list[Phase]:
    """The search index: one decode pool feeding ``encoder_actors`` encoder actors (batch inference)."""
    res = {"CPU": encoder_cpus, **({"GPU": encoder_gpus} if encoder_gpus else {})}
    encoders = Ask("encoder actors", encoder_actors, res)
    return [Phase("index", (_decode_pools(cfg.data, 1, per_pool), encoders, _bad_video_logs(1)))]


JOBS = ("stage 1", "stage 2", "feature cache", "evaluation", "tune", "index")


def _phases(job: str, cfg: Config, per_pool: int, **extra: Any) -> list[Phase]:
    if job == "stage 1":
        return stage1_phases(cfg, per_pool)
    if job == "stage 2":
        return stage2_phases(cfg, per_pool)
    if job == "feature cache":
        return cache_phases(cfg, per_pool)
    if job == "evaluation":
        return evaluation_phases(cfg, per_pool)
    if job == "tune":
        return tune_phases(cfg, per_pool, extra.get("trials", cfg.tune.max_concurrent))
    if job == "index":
        return index_phases(cfg, per_pool, **extra)
    raise ValueError(f"unknown job {job!r}: expected one of {', '.join(JOBS)}")


def _first_fit(
    job: str, cluster: Cluster, make: Callable[[int], list[Phase]], sizes: Sequence[int], what: str
) -> tuple[Plan, int]:
    """The plan of the first size in ``sizes`` (largest first) whose phases fit, and that size; a note when
    it is not the first. When none fits, :class:`PlanError` for the smallest (for the only one: as is)."""
    first: PlanError | None = None
    last: PlanError | None = None
    for size in sizes:
        try:
            plan = check_phases(job, make(size), cluster)
        except PlanError as e:
            first, last = first or e, e
            continue
        if size == sizes[0]:
            return plan, size
        note = f"{what.format(size=size, full=sizes[0])}, so that {job} fits the cluster ({first})"
        return replace(plan, notes=(*plan.notes, note)), size
    assert first is not None
    assert last is not None
    if len(sizes) == 1:
        raise first
    raise PlanError(f"{last} ({what.format(size=sizes[-1], full=sizes[0])} does not fit either)")


def _pool_sizes(data: DataConfig) -> list[int]:
    full = data.decode_concurrency
    return list(range(full, 0, -1)) if data.decode_actors == "auto" else [full]


_AUTO_NOTE = (
    "data.decode_actors=auto: {size} decode actor(s) per pool instead of data.decode_concurrency={full}"
)
_TUNE_NOTE = "tune.max_concurrent {full} lowered to {size}"


def plan_job(job: str, cfg: Config, cluster: Cluster, **extra: Any) -> Plan:
    """Plan ``job`` (one of :data:`JOBS`) for ``cluster``; :class:`PlanError` when it cannot fit.

    With ``data.decode_actors: auto`` each decode pool shrinks from ``data.decode_concurrency`` (to 1 at
    least) until the job fits, and the plan's ``notes`` say so. For ``tune`` the trials at a time are
    lowered from ``tune.max_concurrent`` to what fits first (``trial_concurrency``), then the pools.
    ``extra`` carries the index's ``encoder_actors`` and ``encoder_cpus``.
    """
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}: expected one of {', '.join(JOBS)}")
    pools = _pool_sizes(cfg.data)
    if job != "tune":
        plan, size = _first_fit(job, cluster, lambda n: _phases(job, cfg, n, **extra), pools, _AUTO_NOTE)
        return replace(plan, decode_actors=size)
    trials = list(range(cfg.tune.max_concurrent, 0, -1))
    # trials first: with fewer trials at a time a sweep is slower, with fewer decode actors every trial is
    _, n_trials = _first_fit(job, cluster, lambda n: tune_phases(cfg, pools[-1], n), trials, _TUNE_NOTE)
    plan, size = _first_fit(job, cluster, lambda n: tune_phases(cfg, n, n_trials), pools, _AUTO_NOTE)
    notes = () if n_trials == trials[0] else (f"tune.max_concurrent {trials[0]} lowered to {n_trials}",)
    return replace(plan, decode_actors=size, trial_concurrency=n_trials, notes=(*notes, *plan.notes))
