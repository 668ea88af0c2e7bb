"""Resource arithmetic of every job against hand-computed cases (vidret.planning)."""

from __future__ import annotations

import pytest

from vidret.config import Config, load_config
from vidret.planning import (
    NODE_ID_LABEL,
    Ask,
    Cluster,
    Node,
    Phase,
    PlanError,
    check_off_head,
    check_phases,
    plan_job,
    remote_args,
)

HEAD = Node("head", {"CPU": 0.0}, is_head=True)


def two_nodes(cpus: float = 1.0, **extra: float) -> Cluster:
    """The three-raylet test cluster: a head with no CPU and two worker nodes."""
    return Cluster((HEAD, Node("node_a", {"CPU": cpus, **extra}), Node("node_b", {"CPU": cpus, **extra})))


def cfg(*overrides: str) -> Config:
    return load_config(None, ["train.batch_size=12", *overrides])


# ---------------------------------------------------------------------------------------------- stage 1
def test_stage1_default_two_workers_fails_with_the_arithmetic_and_the_knobs() -> None:
    # 2 workers x 1 CPU + 2 pools x 2 decode actors x 0.5 CPU = 4 CPUs on a 2-CPU cluster
    with pytest.raises(PlanError) as e:
        plan_job("stage 1", cfg("train.num_workers=2"), two_nodes())
    assert str(e.value) == (
        "stage 1 needs 4 CPUs (2 workers x 1 + 4 decode actors x 0.5), the cluster has 2: "
        "lower train.cpus_per_worker or data.decode_cpus, or add nodes"
    )


def test_stage1_tight_sizing_fits_exactly() -> None:
    # 2 x 0.75 + 4 x 0.125 = 2.0: each node takes one worker and two decode actors
    c = cfg("train.num_workers=2", "train.cpus_per_worker=0.75", "data.decode_cpus=0.125")
    plan = plan_job("stage 1", c, two_nodes())
    assert plan.decode_actors == 2
    assert plan.notes == ()
    assert plan.wait_for is None
    assert plan.phases[0].need() == {"CPU": 2.0}
    asks = plan.asks()
    assert asks["decode actors"].count == 4
    assert asks["validation decode actors"].off_head
    assert asks["bad-video logs"].count == 3  # one per training pipeline and the validation one


def test_stage1_auto_shrinks_the_decode_pools_and_says_so() -> None:
    # 2 x 0.5 + 4 x 0.5 = 3 > 2; with 1 actor per pool 2 x 0.5 + 2 x 0.5 = 2 fits
    c = cfg("train.num_workers=2", "train.cpus_per_worker=0.5", "data.decode_actors=auto")
    plan = plan_job("stage 1", c, two_nodes())
    assert plan.decode_actors == 1
    assert plan.asks()["decode actors"].count == 2
    (note,) = plan.notes
    assert note.startswith("data.decode_actors=auto: 1 decode actor(s) per pool instead of")
    assert "data.decode_concurrency=2" in note
    assert "stage 1 needs 3 CPUs" in note


def test_stage1_auto_that_cannot_shrink_enough_names_the_smallest_pool() -> None:
    # 2 x 1 + 2 x 0.5 = 3 > 2 even with one decode actor per pool
    with pytest.raises(PlanError, match=r"stage 1 needs 3 CPUs \(2 workers x 1 \+ 2 decode actors x 0\.5\)"):
        plan_job("stage 1", cfg("train.num_workers=2", "data.decode_actors=auto"), two_nodes())


def test_stage1_fixed_pools_do_not_shrink() -> None:
    c = cfg("train.num_workers=2", "train.cpus_per_worker=0.5")
    with pytest.raises(PlanError, match="stage 1 needs 3 CPUs"):
        plan_job("stage 1", c, two_nodes())


def test_stage1_then_builds_the_feature_cache() -> None:
    # stage 1: 1 x 0.25 + 2 x 0.375 = 1 fits node_a; its cache's video pass: 2 x 0.375 + 0.5 = 1.25 does not
    one = Cluster((HEAD, Node("node_a", {"CPU": 1.0})))
    c = cfg("train.cpus_per_worker=0.25", "data.decode_cpus=0.375")
    with pytest.raises(PlanError) as e:
        plan_job("stage 1", c, one)
    assert str(e.value).startswith(
        "feature cache (videos) needs 1.25 CPUs (2 decode actors x 0.375 + 1 encoder actors x 0.5), "
        "the cluster has 1: lower data.decode_cpus"
    )
    plan = plan_job("stage 1", c, two_nodes())
    assert [p.name for p in plan.phases] == ["stage 1", "feature cache (texts)", "feature cache (videos)"]
    assert plan.asks()["decode actors"].count == 2  # the training pools' ask (first phase) wins


def test_planned_applies_the_decode_pool_size() -> None:
    from vidret.startup import planned

    c = cfg("train.num_workers=2", "train.cpus_per_worker=0.5", "data.decode_actors=auto")
    plan = plan_job("stage 1", c, two_nodes())
    assert planned(c, plan).data.decode_concurrency == 1
    fixed = cfg()
    assert planned(fixed, plan_job("stage 1", fixed, two_nodes())) is fixed


