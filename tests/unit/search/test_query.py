"""The query path on a small index built in-process (no Ray): prefilter + exact WTI agrees with exhaustive
WTI when the prefilter keeps everything, answers are deterministic, re-ranking changes only fused scores."""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pytest
import torch

from vidret.config import Config, dump_yaml, load_config, replace
from vidret.search import build, layout
from vidret.search.query import QueryError, SearchEngine
from vidret.storage import Storage

N_VIDEOS = 30


def _cfg(*overrides: str) -> Config:
    return load_config(
        None,
        [
            "data.size=32",
            "data.max_frames=4",
            "data.max_words=16",
            "model.preset=debug",
            "model.temporal_layers=1",
            "diffusion.steps=10",
            "diffusion.t2v_k=4",
            "search.prefilter_m=8",
            *overrides,
        ],
    )


def _export(cfg: Config, uri: str, stage: str, seed: int = 0) -> None:
    from vidret.model.build import encoder_key
    from vidret.model.checkpoint import save_state
    from vidret.model.retrieval import RetrievalModel

    torch.manual_seed(seed)
    state = RetrievalModel.build(cfg.model, cfg.diffusion).state_dict()
    payload = {"selected": state, "key": encoder_key(state), "stage": stage, "step": 0, "best": {}}
    save_state(uri, payload, Storage())


def _build_index(cfg: Config, ckpt: str, out: str) -> None:
    """What `vidret index` writes, without Ray: two parts and a flat ANN."""
    from vidret.search.model_io import checkpoint_identity, load_model

    storage, rng = Storage(), np.random.default_rng(0)
    model = load_model(cfg, ckpt, storage).model
    videos = [{"video_id": f"vid{i:02d}", "video_uri": f"/lib/vid{i:02d}.mp4"} for i in range(N_VIDEOS)]
    frames = rng.integers(0, 255, size=(N_VIDEOS, 4, 32, 32, 3), dtype=np.uint8)
    mask = np.ones((N_VIDEOS, 4), np.int64)
    mask[::3, 3] = 0  # some videos have a padded frame
    buffer = build.PartBuffer(videos)
    cols = build.index_columns(
        model, {"video": frames, "video_mask": mask, "video_index": np.arange(N_VIDEOS)}, 48
    )
    buffer.add(cols)
    state = build.new_state(build.encoder_spec(cfg, checkpoint_identity(ckpt, storage)), cfg)
    state.update(checkpoint=ckpt, dim=int(cols["pooled"].shape[1]))
    for n in (18, 12):
        state["parts"].append(layout.write_part(storage, out, len(state["parts"]), buffer.take(n)))
    state["ann"] = build.build_ann_entry(storage, out, state, cfg)
    storage.write_text(f"{out}/config.yaml", dump_yaml(cfg))
    layout.write_index(storage, out, state)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("search-index")
    cfg = _cfg()
    _export(cfg, str(root / "gen"), "generation")
    _export(cfg, str(root / "s1"), "discrimination")
    _export(cfg, str(root / "other"), "generation", seed=1)
    _build_index(cfg, str(root / "gen"), str(root / "index"))
    return {"root": root, "cfg": cfg, "engine": SearchEngine.open(str(root / "index"), cfg)}


def _ranked(res: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    return [(r["video_id"], r["stage1_score"], r["fused_score"]) for r in res["results"]]


def test_prefilter_keeping_everything_matches_exhaustive_wti(index: dict[str, Any]) -> None:
    cfg = replace(index["cfg"], search=replace(index["cfg"].search, prefilter_m=N_VIDEOS))
    engine = SearchEngine.open(str(index["root"] / "index"), cfg)
    res = engine.search("a red square moves left", k=10, rerank=False)
    exhaustive = engine.exhaustive_wti("a red square moves left")
    want = np.lexsort((np.arange(N_VIDEOS), -exhaustive.astype(np.float64)))[:10]
    assert [r["row"] for r in res["results"]] == want.tolist()
    np.testing.assert_allclose([r["stage1_score"] for r in res["results"]], exhaustive[want], atol=1e-5)
    assert res["prefilter_m"] == N_VIDEOS and res["rerank"] is False
    assert all(r["fused_score"] is None for r in res["results"])


def test_search_is_deterministic_and_reports_every_stage(index: dict[str, Any]) -> None:
    engine: SearchEngine = index["engine"]
    a = engine.search("  a blue circle  ", k=5, rerank=True)
    b = engine.search("a blue circle", k=5, rerank=True)
    assert _ranked(a) == _ranked(b)
    assert a["query"] == "a blue circle" and a["rerank"] is True and a["prefilter_m"] == 8
    assert set(a["timings"]) == {"encode_ms", "prefilter_ms", "wti_ms", "rerank_ms", "total_ms"}
    assert [r["rank"] for r in a["results"]] == [1, 2, 3, 4, 5]
    fused = [r["fused_score"] for r in a["results"]]
    assert fused == sorted(fused, reverse=True)
    plain = engine.search("a blue circle", k=5, rerank=False)
    by_id = {r["video_id"]: r["stage1_score"] for r in plain["results"]}
    assert all(by_id.get(v, s) == s for v, s, _ in _ranked(a))  # re-ranking leaves stage-1 scores alone
    first = a["results"][0]
    assert first["thumbnail_url"] == f"/thumb/{first['row']}"
    assert engine.thumbnail(first["row"])[:2] == b"\xff\xd8"  # a JPEG


def test_refusals(index: dict[str, Any]) -> None:
    engine: SearchEngine = index["engine"]
    for k in (0, -1, 101, 10**6):
        with pytest.raises(QueryError, match=r"k: expected an integer in \[1, 100\]"):
            engine.search("dog", k=k)
    with pytest.raises(QueryError, match=r"non-empty"):
        engine.search("   ")
    with pytest.raises(QueryError, match=r"no video at row 30"):
        engine.thumbnail(N_VIDEOS)
    assert len(engine.search("🐶" * 200, k=3)["results"]) == 3  # long emoji query: truncated tokens, fine


def test_stage1_weights_skip_reranking_with_a_warning(index: dict[str, Any]) -> None:
    root = index["root"]
    engine = SearchEngine.open(str(root / "index"), index["cfg"], checkpoint=str(root / "s1"))
    res = engine.search("a dog", k=3, rerank=True)
    assert res["rerank"] is False and "stage 1" in res["warnings"][0]


def test_other_weights_and_broken_indexes_are_refused_naming_the_uri(index: dict[str, Any]) -> None:
    root, cfg = index["root"], index["cfg"]
    uri = str(root / "index")
    with pytest.raises(layout.SearchIndexError, match=rf"{uri}: built with encoder key"):
        SearchEngine.preflight(uri, cfg, checkpoint=str(root / "other"))
    with pytest.raises(layout.SearchIndexError, match=rf"{root}/missing/index.json: no search index here"):
        SearchEngine.preflight(str(root / "missing"), cfg)
    assert len(SearchEngine.preflight(uri, cfg)["parts"]) == 2
    broken = root / "broken"
    shutil.copytree(root / "index", broken)
    ann_file = next(broken.glob("ann-*.faiss"))
    ann_file.write_bytes(ann_file.read_bytes()[:-7])
    with pytest.raises(layout.SearchIndexError, match=rf"{ann_file}: corrupt"):
        SearchEngine.preflight(str(broken), cfg)
