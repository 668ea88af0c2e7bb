"""``vidret compare`` on real runs: two evaluations of the same corpus (different fusion weights) compared
with paired intervals, the config diff and the HTML page; a run whose test split holds other queries is
refused with an error naming the split and the first differing query (a corpus generated with another
seed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from train_helpers import make_corpus

from vidret import cli
from vidret.config import Config, load_config
from vidret.storage import Storage

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def _config(out: Path, manifest: Path, *overrides: str) -> Config:
    return load_config(
        None,
        [
            f"run.out={out}",
            f"data.manifest={manifest}",
            "data.size=32", "data.max_frames=4", "data.framerate=4.0", "data.max_words=16",
            "data.decoder=pyav", "data.extra_eval_splits=[]",
            "model.preset=debug", "model.temporal_layers=1",
            "diffusion.steps=10", "diffusion.t2v_k=4", "diffusion.v2t_k=4",
            "eval.splits=[test]", "eval.batch_size=16", "eval.report=false",
            *overrides,
        ],
    )  # fmt: skip


def _evaluate(cfg: Config, weights: Path) -> dict[str, Any]:
    from vidret.eval.job import run_evaluation
    from vidret.model.build import build_model, encoder_key
    from vidret.model.checkpoint import save_state

    if not weights.exists():  # one set of random debug weights shared by every run
        torch.manual_seed(0)
        torch.set_num_threads(1)
        state = build_model(cfg, Storage(), None).state_dict()
        best = {"score": 0.0, "step": 0, "source": "model"}
        save_state(str(weights), {"selected": state, "key": encoder_key(state), "stage": "generation",
                                  "step": 0, "best": best}, Storage())  # fmt: skip
    return run_evaluation(cfg, str(weights))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    corpus = make_corpus(root, videos=40)
    other = make_corpus(root / "other", videos=40, seed=1).manifest  # another seed: other test queries
    weights = root / "weights"
    out = {}
    for name, manifest, extra in (
        ("a", corpus.manifest, ["diffusion.t2v_alpha=1.0"]),
        ("b", corpus.manifest, ["diffusion.t2v_alpha=0.25", "diffusion.v2t_temp=10.0"]),
        ("c", other, []),
    ):
        if name == "b":  # the same weights and corpus as "a": its feature cache, not another encoder pass
            shutil.copytree(root / "a" / "features", root / "b" / "features")
        _evaluate(_config(root / name, manifest, *extra), weights)
        out[name] = root / name
    out["root"] = root
    return out


def test_two_runs_side_by_side_with_paired_intervals_and_config_diff(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    html_out = runs["root"] / "cmp"
    code = cli.main(["compare", str(runs["a"]), str(runs["b"]), "--out", str(html_out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "[A] re-ranked" in printed
    assert "[B] re-ranked" in printed
    assert "±" in printed
    assert "test t2v R@1" in printed
    summary = json.loads((html_out / "compare.json").read_text())
    key = f"{runs['b']} - {runs['a']}"
    paired = summary["paired"]["test"][key]
    for d in ("t2v", "v2t"):
        assert paired[d]["R1"]["lo"] <= paired[d]["R1"]["diff"] <= paired[d]["R1"]["hi"]
        assert 0 < paired[d]["R1"]["p"] <= 1
    diff = summary["config_diff"]
    assert diff["diffusion.t2v_alpha"] == [1.0, 0.25]
    assert diff["diffusion.v2t_temp"] == [1.0, 10.0]
    assert "diffusion.steps" not in diff  # only the keys that differ
    page = (html_out / "compare.html").read_text()
    assert 'id="split-test"' in page
    assert 'id="paired-test"' in page
    assert "diffusion.t2v_alpha" in page
    # a run compared with itself: zero difference, p = 1
    same = cli.main(["compare", str(runs["a"]), str(runs["a"]), "--out", str(html_out / "same")])
    assert same == 0
    capsys.readouterr()
    s = json.loads((html_out / "same" / "compare.json").read_text())
    r1 = s["paired"]["test"][f"{runs['a']} - {runs['a']}"]["t2v"]["R1"]
    assert r1 == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p": 1.0}


def test_mismatched_query_sets_are_refused(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["compare", str(runs["a"]), str(runs["c"]), "--out", str(runs["root"] / "cmp-bad")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR
    assert "split 'test' (t2v) has different query sets" in err
    assert "first difference at query" in err
    assert not (runs["root"] / "cmp-bad" / "compare.html").exists()


def test_a_folder_without_an_evaluation_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["compare", str(tmp_path / "x"), str(tmp_path / "y"), "--out", str(tmp_path / "o")])
    assert code == cli.EXIT_ERROR
    assert "no evaluation found" in capsys.readouterr().err
