"""Retrieval metrics: hand-computed matrices, the upstream tie counting, multi-caption grouping, DSL,
table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidret.eval.metrics import (
    caption_groups,
    dual_softmax,
    metrics_from_ranks,
    metrics_table,
    retrieval_metrics,
    retrieval_ranks,
    t2v_multi,
    t2v_multi_ranks,
    v2t_multi,
    v2t_multi_ranks,
    v2t_multi_sim,
)


def upstream_compute_metrics_hits(x: np.ndarray) -> np.ndarray:
    """The upstream ``compute_metrics`` counting, written out literally: sort, subtract diagonal, find
    zeros."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, np.newaxis]
    return np.where(sx - d == 0)[1]


def upstream_multi_groups(t2v: np.ndarray) -> list[tuple[int, int]]:
    """Group boundaries the upstream builds: the dataset stores last-caption indices, eval subtracts 1 and
    adds 1 back as lengths (main_retrieval.py:L501, L603-612)."""
    dataset_cut_off_points = [int(i) for i in np.flatnonzero(np.r_[t2v[1:] != t2v[:-1], True])]
    cut_off_points_ = [itm - 1 for itm in dataset_cut_off_points]
    lengths = [itm + 1 for itm in cut_off_points_]
    return list(zip([0, *lengths[:-1]], lengths, strict=True))


def upstream_t2v_multi_ranks(sim_TV: np.ndarray, groups: list[tuple[int, int]]) -> np.ndarray:
    """(V, maxlen, V) padded with -inf, double argsort (stable), keep finite diagonal entries."""
    num_v = sim_TV.shape[1]
    maxlen = max(e - s for s, e in groups)
    stack = np.full((num_v, maxlen, num_v), -np.inf)
    for g, (s, e) in enumerate(groups):
        stack[g, : e - s] = sim_TV[s:e]
    per_len = stack.transpose(1, 0, 2)  # (maxlen, V, V)
    second = np.argsort(np.argsort(-per_len, axis=-1, kind="stable"), axis=-1, kind="stable")
    ranks = np.diagonal(second, axis1=1, axis2=2).T.reshape(-1)  # (V * maxlen), group-major
    diag = np.diagonal(stack, axis1=0, axis2=2).T.reshape(-1)
    return ranks[np.isfinite(diag)]


def test_no_ties_hand_computed() -> None:
    x = np.array([[0.9, 0.5, 0.1], [0.8, 0.3, 0.6], [0.2, 0.7, 0.4]])
    for ties in ("upstream", "optimistic", "pessimistic"):
        assert retrieval_ranks(x, ties=ties).tolist() == [0, 2, 1]
    m = retrieval_metrics(x)
    assert m["R1"] == pytest.approx(100 / 3)
    assert m["R5"] == m["R10"] == m["R50"] == 100.0
    assert m["MdR"] == 2.0
    assert m["MnR"] == 2.0
    assert m["n"] == 3.0


