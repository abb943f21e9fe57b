"""Schedules, EMA, width scaling and the KD-method registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from recokd.kd.ema import StudentEMA, unwrap
from recokd.kd.reco import ReCoKD
from recokd.kd.registry import CombinedKD, available_methods, build_kd_method, parse_method_spec
from recokd.kd.schedules import build_schedule
from recokd.kd.widths import scale_width, scale_widths


def test_linear_schedule_ramps_over_warmup_then_holds():
    s = build_schedule("linear", lambda_max=0.01, warmup_fraction=0.6, total_epochs=1000)
    assert s(0) == 0.0
    assert s(300) == pytest.approx(0.005)
    assert s(600) == pytest.approx(0.01) and s(999) == pytest.approx(0.01)


def test_cosine_and_constant_schedules():
    c = build_schedule("cosine", lambda_max=2.0, warmup_fraction=0.5, total_epochs=100)
    assert c(0) == 0.0 and c(25) == pytest.approx(1.0) and c(50) == pytest.approx(2.0) and c(80) == 2.0
    values = [c(e) for e in range(51)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))  # monotone ramp
    assert build_schedule("constant", lambda_max=0.3)(0) == 0.3
    assert build_schedule("linear", warmup_fraction=0.0)(0) == 0.01  # no warm-up: full weight


@pytest.mark.parametrize(
    "kwargs", [{"name": "step"}, {"lambda_max": -1}, {"warmup_fraction": 1.5}, {"total_epochs": 0}]
)
def test_schedule_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        build_schedule(**kwargs)


def test_ema_follows_the_formula_and_round_trips():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = StudentEMA(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 3))  # updates running stats and num_batches_tracked
    ema.update(model)
    cur = model.state_dict()
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * cur[k])
        else:
            assert torch.equal(v, cur[k])
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    other = StudentEMA(model, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and other.num_updates == 1
    for k, v in other.module.state_dict().items():
        assert torch.equal(v, ema.module.state_dict()[k])
    with pytest.raises(ValueError):
        StudentEMA(model, decay=1.0)


def test_unwrap_sees_through_dataparallel():
    inner = nn.Linear(2, 2)
    assert unwrap(nn.DataParallel(inner)) is inner
    assert unwrap(inner) is inner


def test_scale_widths_follows_spec():
    assert scale_widths([32, 64, 128, 256, 320, 320], 2) == [8, 16, 32, 64, 80, 80]
    assert scale_widths([32, 64, 128, 256, 320], 3) == [4, 8, 16, 32, 40]
    assert scale_widths([32, 64], 3, c_min=8) == [8, 8]
    assert scale_widths([32, 64], 0) == [32, 64]
    assert scale_width(3, 2, c_min=4) == 3  # never wider than the teacher
    with pytest.raises(ValueError):
        scale_widths([32], -1)
    with pytest.raises(ValueError):
        scale_widths([32], 1, c_min=0)


def test_registry_builds_reco_and_ablations():
    names = set(available_methods())
    assert {"reco", "reco-sard", "reco-ca", "reco-affinity"} <= names
    m = build_kd_method("reco", [4, 8], [8, 16], 3, temperature=1.0)
    assert isinstance(m, ReCoKD) and m.temperature == 1.0
    assert build_kd_method("reco-sard", [4], [8], 3).coef["ctx"] == 0.0
    assert build_kd_method("reco-ca", [4], [8], 3).coef["fg"] == 0.0
    assert build_kd_method("reco-affinity", [4], [8], 3).context == "affinity"
    assert available_methods()["reco"].options()["alpha"] == 0.4


def test_registry_combines_methods_with_weights():
    assert parse_method_spec("reco+reco-ca:0.5") == [("reco", 1.0), ("reco-ca", 0.5)]
    combo = build_kd_method("reco+reco-ca:0.5", [4], [8], 2, **{"reco-ca.temperature": 2.0})
    assert isinstance(combo, CombinedKD)
    assert combo.methods["reco-ca"].temperature == 2.0 and combo.methods["reco"].temperature == 0.5
    s, t = [torch.randn(1, 4, 4, 4, 4)], [torch.randn(1, 8, 4, 4, 4)]
    y = torch.randint(0, 2, (1, 1, 4, 4, 4))
    with torch.no_grad():
        out = combo(s, t, y)
        a = combo.methods["reco"](s, t, y)["loss"]
        b = combo.methods["reco-ca"](s, t, y)["loss"]
    assert float(out["loss"]) == pytest.approx(float(a + 0.5 * b), rel=1e-6)
    assert math.isfinite(out["reco:fg"]) and "reco-ca:ctx" in out


@pytest.mark.parametrize(
    "spec, options, match",
    [
        ("nope", {}, "unknown KD method"),
        ("reco:x", {}, "bad weight"),
        ("reco+reco", {}, "twice"),
        ("reco", {"temprature": 1.0}, "no option 'temprature'"),
        ("reco", {"logits.temperature": 1.0}, "not in"),
    ],
)
def test_registry_errors_are_clear(spec, options, match):
    with pytest.raises(ValueError, match=match):
        build_kd_method(spec, [4], [8], 2, **options)