def test_stage1_one_worker_fits_a_one_node_local_cluster() -> None:
    # a local instance: the head is the only node and does the work; 1 + 2 x 0.5 = 2
    local = Cluster((Node("local", {"CPU": 2.0}, is_head=True),))
    plan = plan_job("stage 1", cfg(), local)
    assert plan.phases[0].need() == {"CPU": 2.0}


def test_a_worker_larger_than_every_node_is_refused() -> None:
    # 1.5 + 2 x 0.125 = 1.75 <= 2 in total, but no node has 1.5 CPUs
    c = cfg("train.cpus_per_worker=1.5", "data.decode_cpus=0.125")
    with pytest.raises(PlanError) as e:
        plan_job("stage 1", c, two_nodes())
    assert str(e.value) == (
        "stage 1: one of the workers needs 1.5 CPUs but no node has that much (CPUs per node: node_a 1, "
        "node_b 1): lower train.cpus_per_worker, or add larger nodes"
    )


def test_units_that_fit_the_total_but_do_not_pack_onto_the_nodes() -> None:
    # 3 x 0.6 + 3 x 0.05 = 1.95 <= 2, but three 0.6-CPU workers need three 1-CPU nodes
    c = cfg(
        "train.num_workers=3",
        "train.cpus_per_worker=0.6",
        "data.decode_cpus=0.05",
        "data.decode_concurrency=1",
    )
    with pytest.raises(PlanError) as e:
        plan_job("stage 1", c, two_nodes())
    assert str(e.value) == (
        "stage 1 fits the cluster's totals but not node by node (CPUs per node: node_a 1, node_b 1): "
        "lower train.cpus_per_worker or data.decode_cpus, or add nodes"
    )


def test_gpu_workers_name_the_gpu_shortfall() -> None:
    cluster = Cluster((HEAD, Node("gpu_a", {"CPU": 8.0, "GPU": 1.0})))
    with pytest.raises(PlanError) as e:
        plan_job("stage 1", cfg("train.num_workers=2", "train.use_gpu=true"), cluster)
    assert str(e.value) == (
        "stage 1 needs 2 GPUs (2 workers x 1), the cluster has 1: lower train.num_workers, or add nodes"
    )


# ---------------------------------------------------------------------------------------------- autoscaler
def test_a_job_that_fits_at_the_autoscaler_bound_waits_for_it() -> None:
    cluster = Cluster(two_nodes().nodes, max_total={"CPU": 4.0})
    plan = plan_job("stage 1", cfg("train.num_workers=2"), cluster)
    assert plan.wait_for == {"CPU": 4.0}


def test_a_job_beyond_the_autoscaler_bound_fails_and_names_the_bound() -> None:
    cluster = Cluster(two_nodes().nodes, max_total={"CPU": 3.0})
    with pytest.raises(PlanError, match=r"needs 4 CPUs .*, the cluster has 2 \(at most 3\): lower"):
        plan_job("stage 1", cfg("train.num_workers=2"), cluster)


# ------------------------------------------------------------------------------------ stage 2, cache
def test_feature_cache_phases() -> None:
    # texts: one encoder actor (0.5); videos: 2 decode actors x 0.5 + 1 encoder actor x 0.5 = 1.5
    plan = plan_job("feature cache", cfg(), two_nodes())
    assert [(p.name, p.need()) for p in plan.phases] == [
        ("feature cache (texts)", {"CPU": 0.5}),
        ("feature cache (videos)", {"CPU": 1.5}),
    ]


def test_feature_cache_on_one_small_node_fails_in_the_video_pass() -> None:
    one = Cluster((HEAD, Node("node_a", {"CPU": 1.0})))
    with pytest.raises(PlanError) as e:
        plan_job("feature cache", cfg(), one)
    assert str(e.value) == (
        "feature cache (videos) needs 1.5 CPUs (2 decode actors x 0.5 + 1 encoder actors x 0.5), the cluster "
        "has 1: lower data.decode_cpus, or add nodes"
    )


def test_stage2_is_the_cache_then_the_workers() -> None:
    plan = plan_job("stage 2", cfg("train.num_workers=2"), two_nodes())
    assert [p.name for p in plan.phases] == ["feature cache (texts)", "feature cache (videos)", "stage 2"]
    assert plan.phases[-1].need() == {"CPU": 2.0}
    with pytest.raises(PlanError, match=r"^stage 2 needs 3 CPUs \(3 workers x 1\), the cluster has 2"):
        plan_job("stage 2", cfg("train.num_workers=3"), two_nodes())


# ---------------------------------------------------------------------------------------------- evaluation
def test_evaluation_rerank_tasks_queue_so_one_must_fit() -> None:
    plan = plan_job("evaluation", cfg("eval.num_workers=3"), two_nodes())
    rerank = plan.phases[-1]
    assert rerank.name == "evaluation (re-rank)"
    assert rerank.need() == {}  # queued tasks hold nothing up front: 3 tasks on 2 CPUs just take turns
    assert plan.asks()["re-rank tasks"].count == 3


