"""Retrieval metrics counted exactly like the upstream ``compute_metrics`` (docs/method.md §6), plus dual
softmax.

Shapes: Q queries, N gallery items, T captions, V videos. ``sim_QN[i, j]`` is the score of gallery item j for
query i (higher is better). Ranks are 0-based: rank 0 means the correct item is first.

Rank of the correct item for query i with score ``s = sim[i, gt_i]``: ``greater = #{j: sim_ij > s}`` and
``equal = #{j: sim_ij == s}`` (>= 1, the item itself). How ties are counted, ``ties=``:

* ``"upstream"`` (default, faithful): ``compute_metrics`` sorts ``-sim`` per row and keeps every position
where
  ``sorted - diag == 0``. A row with ``equal`` tied scores therefore contributes ``equal`` hits, at ranks
  ``greater, greater+1, ..., greater+equal-1``, and the denominator is the number of hits, not of queries.
  Without
  ties this is one rank per query, ``greater``. (The multi-caption t2v path of the upstream uses a double
  argsort
  instead: one rank per query, ties in column order; see :func:`t2v_multi`.)
* ``"optimistic"``: one rank per query, ``greater`` (ties resolved in favour of the correct item).
* ``"pessimistic"``: one rank per query, ``greater + equal - 1``.

``R@K = 100 * mean(rank < K)``, ``MdR = median(rank) + 1``, ``MnR = mean(rank) + 1``; ``n`` is the number
of ranks
counted. Inputs may be numpy arrays or (CPU or GPU) torch tensors; computation is float64 numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Ties = Literal["upstream", "optimistic", "pessimistic"]
Grouping = Literal["correct", "upstream_off_by_one"]
Median = Literal["midpoint", "lower"]

RECALL_KS: tuple[int, ...] = (1, 5, 10, 50)
_TIES = ("upstream", "optimistic", "pessimistic")
_GROUPINGS = ("correct", "upstream_off_by_one")

Ranks = npt.NDArray[np.int64]  # 0-based ranks (or upstream hits), int64


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Numpy view of an array-like or torch tensor (detached, moved to CPU) without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected an array or tensor, got {type(x).__name__}") from err


def _check_sim(sim: Any, name: str) -> npt.NDArray[np.float64]:
    sim_QN = _to_numpy(sim, name)
    if sim_QN.ndim != 2 or sim_QN.shape[0] == 0 or sim_QN.shape[1] == 0:
        raise ValueError(
            f"{name}: expected a non-empty 2-D (queries, gallery) matrix, got shape {sim_QN.shape}"
        )
    if not np.issubdtype(sim_QN.dtype, np.number) or np.iscomplexobj(sim_QN):
        raise TypeError(f"{name}: expected real numbers, got dtype {sim_QN.dtype}")
    sim_QN = sim_QN.astype(np.float64, copy=False)
    if not np.isfinite(sim_QN).all():
        bad = np.argwhere(~np.isfinite(sim_QN))[0]
        raise ValueError(
            f"{name}: expected finite scores, found {sim_QN[tuple(bad)]} at row {bad[0]}, col {bad[1]}"
        )
    return sim_QN


def _check_index(idx: Any, name: str, length: int, upper: int) -> npt.NDArray[np.int64]:
    idx_Q = _to_numpy(idx, name)
    if idx_Q.ndim != 1 or idx_Q.shape[0] != length:
        raise ValueError(f"{name}: expected shape ({length},), got {idx_Q.shape}")
    if not np.issubdtype(idx_Q.dtype, np.integer):
        raise TypeError(f"{name}: expected integer indices, got dtype {idx_Q.dtype}")
    if length and (idx_Q.min() < 0 or idx_Q.max() >= upper):
        bad = int(np.flatnonzero((idx_Q < 0) | (idx_Q >= upper))[0])
        raise ValueError(f"{name}: expected indices in [0, {upper}), got {int(idx_Q[bad])} at position {bad}")
    return idx_Q.astype(np.int64, copy=False)


def _check_ties(ties: str) -> None:
    if ties not in _TIES:
        raise ValueError(f"ties: expected one of {_TIES}, got {ties!r}")


def _greater_equal(
    sim_QN: npt.NDArray[np.float64], gt_Q: npt.NDArray[np.int64]
) -> tuple[Ranks, Ranks, npt.NDArray[np.float64]]:
    """Per query: #scores > the correct one, #scores == it (>= 1), and the correct score itself."""
    target_Q = sim_QN[np.arange(sim_QN.shape[0]), gt_Q]
    greater_Q = (sim_QN > target_Q[:, None]).sum(axis=1)
    equal_Q = (sim_QN == target_Q[:, None]).sum(axis=1)
    return greater_Q, equal_Q, target_Q


