"""What the report shows of one split: sample queries chosen by outcome, with ranks before and after.

Outcomes, per direction, comparing stage 1 with the re-ranked variant on each query's correct item:
``helped`` (its rank improved; largest gains first), ``hurt`` (its rank worsened; largest losses first) and
``both fail`` (not first in either; worst re-ranked rank first). Each sample carries the correct item's
1-based rank before and after, whether or not it is inside the top 5, and the top 5 of both variants.
Ties in the ordering are broken by query row, so the choice is deterministic.

Items: a t2v query is a caption and its results are videos (shown as thumbnails); a v2t query is a video
(its thumbnail is shown) and its results are captions, or on a multi-caption split caption groups (one per
video, shown by the video's first caption).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vidret.eval.metrics import Grouping, v2t_multi_sim
from vidret.eval.retrieval import top_k
from vidret.features.scoring import EvalResult
from vidret.features.types import FeatureSet

OUTCOMES = ("helped", "hurt", "both fail")
TOP = 5


def _chosen(before: np.ndarray, after: np.ndarray, per_outcome: int) -> list[tuple[str, int]]:
    """(outcome, index into the ranks) pairs, at most ``per_outcome`` of each outcome."""
    idx = np.arange(before.shape[0])
    delta = before - after  # > 0: re-ranking moved the correct item up
    picks = {
        "helped": idx[np.lexsort((idx, -delta))][: int((delta > 0).sum())],
        "hurt": idx[np.lexsort((idx, delta))][: int((delta < 0).sum())],
        "both fail": idx[np.lexsort((idx, -after))][: int(((before > 0) & (after > 0)).sum())],
    }
    return [(o, int(i)) for o in OUTCOMES for i in picks[o][:per_outcome]]


def _video_item(fs: FeatureSet, v: int) -> dict[str, Any]:
    vid = fs.video_ids[v] if fs.video_ids else f"video {v}"
    return {"id": f"video:{v}", "label": vid, "video_id": vid}


def _caption_item(fs: FeatureSet, t: int) -> dict[str, Any]:
    return {
        "id": f"caption:{t}",
        "label": fs.captions[t] if fs.captions else f"caption {t}",
        "video_id": None,
    }


def _first_caption_of(fs: FeatureSet) -> dict[int, int]:
    out: dict[int, int] = {}
    for t, v in enumerate(fs.text_to_video_T.tolist()):
        out.setdefault(int(v), t)
    return out


def _group_item(fs: FeatureSet, v: int, first: dict[int, int]) -> dict[str, Any]:
    item = _caption_item(fs, first[v]) if v in first else {"label": f"group {v}", "video_id": None}
    return {**item, "id": f"group:{v}"}


def _v2t_matrix(res: EvalResult, variant: str, fs: FeatureSet, grouping: Grouping) -> np.ndarray:
    sim_VT = res.sims[variant][1]
    if fs.single_caption:
        return sim_VT.double().numpy()
    return v2t_multi_sim(sim_VT.T.double().numpy(), fs.text_to_video_T.numpy(), grouping=grouping)


def outcome_samples(
    fs: FeatureSet, res: EvalResult, layout: dict[str, dict[str, Any]], per_outcome: int, grouping: Grouping
) -> list[dict[str, Any]]:
    """Samples of both directions: {"direction", "outcome", "query", "gt", "before", "after", "rank_before",
    "rank_after"}; ``query`` and each result are items {"id", "label", "video_id"} (video_id: has a
    thumbnail). Without a re-ranked variant only ``both fail`` samples (stage 1 on both sides) are chosen."""
    after_v = "rerank" if "rerank" in res.ranks else "stage1"
    first = _first_caption_of(fs)
    samples: list[dict[str, Any]] = []
    for d in ("t2v", "v2t"):
        before, after = res.ranks["stage1"][d], res.ranks[after_v][d]
        rows = np.asarray(layout[d]["rows"])
        chosen = _chosen(np.asarray(before), np.asarray(after), per_outcome)
        if not chosen:
            continue
        qrows = rows[[i for _, i in chosen]]
        item: Callable[[int], dict[str, Any]]  # a result column -> its item
        if d == "t2v":
            tops = {v: top_k(res.sims[v][0][torch_rows(qrows)], TOP) for v in ("stage1", after_v)}
            gt = [_video_item(fs, int(fs.text_to_video_T[q])) for q in qrows]
            item = lambda j: _video_item(fs, j)  # noqa: E731
            query = [_caption_item(fs, int(q)) for q in qrows]
        else:
            tops = {}
            for v in ("stage1", after_v):
                mat = _v2t_matrix(res, v, fs, grouping)[qrows]
                tops[v] = np.argsort(-mat, axis=1, kind="stable")[:, :TOP]
            query = [_video_item(fs, int(q)) for q in qrows]
            if fs.single_caption:
                gt = [_caption_item(fs, int(q)) for q in qrows]
                item = lambda j: _caption_item(fs, j)  # noqa: E731
            else:
                gt = [_group_item(fs, int(q), first) for q in qrows]
                item = lambda j: _group_item(fs, j, first)  # noqa: E731
        for n, (outcome, i) in enumerate(chosen):
            samples.append(
                {
                    "direction": d,
                    "outcome": outcome,
                    "query": query[n],
                    "gt": gt[n],
                    "before": [item(int(j)) for j in tops["stage1"][n]],
                    "after": [item(int(j)) for j in tops[after_v][n]],
                    "rank_before": int(before[i]) + 1,
                    "rank_after": int(after[i]) + 1,
                }
            )
    return samples


def torch_rows(rows: np.ndarray) -> Any:
    """Index for a torch tensor from numpy rows."""
    import torch

    return torch.from_numpy(np.asarray(rows, dtype=np.int64))


def thumbnail_ids(samples: list[dict[str, Any]]) -> list[str]:
    """Video ids whose thumbnails the samples show (sorted, unique)."""
    ids = set()
    for s in samples:
        for it in (s["query"], s["gt"], *s["before"], *s["after"]):
            if it.get("video_id"):
                ids.add(it["video_id"])
    return sorted(ids)