def test_evaluation_rerank_task_larger_than_every_node_is_refused() -> None:
    small = two_nodes(cpus=0.5)
    c = cfg("eval.num_workers=2", "data.decode_cpus=0.25", "data.decode_concurrency=1")
    with pytest.raises(PlanError) as e:
        plan_job("evaluation", c, small)
    assert str(e.value) == (
        "evaluation (re-rank): one of the re-rank tasks needs 1 CPU but no node has that much "
        "(CPUs per node: node_a 0.5, node_b 0.5): add larger nodes"
    )


def test_evaluation_in_the_driver_has_no_rerank_phase() -> None:
    plan = plan_job("evaluation", cfg("eval.num_workers=1"), two_nodes())
    assert [p.name for p in plan.phases] == ["feature cache (texts)", "feature cache (videos)"]


# ---------------------------------------------------------------------------------------------- tune
def test_tune_training_trials_are_lowered_to_what_fits() -> None:
    # a trial holds 1 CPU and its trainer 1 x 1: two trials need 4 CPUs, one needs 2
    c = cfg("tune.kind=training", "tune.max_concurrent=2")
    plan = plan_job("tune", c, two_nodes())
    assert plan.trial_concurrency == 1
    assert plan.phases[-1].need() == {"CPU": 2.0}
    assert plan.notes[0] == "tune.max_concurrent 2 lowered to 1"


def test_tune_training_that_cannot_fit_one_trial() -> None:
    c = cfg("tune.kind=training", "tune.max_concurrent=2", "train.num_workers=2")
    with pytest.raises(PlanError, match=r"tune needs 3 CPUs \(1 trials x 1 \+ 2 trial workers x 1\)"):
        plan_job("tune", c, two_nodes())


def test_tune_inference_trials_queue() -> None:
    plan = plan_job("tune", cfg("tune.max_concurrent=4"), two_nodes())
    assert plan.trial_concurrency == 4
    assert plan.phases[-1].need() == {}


# ---------------------------------------------------------------------------------------------- index
def test_index_decode_pool_and_encoders() -> None:
    # 2 decode actors x 0.5 + 2 encoder actors x 0.5 = 2
    plan = plan_job("index", cfg(), two_nodes(), encoder_actors=2, encoder_cpus=0.5)
    assert plan.phases[0].need() == {"CPU": 2.0}
    with pytest.raises(PlanError, match=r"index needs 2.5 CPUs"):
        plan_job("index", cfg(), two_nodes(), encoder_actors=3, encoder_cpus=0.5)


def test_unknown_job() -> None:
    with pytest.raises(ValueError, match="unknown job 'stage 3'"):
        plan_job("stage 3", cfg(), two_nodes())


# ---------------------------------------------------------------------------------------------- the head
def test_an_ask_for_nothing_without_a_node_constraint_is_refused() -> None:
    phase = Phase("job", (Ask("loggers", 1, {"CPU": 0.0}),))
    with pytest.raises(PlanError, match="job: loggers ask for no resource and no node constraint"):
        check_off_head([phase])
    with pytest.raises(PlanError, match="loggers ask for no resource"):
        check_phases("job", [phase], two_nodes())


def test_every_zero_ask_of_every_job_is_off_head() -> None:
    c = cfg("train.num_workers=2", "train.cpus_per_worker=0.5", "data.decode_cpus=0.25", "eval.num_workers=2")
    big = two_nodes(cpus=4.0)
    for job in ("stage 1", "stage 2", "feature cache", "evaluation", "tune"):
        for phase in plan_job(job, c, big).phases:
            for ask in phase.asks:
                assert ask.off_head or not ask.is_zero, (job, ask)


def test_remote_args() -> None:
    zero = Ask("logs", 1, {"CPU": 0.0}, off_head=True)
    assert remote_args(zero, "abc123") == {"num_cpus": 0.0, "label_selector": {NODE_ID_LABEL: "!abc123"}}
    assert remote_args(zero, None) == {"num_cpus": 0.0}  # one-node cluster: the head is the only node
    worker = Ask("workers", 2, {"CPU": 0.75, "GPU": 1.0, "node_a": 0.5})
    assert remote_args(worker, "abc123") == {"num_cpus": 0.75, "num_gpus": 1.0, "resources": {"node_a": 0.5}}


@pytest.mark.parametrize("job", ["stage 1", "feature cache", "evaluation"])
def test_zero_cpu_decode_pools_are_planned_off_the_head(job: str) -> None:
    # data.pipeline places a zero-CPU decode pool off the head; the plan must accept it and say so
    plan = plan_job(job, cfg("data.decode_cpus=0.0"), two_nodes())
    decode = [a for p in plan.phases for a in p.asks if a.what == "decode actors"]
    assert decode, f"{job}: no decode pool planned"
    assert all(a.off_head and a.is_zero for a in decode)