def _ranks(sim_QN: npt.NDArray[np.float64], gt_Q: npt.NDArray[np.int64], ties: str) -> Ranks:
    greater_Q, equal_Q, _ = _greater_equal(sim_QN, gt_Q)
    if ties == "optimistic":
        return greater_Q
    if ties == "pessimistic":
        return greater_Q + equal_Q - 1
    # upstream: one hit per tied position, in row order (what np.where over the sorted matrix yields)
    starts_H = np.repeat(greater_Q, equal_Q)
    offsets_H = np.arange(starts_H.shape[0]) - np.repeat(np.cumsum(equal_Q) - equal_Q, equal_Q)
    return starts_H + offsets_H


def retrieval_ranks(sim_QN: Any, gt_Q: Any = None, *, ties: Ties = "upstream") -> np.ndarray:
    """0-based ranks of the correct gallery item for each query.

    sim_QN: (Q, N) scores. gt_Q: (Q,) column index of each query's correct item; ``None`` means the diagonal
    (square matrix, query i matches item i, as the upstream assumes). Returns (Q,) int64 ranks, or with
    ``ties="upstream"`` (H,) hits with H >= Q (one per tied position, see the module docstring).
    """
    _check_ties(ties)
    sim = _check_sim(sim_QN, "sim_QN")
    if gt_Q is None:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError(
                f"sim_QN: gt_Q=None needs a square matrix (diagonal ground truth), got {sim.shape}"
            )
        gt = np.arange(sim.shape[0])
    else:
        gt = _check_index(gt_Q, "gt_Q", sim.shape[0], sim.shape[1])
    return _ranks(sim, gt, ties)


