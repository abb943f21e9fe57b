"""ReCo-KD losses against the straightforward reference of the spec (float64), and their properties."""

from __future__ import annotations

import math

import pytest
import torch

from recokd.kd.context import affinity_loss
from recokd.kd.levels import default_level_weights
from recokd.kd.masks import region_weights
from recokd.kd.reco import ReCoKD
from tests.kd.reference import ref_affinity, ref_reco, ref_weights

CASES = [
    # (batch, student channels, teacher channels, level sizes)
    (2, [4, 8], [8, 16], [(8, 8, 8), (4, 4, 4)]),
    (3, [2, 4, 8], [8, 16, 16], [(4, 12, 10), (2, 6, 5), (1, 3, 3)]),  # anisotropic, odd sizes
    (1, [6], [6], [(5, 7, 3)]),  # equal channels: identity adapter
]


def _feats(batch, channels, sizes, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for c, size in zip(channels, sizes, strict=True):
        f = torch.randn(batch, c, *size, generator=g, dtype=torch.float64)
        out.append(f.requires_grad_(requires_grad))
    return out


def _randomise_context(model: ReCoKD, seed: int = 0) -> None:
    """W2 starts at zero (R = identity); give it values so the reference checks the whole block."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blocks in (model.context_student, model.context_teacher):
            for block in blocks:
                block.w2.weight.copy_(torch.randn(block.w2.weight.shape, generator=g) * 0.5)
                block.w2.bias.copy_(torch.randn(block.w2.bias.shape, generator=g) * 0.5)


def _labels(batch, size, num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, (batch, 1, *size), generator=g)


@pytest.mark.parametrize("context", ["gc", "affinity"])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, context):
    batch, cs, ct, sizes = case
    num_classes = 4
    model = ReCoKD(cs, ct, num_classes, context=context).double()
    if context == "gc":
        _randomise_context(model)
    s = _feats(batch, cs, sizes, 1)
    t = _feats(batch, ct, sizes, 2)
    # full-resolution target twice the size of level 0
    full = tuple(2 * x for x in sizes[0])
    y = _labels(batch, full, num_classes, 3)
    out = model(s, t, y)
    ref_total, ref_parts = ref_reco(model, s, t, y, num_classes=num_classes)
    assert out["loss"].dtype == torch.float64
    torch.testing.assert_close(out["loss"], ref_total, rtol=1e-10, atol=1e-12)
    for key, value in ref_parts.items():
        assert out[key] == pytest.approx(float(value.detach()), rel=1e-9, abs=1e-12), key


def test_options_match_reference_tau_temperature_ignore():
    model = ReCoKD([3, 5], [6, 10], 3, temperature=1.7, tau=0.5, ignore_label=3).double()
    _randomise_context(model, 4)
    sizes = [(6, 6, 4), (3, 3, 2)]
    s, t = _feats(2, [3, 5], sizes, 5), _feats(2, [6, 10], sizes, 6)
    y = _labels(2, sizes[0], 4, 7)  # values 0..3, 3 = ignore
    out = model(s, t, y)
    ref, _ = ref_reco(model, s, t, y, num_classes=3, temperature=1.7, tau=0.5, ignore_label=3)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-10, atol=1e-12)


def test_region_targets_match_reference():
    model = ReCoKD([4], [8], 2, regions=True).double()
    _randomise_context(model)
    sizes = [(6, 5, 4)]
    s, t = _feats(2, [4], sizes, 8), _feats(2, [8], sizes, 9)
    g = torch.Generator().manual_seed(10)
    y = (torch.rand(2, 2, *sizes[0], generator=g) > 0.6).double()  # two overlapping regions
    out = model(s, t, y)
    ref, _ = ref_reco(model, s, t, y, num_classes=2, regions=True)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-10, atol=1e-12)
    assert math.isfinite(out["fg/0"]) and out["fg/0"] > 0


def test_level_weights_formula():
    w = default_level_weights(4, alpha=0.4)
    r = 2 ** (-1.2)
    expected = [r**i / sum(r**j for j in range(4)) for i in range(4)]
    assert w == pytest.approx(expected)
    assert sum(w) == pytest.approx(1.0) and w[0] > w[1] > w[2] > w[3]
    assert default_level_weights(3, alpha=0.0) == pytest.approx([1 / 3] * 3)
    explicit = ReCoKD([2, 2], [4, 4], 2, level_weights=[0.2, 0.8])
    assert explicit.weights == [0.2, 0.8]


def test_each_present_class_weighs_one_whatever_its_size():
    y = torch.zeros(2, 1, 20, 20, 20, dtype=torch.long)
    y[0, 0, :15] = 1  # 6000 voxels
    y[0, 0, 18, 0:2, 0:3] = 2  # 6 voxels
    y[1, 0, 5:7, 5:7, 5:7] = 1  # 8 voxels; class 2 absent in sample 1
    w_fg, w_bg = region_weights(y, num_classes=4)
    flat = y.flatten(1)
    assert float(w_fg[0][flat[0] == 1].sum()) == pytest.approx(1.0)
    assert float(w_fg[0][flat[0] == 2].sum()) == pytest.approx(1.0)
    assert float(w_fg[1][flat[1] == 1].sum()) == pytest.approx(1.0)
    assert float(w_fg[1].sum()) == pytest.approx(1.0)  # absent classes 2, 3 contribute nothing
    assert float(w_bg[0].sum()) == pytest.approx(1.0) and float(w_bg[1].sum()) == pytest.approx(1.0)
    assert torch.all((w_fg > 0) != (w_bg > 0))  # every voxel is in exactly one mask
    # tau = 0: plain masks
    w0, b0 = region_weights(y, num_classes=4, tau=0.0)
    assert torch.equal(w0 > 0, flat > 0) and float(w0.max()) == 1.0 and float(b0.max()) == 1.0


def test_weights_agree_with_reference_per_sample():
    y = _labels(3, (5, 4, 6), 5, 11)
    w_fg, w_bg = region_weights(y, 5, tau=0.7, ignore_label=4, dtype=torch.float64)
    for b in range(3):
        rf, rb = ref_weights(y[b].flatten(1), 5, 0.7, 4)
        torch.testing.assert_close(w_fg[b], rf)
        torch.testing.assert_close(w_bg[b], rb)


@pytest.mark.parametrize(
    "make_target",
    [
        lambda: torch.zeros(2, 1, 8, 8, 8, dtype=torch.long),  # all background
        lambda: torch.ones(2, 1, 8, 8, 8, dtype=torch.long),  # no background at all
        lambda: torch.full((2, 1, 8, 8, 8), 3, dtype=torch.long),  # everything ignored
    ],
)
def test_degenerate_targets_give_finite_losses(make_target):
    model = ReCoKD([4, 4], [8, 8], 3, ignore_label=3)
    s = [torch.randn(2, 4, 8, 8, 8, requires_grad=True), torch.randn(2, 4, 4, 4, 4, requires_grad=True)]
    t = [torch.randn(2, 8, 8, 8, 8), torch.randn(2, 8, 4, 4, 4)]
    out = model(s, t, make_target())
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(x.grad).all() for x in s)


def test_gradients_reach_student_and_kd_params_never_teacher():
    model = ReCoKD([4, 8], [8, 16], 3)
    _randomise_context(model)  # else W1/key get exactly zero gradient at init (W2 = 0)
    sizes = [(8, 8, 8), (4, 4, 4)]
    s = [f.float().requires_grad_(True) for f in _feats(2, [4, 8], sizes, 1)]
    t = [f.float().requires_grad_(True) for f in _feats(2, [8, 16], sizes, 2)]  # must stay untouched
    y = _labels(2, sizes[0], 3, 3)
    model(s, t, y)["loss"].backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_w2_zero_init_makes_context_block_identity_but_trainable():
    model = ReCoKD([4], [8], 2)
    s = [torch.randn(1, 4, 4, 4, 4, requires_grad=True)]
    t = [torch.randn(1, 8, 4, 4, 4)]
    out = model(s, t, torch.zeros(1, 1, 4, 4, 4, dtype=torch.long))
    adapted = model.adapters[0](s[0].flatten(2))
    expected = ((adapted - t[0].flatten(2)) ** 2).mean()
    assert out["ctx/0"] == pytest.approx(float(expected.detach()), rel=1e-5)
    out["loss"].backward()
    assert model.context_student[0].w2.weight.grad.abs().sum() > 0


def test_frozen_adapter_ablation():
    model = ReCoKD([4], [8], 2, freeze_adapters=True)
    assert all(not p.requires_grad for p in model.adapters.parameters())
    assert any(p.requires_grad for p in model.parameters())  # context blocks still train


def test_component_switches_skip_work_and_keys():
    s = [torch.randn(1, 4, 4, 4, 4)]
    t = [torch.randn(1, 8, 4, 4, 4)]
    y = torch.randint(0, 2, (1, 1, 4, 4, 4))
    sard = ReCoKD([4], [8], 2, ctx=0.0)
    assert not hasattr(sard, "context_student")
    out = sard(s, t, y)
    assert "ctx" not in out and {"fg", "bg", "att"} <= set(out)
    ca = ReCoKD([4], [8], 2, fg=0, bg=0, att=0)
    out = ca(s, t, None)  # MS-CA alone needs no target
    assert set(k for k in out if "/" not in k) == {"loss", "ctx"}


def test_deep_supervision_target_list_equals_full_resolution_target():
    model = ReCoKD([4, 4], [8, 8], 3)
    s = [torch.randn(2, 4, 8, 8, 8), torch.randn(2, 4, 4, 4, 4)]
    t = [torch.randn(2, 8, 8, 8, 8), torch.randn(2, 8, 4, 4, 4)]
    y = torch.randint(0, 3, (2, 1, 16, 16, 16))
    ds = [torch.nn.functional.interpolate(y.float(), size=sz, mode="nearest") for sz in [(8,) * 3, (4,) * 3]]
    a = model(s, t, y)
    b = model(s, t, ds)  # float targets as nnU-Net's loader gives them
    torch.testing.assert_close(a["loss"], b["loss"])


def test_affinity_identity_equals_explicit_matrix():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 50, generator=g, dtype=torch.float64)
    t = torch.randn(2, 7, 50, generator=g, dtype=torch.float64)
    fast = affinity_loss(s, t)
    ref = (ref_affinity(s[0], t[0]) + ref_affinity(s[1], t[1])) / 2
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-14)
    assert float(affinity_loss(t, t)) == pytest.approx(0.0, abs=1e-12)


def test_autocast_runs_loss_in_float32():
    model = ReCoKD([4], [8], 2)
    s = [torch.randn(1, 4, 6, 6, 6).bfloat16().requires_grad_(True)]
    t = [torch.randn(1, 8, 6, 6, 6).bfloat16()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(s, t, torch.randint(0, 2, (1, 1, 6, 6, 6)))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert s[0].grad is not None


def test_bad_inputs_give_clear_errors():
    model = ReCoKD([4, 4], [8, 8], 3)
    s = [torch.randn(1, 4, 4, 4, 4)] * 2
    t = [torch.randn(1, 8, 4, 4, 4)] * 2
    with pytest.raises(ValueError, match="2 levels"):
        model(s[:1], t[:1], torch.zeros(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="label values"):
        model(s, t, torch.full((1, 1, 4, 4, 4), 5))
    with pytest.raises(ValueError, match="channels"):
        model([torch.randn(1, 5, 4, 4, 4)] * 2, t, torch.zeros(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="spatial"):
        model(s, [torch.randn(1, 8, 3, 4, 4)] * 2, torch.zeros(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="needs the ground-truth"):
        model(s, t, None)
    with pytest.raises(ValueError, match="context"):
        ReCoKD([4], [8], 2, context="nonlocal")


@pytest.mark.parametrize("chunk", [7, 100000])  # several chunks with a ragged tail, and one chunk
@pytest.mark.parametrize("equal_channels", [False, True])
def test_gradients_match_reference(chunk, equal_channels):
    cs, ct = ([6, 8], [6, 8]) if equal_channels else ([3, 5], [6, 8])
    model = ReCoKD(cs, ct, 3, chunk=chunk, ignore_label=3).double()
    _randomise_context(model, 12)
    sizes = [(4, 6, 5), (2, 3, 3)]
    s = _feats(2, cs, sizes, 13, requires_grad=True)
    t = _feats(2, ct, sizes, 14)
    y = _labels(2, sizes[0], 4, 15)
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(model(s, t, y)["loss"], s + params)
    ref_total, _ = ref_reco(model, s, t, y, num_classes=3, ignore_label=3)
    ref = torch.autograd.grad(ref_total, s + params)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)


def test_fused_statistics_pass_gradcheck():
    from recokd.kd.fused import sard_statistics

    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 11, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 5, 11, generator=g, dtype=torch.float64)
    a = torch.rand(2, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s, w, b: sard_statistics(s, w, b, t, a, chunk=4), (s, w, b))


@pytest.mark.slow  # torch.compile: about a minute per shape on a CPU
@pytest.mark.parametrize("equal_channels", [False, True])
def test_compiled_statistics_match_reference(equal_channels):
    """``compile=True`` (torch.compile-d kernels) gives the reference's loss and gradients."""
    cs, ct = ([6], [6]) if equal_channels else ([3], [6])
    model = ReCoKD(cs, ct, 3, compile=True).double()
    _randomise_context(model, 22)
    sizes = [(4, 6, 5)]
    s = _feats(2, cs, sizes, 23, requires_grad=True)
    t = _feats(2, ct, sizes, 24)
    y = _labels(2, sizes[0], 3, 25)
    params = [p for p in model.parameters() if p.requires_grad]
    total = model(s, t, y)["loss"]
    ours = torch.autograd.grad(total, s + params)
    ref_total, _ = ref_reco(model, s, t, y, num_classes=3)
    ref = torch.autograd.grad(ref_total, s + params)
    torch.testing.assert_close(total, ref_total, rtol=1e-8, atol=1e-11)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)