def test_ties_upstream_counts_every_tied_position() -> None:
    x = np.array([[0.5, 0.5, 0.1], [0.7, 0.7, 0.7], [0.9, 0.2, 0.3]])
    assert retrieval_ranks(x).tolist() == [0, 1, 0, 1, 2, 1]
    assert retrieval_ranks(x, ties="optimistic").tolist() == [0, 0, 1]
    assert retrieval_ranks(x, ties="pessimistic").tolist() == [1, 2, 1]
    up = retrieval_metrics(x)
    assert up["n"] == 6.0  # the denominator is the number of hits, not of queries
    assert up["R1"] == pytest.approx(100 * 2 / 6)
    assert up["MdR"] == 2.0
    assert up["MnR"] == pytest.approx(1 + 5 / 6)
    opt = retrieval_metrics(x, ties="optimistic")
    assert opt["R1"] == pytest.approx(200 / 3)
    assert opt["MdR"] == 1.0
    assert opt["MnR"] == pytest.approx(4 / 3)
    pes = retrieval_metrics(x, ties="pessimistic")
    assert pes["R1"] == 0.0
    assert pes["MdR"] == 2.0
    assert pes["MnR"] == pytest.approx(7 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_literal_upstream_counting_with_many_ties(seed: int) -> None:
    x = np.random.default_rng(seed).integers(0, 4, size=(37, 37)).astype(np.float32)
    np.testing.assert_array_equal(retrieval_ranks(x), upstream_compute_metrics_hits(x))
    hits = upstream_compute_metrics_hits(x)
    m = retrieval_metrics(x)
    assert m["R10"] == pytest.approx(100 * np.sum(hits < 10) / len(hits))
    assert m["MdR"] == pytest.approx(np.median(hits) + 1)


def test_explicit_ground_truth_columns_and_torch_input() -> None:
    x = np.array([[0.1, 0.2, 0.3, 0.9], [0.5, 0.6, 0.7, 0.8]])
    assert retrieval_ranks(x, np.array([3, 0])).tolist() == [0, 3]
    assert retrieval_ranks(torch.tensor(x), torch.tensor([3, 0])).tolist() == [0, 3]
    with pytest.raises(ValueError, match="square"):
        retrieval_ranks(x)


@pytest.mark.parametrize(
    ("sim", "gt", "match"),
    [
        (np.array([[0.1, np.nan], [0.2, 0.3]]), None, "finite"),
        (np.zeros((2, 3)), np.array([0, 3]), r"\[0, 3\)"),
        (np.zeros((2, 3)), np.array([0]), r"shape \(2,\)"),
        (np.zeros((0, 3)), None, "non-empty"),
    ],
)
def test_invalid_inputs_raise(sim: np.ndarray, gt: np.ndarray | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        retrieval_ranks(sim, gt)


def test_unknown_tie_mode_raises() -> None:
    with pytest.raises(ValueError, match="ties"):
        retrieval_ranks(np.eye(2), ties="average")  # type: ignore[arg-type]


def test_median_modes() -> None:
    r = np.array([0, 1, 3, 5])
    assert metrics_from_ranks(r)["MdR"] == 3.0  # (1 + 3) / 2 + 1
    assert metrics_from_ranks(r, median="lower")["MdR"] == 2.0  # torch.median: lower middle


# --- multi-caption: 3 videos x 2 captions; each video's last caption resembles the next video ---------------
SIM_TV = np.array(
    [
        [0.9, 0.1, 0.2],
        [0.2, 0.8, 0.1],
        [0.1, 0.7, 0.3],
        [0.3, 0.2, 0.6],
        [0.1, 0.2, 0.9],
        [0.5, 0.4, 0.3],
    ]
)
T2V = np.array([0, 0, 1, 1, 2, 2])


def test_caption_groups_correct_and_off_by_one() -> None:
    assert caption_groups(T2V, 3, "correct").tolist() == [0, 0, 1, 1, 2, 2]
    # groups [0, 1), [1, 3), [3, 5); caption 5 (the last) is dropped
    assert caption_groups(T2V, 3, "upstream_off_by_one").tolist() == [0, 1, 1, 2, 2, -1]


def test_multi_t2v_correct_grouping_hand_computed() -> None:
    assert t2v_multi_ranks(SIM_TV, T2V).tolist() == [0, 1, 0, 2, 0, 2]
    m = t2v_multi(SIM_TV, T2V)
    assert m["R1"] == 50.0
    assert m["R5"] == 100.0
    assert m["n"] == 6.0
    assert m["MdR"] == 1.0  # lower median of [0, 0, 0, 1, 2, 2] is 0 (np.median would give 1.5)
    assert m["MnR"] == pytest.approx(1 + 5 / 6)
    assert t2v_multi(SIM_TV, T2V, ties="optimistic")["MdR"] == 1.5


def test_multi_t2v_upstream_off_by_one_hand_computed() -> None:
    assert t2v_multi_ranks(SIM_TV, T2V, grouping="upstream_off_by_one").tolist() == [0, 0, 0, 0, 0]
    m = t2v_multi(SIM_TV, T2V, grouping="upstream_off_by_one")
    assert m["R1"] == 100.0
    assert m["MnR"] == 1.0
    assert m["n"] == 5.0


def test_multi_v2t_both_groupings_hand_computed() -> None:
    np.testing.assert_allclose(
        v2t_multi_sim(SIM_TV, T2V), [[0.9, 0.3, 0.5], [0.8, 0.7, 0.4], [0.2, 0.6, 0.9]]
    )
    assert v2t_multi_ranks(SIM_TV, T2V).tolist() == [0, 1, 0]
    m = v2t_multi(SIM_TV, T2V)
    assert m["R1"] == pytest.approx(200 / 3)
    assert m["MdR"] == 1.0
    assert m["MnR"] == pytest.approx(4 / 3)
    np.testing.assert_allclose(
        v2t_multi_sim(SIM_TV, T2V, grouping="upstream_off_by_one"),
        [[0.9, 0.2, 0.3], [0.1, 0.8, 0.2], [0.2, 0.3, 0.9]],
    )
    assert v2t_multi(SIM_TV, T2V, grouping="upstream_off_by_one")["R1"] == 100.0


@pytest.mark.parametrize("seed", [0, 1])
def test_multi_t2v_matches_literal_upstream_grouping(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 6, size=7)
    t2v = np.repeat(np.arange(7), sizes)
    sim = rng.normal(size=(t2v.shape[0], 7))
    got = t2v_multi_ranks(sim, t2v, grouping="upstream_off_by_one")
    np.testing.assert_array_equal(got, upstream_t2v_multi_ranks(sim, upstream_multi_groups(t2v)))
    correct_groups = [
        (int(np.flatnonzero(t2v == v)[0]), int(np.flatnonzero(t2v == v)[-1]) + 1) for v in range(7)
    ]
    np.testing.assert_array_equal(t2v_multi_ranks(sim, t2v), upstream_t2v_multi_ranks(sim, correct_groups))


def test_multi_upstream_ties_follow_column_order() -> None:
    sim = np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 0.1], [0.1, 0.2, 0.2]])
    t2v = np.array([0, 1, 2])
    assert t2v_multi_ranks(sim, t2v).tolist() == [0, 1, 1]
    assert t2v_multi_ranks(sim, t2v, ties="pessimistic").tolist() == [2, 1, 1]