def metrics_from_ranks(ranks: Any, *, median: Median = "midpoint") -> dict[str, float]:
    """R@1/5/10/50 (percent), MdR, MnR (1-based) and n from (H,) 0-based ranks.

    ``median="midpoint"`` is ``np.median`` (mean of the two middle values; ``compute_metrics``), ``"lower"``
    the lower middle value (``torch.median``, used by the upstream multi-caption t2v metrics).
    """
    r = _to_numpy(ranks, "ranks")
    if r.ndim != 1 or r.shape[0] == 0:
        raise ValueError(f"ranks: expected a non-empty 1-D array, got shape {r.shape}")
    if median not in ("midpoint", "lower"):
        raise ValueError(f"median: expected 'midpoint' or 'lower', got {median!r}")
    r = r.astype(np.float64)
    out = {f"R{k}": float(100.0 * np.mean(r < k)) for k in RECALL_KS}
    mid = float(np.median(r)) if median == "midpoint" else float(np.sort(r)[(r.shape[0] - 1) // 2])
    out["MdR"] = mid + 1.0
    out["MnR"] = float(np.mean(r)) + 1.0
    out["n"] = float(r.shape[0])
    return out


def retrieval_metrics(sim_QN: Any, gt_Q: Any = None, *, ties: Ties = "upstream") -> dict[str, float]:
    """Metrics of one direction: rows are queries, ``gt_Q`` (or the diagonal) the correct columns.

    Single-caption datasets: t2v is ``retrieval_metrics(sim_TV)`` and v2t ``retrieval_metrics(sim_VT)`` on the
    separately re-ranked v2t matrix (not simply the transpose once re-ranking has been applied).
    Returns {"R1", "R5", "R10", "R50", "MdR", "MnR", "n"}.
    """
    return metrics_from_ranks(retrieval_ranks(sim_QN, gt_Q, ties=ties))


# --- multi-caption datasets (MSVD): several captions per video ---------------------------------------------


def caption_groups(text_to_video_T: Any, num_videos: int, grouping: Grouping = "correct") -> np.ndarray:
    """(T,) video label used for each caption; -1 marks a caption the grouping drops.

    ``"correct"``: caption t belongs to ``text_to_video_T[t]``.
    ``"upstream_off_by_one"`` reproduces DiffusionRet/EMCL's grouping: with ``last_v`` the index of video
    v's last
    caption, group v is ``[last_{v-1}, last_v)`` (``last_{-1} = 0``), so each video's group holds the previous
    video's last caption and misses its own; the very last caption is dropped. Needs captions stored
    contiguously in video order (``text_to_video_T`` non-decreasing and covering 0..V-1), as upstream.
    """
    if grouping not in _GROUPINGS:
        raise ValueError(f"grouping: expected one of {_GROUPINGS}, got {grouping!r}")
    t2v = _to_numpy(text_to_video_T, "text_to_video_T")
    if t2v.ndim != 1 or t2v.shape[0] == 0:
        raise ValueError(f"text_to_video_T: expected a non-empty 1-D array, got shape {t2v.shape}")
    t2v = _check_index(t2v, "text_to_video_T", t2v.shape[0], num_videos)
    if grouping == "correct":
        return t2v.copy()
    if np.any(np.diff(t2v) < 0) or np.unique(t2v).shape[0] != num_videos:
        raise ValueError(
            "text_to_video_T: grouping='upstream_off_by_one' needs captions stored contiguously per video in "
            f"video order 0..{num_videos - 1} (non-decreasing, every video present)"
        )
    last_V = np.flatnonzero(np.r_[t2v[1:] != t2v[:-1], True])  # index of each video's last caption
    labels_T = np.searchsorted(last_V, np.arange(t2v.shape[0]), side="right")
    labels_T[labels_T == num_videos] = -1
    return labels_T


def _multi_inputs(sim_TV: Any, text_to_video_T: Any, grouping: Grouping) -> tuple[np.ndarray, np.ndarray]:
    sim = _check_sim(sim_TV, "sim_TV")
    t2v = _to_numpy(text_to_video_T, "text_to_video_T")
    if t2v.ndim != 1 or t2v.shape[0] != sim.shape[0]:
        raise ValueError(
            f"text_to_video_T: expected shape ({sim.shape[0]},) (one per sim_TV row), got {t2v.shape}"
        )
    return sim, caption_groups(t2v, sim.shape[1], grouping)


def t2v_multi_ranks(
    sim_TV: Any, text_to_video_T: Any, *, grouping: Grouping = "correct", ties: Ties = "upstream"
) -> np.ndarray:
    """0-based rank of each (kept) caption's video among all V videos; (T,) or (T-1,) for the upstream
    grouping.

    ``ties="upstream"`` here follows the upstream's double argsort: one rank per caption, tied videos ordered
    by column index (``greater + #{tied columns before the correct one}``). torch's argsort is not stable, so
    the upstream itself is not deterministic under ties; this is its stable-sort outcome.
    """
    _check_ties(ties)
    sim, labels_T = _multi_inputs(sim_TV, text_to_video_T, grouping)
    keep_T = labels_T >= 0
    sim, gt = sim[keep_T], labels_T[keep_T]
    if ties != "upstream":
        return _ranks(sim, gt, ties)
    greater, _, target = _greater_equal(sim, gt)
    before = np.arange(sim.shape[1])[None, :] < gt[:, None]
    tied_before: Ranks = ((sim == target[:, None]) & before).sum(axis=1)
    return greater + tied_before


def v2t_multi_sim(sim_TV: Any, text_to_video_T: Any, *, grouping: Grouping = "correct") -> np.ndarray:
    """(V, V) video-by-group scores: entry (v, g) is the best score of video v over group g's captions.

    This is the upstream ``tensor_video_to_text_sim`` (max over the group's sentences, transposed): a video's
    "text" is its best caption. Empty groups give a column of -inf.
    """
    sim, labels_T = _multi_inputs(sim_TV, text_to_video_T, grouping)
    num_videos = sim.shape[1]
    out_GV = np.full((num_videos, num_videos), -np.inf)
    keep_T = labels_T >= 0
    np.maximum.at(out_GV, labels_T[keep_T], sim[keep_T])
    return out_GV.T.copy()


def v2t_multi_ranks(
    sim_TV: Any, text_to_video_T: Any, *, grouping: Grouping = "correct", ties: Ties = "upstream"
) -> np.ndarray:
    """0-based rank of each video's own caption group among all groups (rows: videos, as ``compute_metrics``).

    With ``grouping="correct"`` every video needs at least one caption. With the upstream grouping a video
    whose group is empty (its only caption went to the next group) is left out, as the upstream's ``-inf`` row
    yields no hit.
    """
    _check_ties(ties)
    sim_VG = v2t_multi_sim(sim_TV, text_to_video_T, grouping=grouping)
    has_group = np.isfinite(np.diagonal(sim_VG))
    if grouping == "correct" and not has_group.all():
        missing = np.flatnonzero(~has_group)[:5].tolist()
        raise ValueError(
            f"text_to_video_T: v2t needs at least one caption per video; videos {missing} have none"
        )
    rows = np.flatnonzero(has_group)
    return _ranks(sim_VG[rows], rows, ties)


def t2v_multi(
    sim_TV: Any, text_to_video_T: Any, *, grouping: Grouping = "correct", ties: Ties = "upstream"
) -> dict[str, float]:
    """Multi-caption t2v metrics: each caption ranked against all videos (see :func:`t2v_multi_ranks`).

    With ``ties="upstream"`` MdR uses the lower median (``torch.median``), as the upstream does here.
    """
    ranks = t2v_multi_ranks(sim_TV, text_to_video_T, grouping=grouping, ties=ties)
    return metrics_from_ranks(ranks, median="lower" if ties == "upstream" else "midpoint")


def v2t_multi(
    sim_TV: Any, text_to_video_T: Any, *, grouping: Grouping = "correct", ties: Ties = "upstream"
) -> dict[str, float]:
    """Multi-caption v2t metrics, each video scored by its best caption (see :func:`v2t_multi_ranks`).

    sim_TV: (T, V) caption-by-video scores; to evaluate a separately re-ranked (V, T) v2t matrix pass its
    transpose.
    """
    return metrics_from_ranks(v2t_multi_ranks(sim_TV, text_to_video_T, grouping=grouping, ties=ties))


# --- score normalisation ------------------------------------------------------------------------------------


def dual_softmax(sim_QN: Any, temp: float = 100.0, *, query_axis: int = 0) -> np.ndarray:
    """Dual-softmax re-scoring (DSL, CAMoE): ``sim * softmax(temp * sim, over the query axis)``.

    A TEST-TIME TRICK: each score is weighted by how strongly its gallery item prefers this query over all
    other
    test queries, which uses the whole test query set at once. The upstream code has none; report it
    separately and labelled. sim_QN: (Q, N) with queries on ``query_axis`` (0 for t2v on sim_TV). Returns
    (Q, N).
    """
    sim = _check_sim(sim_QN, "sim_QN")
    if query_axis not in (0, 1):
        raise ValueError(f"query_axis: expected 0 or 1, got {query_axis}")
    if not np.isfinite(temp) or temp <= 0:
        raise ValueError(f"temp: expected a finite number > 0, got {temp}")
    logits = temp * sim
    logits -= logits.max(axis=query_axis, keepdims=True)
    prior = np.exp(logits)
    prior /= prior.sum(axis=query_axis, keepdims=True)
    return sim * prior


# --- text table
# ----------------------------------------------------------------------------------------------

_TABLE_COLS: tuple[tuple[str, str, str], ...] = (
    ("R1", "R@1", "{:.1f}"),
    ("R5", "R@5", "{:.1f}"),
    ("R10", "R@10", "{:.1f}"),
    ("MdR", "MdR", "{:.1f}"),
    ("MnR", "MnR", "{:.1f}"),
)
DIRECTIONS: tuple[str, ...] = ("t2v", "v2t")


def _cell(
    metrics: Mapping[str, Any] | None,
    key: str,
    fmt: str,
    where: str,
    interval: Mapping[str, Any] | None = None,
) -> str:
    if metrics is None or key not in metrics or metrics[key] is None:
        return "-"
    value = metrics[key]
    try:
        text = fmt.format(float(value))
    except (TypeError, ValueError) as err:
        raise TypeError(f"results[{where}][{key!r}]: expected a number, got {value!r}") from err
    if interval is not None and key in interval:
        text += " ±" + fmt.format((float(interval[key]["hi"]) - float(interval[key]["lo"])) / 2.0)
    return text


def table_rows(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    intervals: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> list[list[str]]:
    """The formatted cells of :func:`metrics_table`: one list per result row, label first.

    intervals: optional {row label: {direction: {metric: {"lo", "hi"}}}}; a cell with one reads ``40.0 ±4.8``
    (half the interval's width).
    """
    if not isinstance(results, Mapping):
        raise TypeError(
            f"results: expected a mapping of row label -> {{direction: metrics}}, got {type(results)}"
        )
    rows = []
    for label, by_dir in results.items():
        if not isinstance(by_dir, Mapping):
            raise TypeError(
                f"results[{label!r}]: expected a mapping with 't2v'/'v2t' metric dicts, got {by_dir!r}"
            )
        unknown = sorted(set(by_dir) - set(DIRECTIONS))
        if unknown:
            raise ValueError(
                f"results[{label!r}]: unknown direction(s) {unknown}; expected keys {DIRECTIONS}"
            )
        cells = [str(label)]
        for d in DIRECTIONS:
            m = by_dir.get(d)
            if m is not None and not isinstance(m, Mapping):
                raise TypeError(f"results[{label!r}][{d!r}]: expected a metrics mapping, got {m!r}")
            iv = (intervals or {}).get(label, {}).get(d)
            cells += [_cell(m, key, fmt, f"{label!r}][{d!r}", iv) for key, _, fmt in _TABLE_COLS]
        rows.append(cells)
    return rows


def metrics_table(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    intervals: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> str:
    """Plain-text table: one row per entry of ``results`` (e.g. "stage 1", "stage 1 + diffusion re-rank",
    "dual softmax (test-time trick)"), columns ``t2v R@1 R@5 R@10 MdR MnR | v2t R@1 R@5 R@10 MdR MnR``.

    results: {row label: {"t2v": metrics dict, "v2t": metrics dict}}; a missing direction or key prints "-".
    intervals: as :func:`table_rows`; cells with an interval print ``value ±half-width``.
    """
    rows = table_rows(results, intervals)
    names = [name for _, name, _ in _TABLE_COLS]
    ncol = len(names)
    label_w = max([len("run")] + [len(r[0]) for r in rows])
    # the same width for a column in both directions, so the two halves line up
    col_w = [
        max([len(n), 5] + [len(r[1 + i + j * ncol]) for r in rows for j in range(2)])
        for i, n in enumerate(names)
    ]
    half_w = sum(col_w) + ncol - 1

    def line(label: str, cells: list[str]) -> str:
        halves = [
            " ".join(c.rjust(w) for c, w in zip(cells[j * ncol : (j + 1) * ncol], col_w, strict=True))
            for j in range(2)
        ]
        return " | ".join([label.ljust(label_w), *halves]).rstrip()

    out = [
        " | ".join([" " * label_w, *(f"{d} ".ljust(half_w, "-") for d in DIRECTIONS)]),
        line("run", names * 2),
        "-+-".join(["-" * label_w, "-" * half_w, "-" * half_w]),
        *(line(r[0], r[1:]) for r in rows),
    ]
    return "\n".join(out) + "\n"
