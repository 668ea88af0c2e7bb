"""Parameter groups, BertAdam vs hand computation, schedules (golden values), clamps, fp16_frozen and EMA."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from vidret.config import DiffusionConfig, ModelConfig, TrainConfig, replace
from vidret.train.ema import EMA, select_better
from vidret.train.optim import (
    BertAdam,
    build_optimizer,
    build_scheduler,
    clamp_logit_scale_,
    clip_gradients,
    freeze_fp16_clip,
    lr_multiplier,
    param_groups,
    total_training_steps,
)

torch.set_num_threads(1)


class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(3)
        self.fc = nn.Linear(3, 3)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _Backbone()
        self.temporal = nn.Linear(3, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.register_buffer("running", torch.zeros(2))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))


@pytest.fixture(scope="module")
def debug_model() -> nn.Module:
    from vidret.model.retrieval import RetrievalModel

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return RetrievalModel.build(ModelConfig(preset="debug", temporal_layers=2), DiffusionConfig())


def _groups_by_name(groups: list[dict]) -> dict[str, dict]:
    return {g["name"]: g for g in groups}


def test_param_groups_names_lrs_and_decay() -> None:
    cfg = TrainConfig(lr=1e-4, coef_lr=1e-3, weight_decay=0.2)
    groups = _groups_by_name(param_groups(_Toy(), cfg))
    assert set(groups) == {"clip_decay", "clip_no_decay", "other_decay", "other_no_decay"}
    # LayerNorm weights named ln_* ARE decayed (upstream's no_decay list only knows "LayerNorm.")
    assert groups["clip_decay"]["param_names"] == [
        "backbone.logit_scale",
        "backbone.ln_1.weight",
        "backbone.fc.weight",
    ]
    assert groups["clip_no_decay"]["param_names"] == ["backbone.ln_1.bias", "backbone.fc.bias"]
    assert groups["other_decay"]["param_names"] == ["temporal.weight"]
    assert groups["other_no_decay"]["param_names"] == ["temporal.bias"]  # frozen.* excluded
    assert groups["clip_decay"]["lr"] == pytest.approx(1e-7)
    assert groups["clip_no_decay"]["lr"] == pytest.approx(1e-7)
    assert groups["other_decay"]["lr"] == groups["other_no_decay"]["lr"] == 1e-4
    assert groups["clip_decay"]["weight_decay"] == groups["other_decay"]["weight_decay"] == 0.2
    assert groups["clip_no_decay"]["weight_decay"] == groups["other_no_decay"]["weight_decay"] == 0.0


def test_param_groups_on_the_retrieval_model(debug_model: nn.Module) -> None:
    groups = _groups_by_name(param_groups(debug_model, TrainConfig()))
    clip = groups["clip_decay"]["param_names"] + groups["clip_no_decay"]["param_names"]
    other = groups["other_decay"]["param_names"] + groups["other_no_decay"]["param_names"]
    assert all(n.startswith("backbone.clip.") for n in clip)
    assert "backbone.clip.logit_scale" in clip
    assert "backbone.clip.visual.transformer.resblocks.0.ln_1.weight" in groups["clip_decay"]["param_names"]
    assert "backbone.clip.visual.conv1.weight" not in clip  # frozen in the method
    assert any(n.startswith("temporal.") for n in other)
    assert any(n.startswith("wti.") for n in other)
    assert not any("denoiser" in n for n in other)  # stage 1: denoisers frozen
    n_trainable = sum(1 for p in debug_model.parameters() if p.requires_grad)
    assert len(clip) + len(other) == n_trainable


def test_param_groups_strip_ddp_prefix() -> None:
    wrapper = nn.Module()
    wrapper.module = _Toy()
    groups = _groups_by_name(param_groups(wrapper, TrainConfig()))
    assert "module.backbone.fc.weight" in groups["clip_decay"]["param_names"]


def _one_param(values: list[float]) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=torch.float64))


def test_bertadam_one_step_by_hand() -> None:
    p = _one_param([1.0, -2.0])
    opt = BertAdam([p], lr=0.1, weight_decay=0.2)
    p.grad = torch.tensor([0.5, 0.1], dtype=torch.float64)  # norm 0.51 < 1: not clipped
    opt.step()
    # m = 0.1 g, v = 0.02 g^2, u = m / (sqrt(v) + 1e-6) + 0.2 p, p -= 0.1 u  (no bias correction)
    torch.testing.assert_close(
        p.detach(),
        torch.tensor([0.9092903218672033, -2.030705678472183], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )
    assert torch.equal(p.grad, torch.tensor([0.5, 0.1], dtype=torch.float64))  # grad untouched


def test_bertadam_has_no_bias_correction_unlike_adamw() -> None:
    grads = [0.3, -0.7]
    p_bert, p_adamw = _one_param([0.0, 0.0]), _one_param([0.0, 0.0])
    bert = BertAdam([p_bert], lr=0.01, weight_decay=0.0)
    adamw = torch.optim.AdamW([p_adamw], lr=0.01, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    for p, opt in ((p_bert, bert), (p_adamw, adamw)):
        p.grad = torch.tensor(grads, dtype=torch.float64)
        opt.step()
    # first step: AdamW moves lr*sign(g); BertAdam moves lr * 0.1/sqrt(0.02) * sign(g) = 0.7071 lr
    torch.testing.assert_close(
        p_adamw.detach(), torch.tensor([-0.01, 0.01], dtype=torch.float64), atol=1e-7, rtol=0
    )
    ratio = p_bert.detach() / p_adamw.detach()
    torch.testing.assert_close(
        ratio, torch.full((2,), 0.1 / math.sqrt(0.02), dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_bertadam_clips_each_tensor() -> None:
    big, small = _one_param([0.0, 0.0]), _one_param([0.0])
    opt = BertAdam([big, small], lr=1.0, weight_decay=0.0, max_grad_norm=1.0)
    steps = [([3.0, 4.0], [0.5]), ([0.3, 0.4], [0.5])]
    m_b, v_b = [0.0, 0.0], [0.0, 0.0]
    expected = [0.0, 0.0]
    for g_big, g_small in steps:
        big.grad = torch.tensor(g_big, dtype=torch.float64)
        small.grad = torch.tensor(g_small, dtype=torch.float64)
        opt.step()
        norm = math.hypot(*g_big)
        coef = min(1.0, 1.0 / (norm + 1e-6))
        for i in range(2):
            g = g_big[i] * coef
            m_b[i] = 0.9 * m_b[i] + 0.1 * g
            v_b[i] = 0.98 * v_b[i] + 0.02 * g * g
            expected[i] -= m_b[i] / (math.sqrt(v_b[i]) + 1e-6)
    torch.testing.assert_close(big.detach(), torch.tensor(expected, dtype=torch.float64), atol=1e-10, rtol=0)
    # without per-tensor clipping the second step would differ (v would hold 3^2, 4^2)
    unclipped = _one_param([0.0, 0.0])
    opt2 = BertAdam([unclipped], lr=1.0, weight_decay=0.0, max_grad_norm=0.0)
    for g_big, _ in steps:
        unclipped.grad = torch.tensor(g_big, dtype=torch.float64)
        opt2.step()
    assert not torch.allclose(unclipped.detach(), big.detach(), atol=1e-3)


def test_build_optimizer_kinds() -> None:
    bert = build_optimizer(_Toy(), TrainConfig(optimizer="bertadam"))
    adamw = build_optimizer(_Toy(), TrainConfig(optimizer="adamw"))
    assert isinstance(bert, BertAdam)
    assert type(adamw) is torch.optim.AdamW
    for opt in (bert, adamw):
        assert all(g["betas"] == (0.9, 0.98) and g["eps"] == 1e-6 for g in opt.param_groups)
        assert {g["name"] for g in opt.param_groups} == {
            "clip_decay",
            "clip_no_decay",
            "other_decay",
            "other_no_decay",
        }


@pytest.mark.parametrize(
    ("x", "unscaled", "clean"),
    [
        (0.0, 0.0, 0.0),
        (0.05, 0.5, 0.5),
        (0.1, 0.9755282581475768, 1.0),
        (0.5, 0.5, 0.5868240888334653),
        (1.0, 0.0, 0.0),
    ],
)
def test_schedule_golden_values(x: float, unscaled: float, clean: float) -> None:
    total = 1000
    step = round(x * total)
    assert lr_multiplier(step, total, 0.1, "warmup_cosine_unscaled") == pytest.approx(unscaled, abs=1e-12)
    assert lr_multiplier(step, total, 0.1, "warmup_cosine") == pytest.approx(clean, abs=1e-12)


def test_schedule_jump_and_validation() -> None:
    # faithful: 0.999 just before the boundary, 0.976 right after; clean: continuous
    before = lr_multiplier(99, 1000, 0.1, "warmup_cosine_unscaled")
    after = lr_multiplier(100, 1000, 0.1, "warmup_cosine_unscaled")
    assert before == pytest.approx(0.99)
    assert after == pytest.approx(0.97553, abs=1e-5)
    assert lr_multiplier(101, 1000, 0.1, "warmup_cosine") == pytest.approx(1.0, abs=1e-4)
    assert lr_multiplier(5, 10, 0.0, "warmup_cosine") == pytest.approx(0.5)  # no warmup
    with pytest.raises(ValueError, match="schedule"):
        lr_multiplier(5, 10, 0.1, "linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="total_steps"):
        lr_multiplier(0, 0, 0.1, "warmup_cosine")


def test_total_steps_follow_epochs() -> None:
    assert total_training_steps(TrainConfig(epochs=3), 100) == 300
    assert total_training_steps(TrainConfig(epochs=7), 100) == 700
    assert total_training_steps(TrainConfig(epochs=7, max_steps=50), 100) == 50


def test_scheduler_drives_group_lrs() -> None:
    cfg = TrainConfig(lr=1e-3, coef_lr=0.1, warmup_proportion=0.25, schedule="warmup_cosine")
    opt = build_optimizer(_Toy(), cfg)
    sched = build_scheduler(opt, cfg, total_steps=8)
    seen = []
    for _ in range(8):
        seen.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    assert seen[0]["other_decay"] == 0.0  # upstream's first update has lr 0
    assert seen[1]["other_decay"] == pytest.approx(1e-3 * 0.5)
    assert seen[2]["other_decay"] == pytest.approx(1e-3)
    assert seen[5]["clip_decay"] == pytest.approx(1e-4 * lr_multiplier(5, 8, 0.25, "warmup_cosine"))


def test_clip_gradients_and_logit_scale_clamp() -> None:
    model = _Toy()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 10.0)
    norm = clip_gradients(model, 1.0)
    total = math.sqrt(sum(p.grad.pow(2).sum().item() for p in model.parameters() if p.grad is not None))
    assert norm.item() > 10
    assert total == pytest.approx(1.0, rel=1e-5)
    assert clip_gradients(model, 0.0).item() == pytest.approx(1.0, rel=1e-5)  # disabled: unchanged
    with torch.no_grad():
        model.backbone.logit_scale.fill_(6.0)
    assert clamp_logit_scale_(model, 100.0) == 1
    assert model.backbone.logit_scale.item() == pytest.approx(math.log(100.0))
    with torch.no_grad():
        model.backbone.logit_scale.fill_(2.0)
    clamp_logit_scale_(model, 100.0)
    assert model.backbone.logit_scale.item() == 2.0


def test_fp16_frozen_keeps_only_what_upstream_moved(debug_model: nn.Module) -> None:
    import copy

    model = copy.deepcopy(debug_model)
    frozen = freeze_fp16_clip(model)
    assert "backbone.clip.visual.transformer.resblocks.0.attn.in_proj_weight" in frozen
    assert "backbone.clip.transformer.resblocks.0.mlp.c_fc.bias" in frozen
    assert "backbone.clip.transformer.resblocks.0.attn.out_proj.weight" in frozen
    assert {"backbone.clip.visual.proj", "backbone.clip.text_projection"} <= set(frozen)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    assert trainable == {
        n
        for n, _ in model.named_parameters()
        if n.startswith("backbone.") and (".ln_" in n or "embedding" in n or n.endswith("logit_scale"))
    }
    assert "backbone.clip.token_embedding.weight" in trainable
    # the temporal module and WTI (fp32 upstream) are untouched
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(("temporal.", "wti.")))
    clip_lr = {g["name"]: g for g in param_groups(model, replace(TrainConfig(), coef_lr=1e-3))}
    assert set(clip_lr["clip_decay"]["param_names"] + clip_lr["clip_no_decay"]["param_names"]) == trainable


def test_ema_update_math_and_swap() -> None:
    torch.manual_seed(0)
    model = _Toy()
    ema = EMA(model, decay=0.9)
    assert "running" in ema.shadow
    assert "count" not in ema.shadow
    start = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        model.temporal.weight.add_(1.0)
        model.running.fill_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["temporal.weight"], start["temporal.weight"] + 0.1)
    torch.testing.assert_close(ema.shadow["running"], torch.full((2,), 0.2))
    torch.testing.assert_close(ema.shadow["frozen.weight"], start["frozen.weight"])  # constant stays constant
    ema.update(model)  # 0.9 * 0.2 + 0.1 * 2 = 0.38
    torch.testing.assert_close(ema.shadow["running"], torch.full((2,), 0.38))
    live = model.temporal.weight.detach().clone()
    with ema.swap(model):
        torch.testing.assert_close(model.temporal.weight.detach(), ema.shadow["temporal.weight"])
    torch.testing.assert_close(model.temporal.weight.detach(), live)
    with pytest.raises(RuntimeError, match="boom"), ema.swap(model):
        raise RuntimeError("boom")
    torch.testing.assert_close(model.temporal.weight.detach(), live)  # restored on error too


def test_ema_state_dict_round_trip_and_errors() -> None:
    model = _Toy()
    ema = EMA(model, 0.99)
    with torch.no_grad():
        model.temporal.bias.fill_(3.0)
    ema.update(model)
    other = EMA(_Toy(), 0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.99
    torch.testing.assert_close(other.shadow["temporal.bias"], ema.shadow["temporal.bias"])
    target = _Toy()
    other.copy_to(target)
    torch.testing.assert_close(target.temporal.bias.detach(), ema.shadow["temporal.bias"])
    with pytest.raises(ValueError, match="missing"):
        EMA(nn.Linear(2, 2), 0.9).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(model, 1.0)


def test_select_better() -> None:
    assert select_better(40.0, 41.0) == "ema"
    assert select_better(41.0, 40.0) == "model"
    assert select_better(40.0, 40.0) == "model"
    assert select_better(float("nan"), 1.0) == "ema"
    assert select_better(1.0, float("nan")) == "model"