def test_off_by_one_empty_group_is_left_out_of_v2t() -> None:
    t2v = np.array([0, 1, 1, 2])  # video 0 has one caption: its upstream group is empty
    sim = np.random.default_rng(0).normal(size=(4, 3))
    assert caption_groups(t2v, 3, "upstream_off_by_one").tolist() == [1, 1, 2, -1]
    assert v2t_multi(sim, t2v, grouping="upstream_off_by_one")["n"] == 2.0
    assert t2v_multi(sim, t2v, grouping="upstream_off_by_one")["n"] == 3.0


def test_multi_input_errors() -> None:
    with pytest.raises(ValueError, match="contiguously"):
        caption_groups(np.array([0, 1, 0]), 2, "upstream_off_by_one")
    with pytest.raises(ValueError, match="at least one caption"):
        v2t_multi(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="grouping"):
        caption_groups(T2V, 3, "shifted")  # type: ignore[arg-type]


def test_dual_softmax_hand_computed_and_fixes_a_hub() -> None:
    e = np.e
    np.testing.assert_allclose(dual_softmax(np.eye(2), temp=1.0), [[e / (e + 1), 0.0], [0.0, e / (e + 1)]])
    sim = np.array([[0.9, 0.4], [0.6, 0.55]])  # video 0 is the top item for both queries
    assert retrieval_metrics(sim)["R1"] == 50.0
    assert retrieval_metrics(dual_softmax(sim, temp=100.0))["R1"] == 100.0
    rect = np.random.default_rng(0).normal(size=(3, 5))
    np.testing.assert_allclose(dual_softmax(rect, query_axis=1), dual_softmax(rect.T).T)
    assert np.isfinite(dual_softmax(rect * 1e3)).all()  # max-subtraction keeps exp in range
    with pytest.raises(ValueError, match="temp"):
        dual_softmax(rect, temp=0.0)


def test_metrics_table_rows_columns_and_missing_cells() -> None:
    x = np.array([[0.9, 0.5, 0.1], [0.8, 0.3, 0.6], [0.2, 0.7, 0.4]])
    results = {
        "stage 1": {"t2v": retrieval_metrics(x), "v2t": retrieval_metrics(x.T)},
        "stage 1 + diffusion re-rank": {"t2v": retrieval_metrics(np.eye(3))},
        "dual softmax (test-time trick)": {"t2v": retrieval_metrics(dual_softmax(x))},
    }
    lines = metrics_table(results).splitlines()
    assert lines[1].split() == [
        "run",
        "|",
        "R@1",
        "R@5",
        "R@10",
        "MdR",
        "MnR",
        "|",
        "R@1",
        "R@5",
        "R@10",
        "MdR",
        "MnR",
    ]
    assert "t2v" in lines[0]
    assert "v2t" in lines[0]
    assert lines[0].index("t2v") < lines[0].index("v2t")
    body = lines[3:]
    assert [ln.split(" | ")[0].strip() for ln in body] == list(results)
    stage1 = body[0].split(" | ")
    assert stage1[1].split() == ["33.3", "100.0", "100.0", "2.0", "2.0"]
    assert body[1].split(" | ")[2].split() == ["-"] * 5
    bars = {ln.index(" | ") for ln in lines[1:] if " | " in ln}
    assert len(bars) == 1  # label column aligned
    assert len({ln.rindex(" | ") for ln in [lines[1], *body]}) == 1  # direction halves aligned


def test_metrics_table_rejects_unknown_direction() -> None:
    with pytest.raises(ValueError, match="unknown direction"):
        metrics_table({"stage 1": {"t2x": {"R1": 1.0}}})
    with pytest.raises(TypeError, match="expected a number"):
        metrics_table({"stage 1": {"t2v": {"R1": "high"}}})
