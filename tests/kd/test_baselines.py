"""Baseline KD methods (spec section 7): agreement with the loop references (float64), zero loss
where student and teacher agree, gradient flow, degenerate inputs, registry and Distiller."""

from __future__ import annotations

import math

import pytest
import torch

from recokd.kd.baselines import (
    DISTKD,
    IFVD,
    AttentionTransfer,
    ChannelWiseDistillation,
    CrossImageRelationalKD,
    FitNet,
    LogitKD,
    RelationalKD,
    StructuredKD,
    pool_to_grid,
)
from recokd.kd.registry import CombinedKD, available_methods, build_kd_method
from tests.kd import baseline_reference as ref

FEATURE_METHODS = ["fitnet", "at", "cwd", "skd", "ifvd", "cirkd", "rkd"]
LOGIT_METHODS = ["logits", "dist"]  # read only the full-resolution logits
ALL_METHODS = [*LOGIT_METHODS, *FEATURE_METHODS]
SIZES = [(4, 5, 3), (2, 3, 2)]  # anisotropic, odd: adaptive pooling windows overlap
NUM_CLASSES = 3


def _feats(batch, channels, sizes, seed, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, c, *size, generator=g, dtype=dtype).requires_grad_(requires_grad)
        for c, size in zip(channels, sizes, strict=True)
    ]


def _labels(batch, size, seed, high=NUM_CLASSES):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (batch, 1, *size), generator=g)


def _build(name, cs, ct, **options):
    return build_kd_method(name, cs, ct, NUM_CLASSES, **options).double()


def _reference(name, model, s, t, y):
    """Level-weighted reference loss of ``model`` (its weights / adapters / options)."""
    total = 0.0
    for level, (sl, tl) in enumerate(zip(s, t, strict=True)):
        if name == "fitnet":
            value = ref.ref_fitnet(model.adapters[level], sl, tl)
        elif name == "at":
            value = ref.ref_at(sl, tl)
        elif name == "cwd":
            value = ref.ref_cwd(model.adapters[level], sl, tl, model.temperature)
        elif name == "skd":
            value = ref.ref_skd(sl, tl, model.grid, model.pool)
        elif name == "cirkd":
            value = ref.ref_cirkd(sl, tl, model.grid, model.pool, model.temperature)
        elif name == "rkd":
            value, _, _ = ref.ref_rkd(sl, tl, model.grid, model.pool, model.across_batch,
                                      model.coef["dist"], model.coef["angle"])
        elif name == "ifvd":
            value = ref.ref_ifvd(sl, tl, y, model.num_classes, model.ignore_label, model.regions)
        total = total + model.weights[level] * value
    return total


# options that make the small cases exercise more than the defaults
REF_OPTIONS = {
    "fitnet": {},
    "at": {},
    "cwd": {"temperature": 1.5},
    "skd": {"grid": 2},
    "cirkd": {"grid": 2, "temperature": 0.5},
    "rkd": {"grid": 2},
    "ifvd": {},
}


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_feature_methods_match_reference_loss_and_gradients(name):
    cs, ct = [3, 4], [5, 4]  # level 0 needs an adapter, level 1 does not
    model = _build(name, cs, ct, **REF_OPTIONS[name])
    s = _feats(2, cs, SIZES, 1, requires_grad=True)
    t = _feats(2, ct, SIZES, 2)
    y = _labels(2, tuple(2 * x for x in SIZES[0]), 3)  # full resolution: twice level 0
    out = model(s, t, y)
    expected = _reference(name, model, s, t, y)
    assert out["loss"].dtype == torch.float64
    torch.testing.assert_close(out["loss"], expected, rtol=1e-9, atol=1e-12)
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(out["loss"], s + params)
    theirs = torch.autograd.grad(expected, s + params)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    for level in range(2):
        assert any(key.endswith(f"/{level}") for key in out)


@pytest.mark.parametrize(
    "name, options",
    [
        ("skd", {"grid": 3, "pool": "avg"}),  # grid larger than a level's axis: never upsampled
        ("cirkd", {"grid": 1}),  # one cell per sample: only cross-sample similarities
        ("rkd", {"grid": 2, "across_batch": True, "pool": "max"}),
        ("rkd", {"grid": 1, "across_batch": True}),  # the paper's global-embedding RKD
        ("ifvd", {"alpha": 0.0}),
    ],
)
def test_option_variants_match_reference(name, options):
    cs, ct = [3, 2], [5, 6]
    model = _build(name, cs, ct, **options)
    s, t = _feats(3, cs, SIZES, 4), _feats(3, ct, SIZES, 5)
    y = _labels(3, SIZES[0], 6)
    expected = _reference(name, model, s, t, y)
    torch.testing.assert_close(model(s, t, y)["loss"], expected, rtol=1e-9, atol=1e-12)


def test_ifvd_ignore_label_and_regions_match_reference():
    cs, ct = [3, 2], [5, 6]
    s, t = _feats(2, cs, SIZES, 7), _feats(2, ct, SIZES, 8)
    model = _build("ifvd", cs, ct, ignore_label=NUM_CLASSES)
    y = _labels(2, SIZES[0], 9, high=NUM_CLASSES + 1)  # the last value is the ignore label
    expected = _reference("ifvd", model, s, t, y)
    torch.testing.assert_close(model(s, t, y)["loss"], expected, rtol=1e-9, atol=1e-12)
    g = torch.Generator().manual_seed(10)
    regions = (torch.rand(2, 3, *SIZES[0], generator=g) > 0.6).double()  # overlapping, last = ignore
    for ignore in (None, 1):
        model = _build("ifvd", cs, ct, regions=True, ignore_label=ignore)
        expected = _reference("ifvd", model, s, t, regions)
        torch.testing.assert_close(model(s, t, regions)["loss"], expected, rtol=1e-9, atol=1e-12)


def test_ifvd_one_hot_regions_equal_integer_labels():
    s, t = _feats(2, [3], SIZES[:1], 11), _feats(2, [5], SIZES[:1], 12)
    y = _labels(2, SIZES[0], 13)
    one_hot = torch.cat([(y == k) for k in range(1, NUM_CLASSES)], dim=1).double()
    a = _build("ifvd", [3], [5])(s, t, y)["loss"]
    b = _build("ifvd", [3], [5], regions=True)(s, t, one_hot)["loss"]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("regions", [False, True])
def test_logits_match_reference(regions):
    g = torch.Generator().manual_seed(14)
    zs = torch.randn(2, 4, 3, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(2, 4, 3, 4, 2, generator=g, dtype=torch.float64) * 3
    model = build_kd_method("logits", [], [], 4, temperature=1.7, regions=regions)
    out = model([], [], None, student_logits=zs, teacher_logits=zt)
    expected = ref.ref_logits(zs, zt, 1.7, regions)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-10, atol=1e-12)
    assert out["kl"] == pytest.approx(float(expected.detach()) / 1.7**2, rel=1e-9)
    torch.testing.assert_close(torch.autograd.grad(out["loss"], zs)[0], torch.autograd.grad(expected, zs)[0])
    # a deep-supervision list is read at its first (full-resolution) entry
    listed = model([], [], None, student_logits=[zs, zs[..., :1]], teacher_logits=[zt, zt[..., :1]])
    torch.testing.assert_close(listed["loss"], out["loss"])
    same = model([], [], None, student_logits=zt, teacher_logits=zt)["loss"]
    assert abs(float(same.detach())) < 1e-12


def _dist_logits(seed, shape=(2, 4, 3, 4, 2), requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(requires_grad)
    zt = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
    return zs, zt


@pytest.mark.parametrize(
    "regions, options",
    [(False, {}), (False, {"tau": 2.5, "beta": 0.7, "gamma": 1.9}), (True, {}), (True, {"tau": 0.6})],
)
def test_dist_matches_reference(regions, options):
    zs, zt = _dist_logits(30, requires_grad=True)
    zt.requires_grad_(True)  # must stay untouched: the teacher is detached
    model = build_kd_method("dist", [], [], 4, regions=regions, **options)
    assert isinstance(model, DISTKD) and model.uses_logits and not model.uses_features
    out = model([], [], None, student_logits=zs, teacher_logits=zt)
    tau, beta, gamma = model.tau, model.beta, model.gamma
    expected, inter, intra = ref.ref_dist(zs, zt.detach(), tau, beta, gamma, regions)
    assert out["loss"].dtype == torch.float64
    torch.testing.assert_close(out["loss"], expected, rtol=1e-10, atol=1e-12)
    assert out["inter"] == pytest.approx(float(inter.detach()), rel=1e-10)
    assert out["intra"] == pytest.approx(float(intra.detach()), rel=1e-10)
    ours = torch.autograd.grad(out["loss"], zs, retain_graph=True)[0]
    theirs = torch.autograd.grad(expected, zs)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-12)
    assert ours.abs().sum() > 0
    out["loss"].backward()
    assert zt.grad is None
    # a deep-supervision list is read at its first (full-resolution) entry
    listed = model([], [], None, student_logits=[zs, zs[..., :1]], teacher_logits=[zt, zt[..., :1]])
    torch.testing.assert_close(listed["loss"], out["loss"])


def test_dist_reference_agrees_with_numpy_corrcoef():
    np = pytest.importorskip("numpy")
    zs, zt = _dist_logits(31)
    ys = torch.softmax(zs, 1).movedim(1, -1).reshape(-1, 4).numpy()  # M x K
    yt = torch.softmax(zt, 1).movedim(1, -1).reshape(-1, 4).numpy()
    inter = np.mean([1 - np.corrcoef(a, b)[0, 1] for a, b in zip(ys, yt, strict=True)])
    intra = np.mean([1 - np.corrcoef(ys[:, k], yt[:, k])[0, 1] for k in range(4)])
    _, ref_inter, ref_intra = ref.ref_dist(zs, zt, 1.0, 1.0, 1.0)
    assert float(ref_inter) == pytest.approx(inter, rel=1e-6)
    assert float(ref_intra) == pytest.approx(intra, rel=1e-6)
    model = build_kd_method("dist", [], [], 4, beta=2.0, gamma=0.5)
    out = model([], [], student_logits=zs, teacher_logits=zt)
    assert float(out["loss"]) == pytest.approx(2.0 * inter + 0.5 * intra, rel=1e-6)


@pytest.mark.parametrize("regions", [False, True])
def test_dist_zero_when_student_matches_teacher_and_positive_otherwise(regions):
    zs, zt = _dist_logits(32)
    model = build_kd_method("dist", [], [], 4, regions=regions, tau=2.0)
    same = model([], [], None, student_logits=zt, teacher_logits=zt)
    assert abs(float(same["loss"])) < 1e-12 and abs(same["inter"]) < 1e-12 and abs(same["intra"]) < 1e-12
    assert float(model([], [], None, student_logits=zs, teacher_logits=zt)["loss"]) > 1e-3


def test_dist_invariances():
    zs, zt = _dist_logits(33)
    model = build_kd_method("dist", [], [], 4, tau=1.5, beta=0.8, gamma=1.3)

    def loss(a, b):
        return float(model([], [], None, student_logits=a, teacher_logits=b)["loss"])

    base = loss(zs, zt)
    g = torch.Generator().manual_seed(34)
    per_voxel = lambda z: z + 5 * torch.randn(z.shape[0], 1, *z.shape[2:], generator=g, dtype=z.dtype)  # noqa: E731
    # softmax ignores a constant added to all logits of a voxel (student and teacher independently)
    assert loss(per_voxel(zs), per_voxel(zt)) == pytest.approx(base, rel=1e-9)
    # relabelling the classes (same permutation for both) and reordering voxels / samples
    perm = torch.tensor([2, 0, 3, 1])
    assert loss(zs[:, perm], zt[:, perm]) == pytest.approx(base, rel=1e-9)
    assert loss(zs.flip(0, 2, 4), zt.flip(0, 2, 4)) == pytest.approx(base, rel=1e-9)
    # Pearson correlation is symmetric: swapping the roles leaves the value unchanged
    assert loss(zt, zs) == pytest.approx(base, rel=1e-9)
    # the intra term couples voxels across the batch: the loss is not the mean of per-sample losses
    halves = (loss(zs[:1], zt[:1]) + loss(zs[1:], zt[1:])) / 2
    assert halves != pytest.approx(base, rel=1e-6)


def test_dist_degenerate_logits_are_finite():
    model = build_kd_method("dist", [], [], NUM_CLASSES)
    zs = torch.zeros(1, NUM_CLASSES, 2, 2, 2, requires_grad=True)  # uniform softmax: zero variance everywhere
    out = model([], [], None, student_logits=zs, teacher_logits=torch.randn(1, NUM_CLASSES, 2, 2, 2))
    assert torch.isfinite(out["loss"]) and out["inter"] == pytest.approx(1.0)
    out["loss"].backward()
    assert torch.isfinite(zs.grad).all()
    one_voxel = torch.randn(1, NUM_CLASSES, 1, 1, 1, requires_grad=True)  # one voxel: constant columns
    out = model([], [], None, student_logits=one_voxel, teacher_logits=torch.randn(1, NUM_CLASSES, 1, 1, 1))
    assert torch.isfinite(out["loss"]) and out["intra"] == pytest.approx(1.0)
    out["loss"].backward()
    assert torch.isfinite(one_voxel.grad).all()


def test_dist_bad_inputs_and_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        build_kd_method("dist", [], [], 1)
    model = build_kd_method("dist", [4], [8], 3)
    with pytest.raises(ValueError, match="needs student_logits"):
        model([torch.randn(1, 4, 2, 2, 2)], [torch.randn(1, 8, 2, 2, 2)])
    z = torch.randn(1, 4, 4, 4, 4)
    with pytest.raises(ValueError, match="3 classes"):
        model([], [], student_logits=z, teacher_logits=z)
    with pytest.raises(ValueError, match="same shape"):
        model([], [], student_logits=z[:, :3], teacher_logits=z[:, :3, :2])


def test_dist_in_a_combination_with_reco():
    combo = build_kd_method("reco+dist:0.5", [4], [8], 3, **{"dist.tau": 2.0, "dist.gamma": 0.0})
    assert isinstance(combo, CombinedKD) and combo.uses_logits and combo.uses_features
    assert combo.methods["dist"].tau == 2.0 and combo.methods["reco"].tau == 1.0
    s, t = [torch.randn(2, 4, 4, 4, 4)], [torch.randn(2, 8, 4, 4, 4)]
    y = torch.randint(0, 3, (2, 1, 4, 4, 4))
    zs, zt = torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 8, 8, 8)
    with torch.no_grad():
        out = combo(s, t, y, student_logits=zs, teacher_logits=zt)
        a = combo.methods["reco"](s, t, y)["loss"]
        b = combo.methods["dist"]([], [], student_logits=zs, teacher_logits=zt)
    assert float(out["loss"]) == pytest.approx(float(a + 0.5 * b["loss"]), rel=1e-6)
    assert float(b["loss"]) == pytest.approx(b["inter"], rel=1e-6)  # gamma = 0: inter only
    assert out["dist:inter"] == b["inter"] and "reco:fg/0" in out
    with_logits = build_kd_method("logits+dist:2", [4], [8], 3)  # two logit terms side by side
    assert not with_logits.uses_features and not with_logits.uses_target


def _identity_adapters(model, c):
    """Set each adapter C'=c -> C=2c to ``[I; I]`` with zero bias, so ``A(S) = [S; S]``."""
    with torch.no_grad():
        for adapter in getattr(model, "adapters", []):
            if hasattr(adapter, "weight"):
                adapter.weight.copy_(torch.cat([torch.eye(c), torch.eye(c)]).to(adapter.weight))
                adapter.bias.zero_()


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_zero_loss_when_student_matches_teacher_and_positive_otherwise(name):
    c = 3
    s = _feats(2, [c, c], SIZES, 15)
    y = _labels(2, SIZES[0], 16)
    # equal channels: identical features (identity adapters)
    same = _build(name, [c, c], [c, c])
    assert abs(float(same(s, s, y)["loss"].detach())) < 1e-12
    # teacher = the student's channels twice; adapters set to [I; I]: every method's target is met
    doubled = _build(name, [c, c], [2 * c, 2 * c])
    _identity_adapters(doubled, c)
    t = [torch.cat([f, f], dim=1) for f in s]
    assert abs(float(doubled(s, t, y)["loss"].detach())) < 1e-12
    other = _feats(2, [2 * c, 2 * c], SIZES, 17)
    assert float(doubled(s, other, y)["loss"].detach()) > 1e-6


def test_invariances():
    s = _feats(2, [3], SIZES[:1], 18)
    scaled = [2.5 * s[0]]
    shifted = [s[0] + torch.randn(1, 3, 1, 1, 1, dtype=torch.float64)]  # a constant per channel
    assert float(_build("at", [3], [3])(s, scaled)["loss"]) < 1e-12  # AT normalises the maps
    assert float(_build("cwd", [3], [3])(s, shifted)["loss"]) < 1e-12  # softmax over voxels
    for name in ("skd", "cirkd", "rkd"):  # cosines / normalised distances ignore a global scale
        assert float(_build(name, [3], [3])(s, scaled)["loss"]) < 1e-12, name


@pytest.mark.parametrize("name", ALL_METHODS)
def test_gradients_reach_student_and_method_params_never_teacher(name):
    cs, ct = [3, 4], [6, 4]
    model = build_kd_method(name, cs, ct, NUM_CLASSES)
    s = _feats(2, cs, SIZES, 19, dtype=torch.float32, requires_grad=True)
    t = _feats(2, ct, SIZES, 20, dtype=torch.float32, requires_grad=True)  # must stay untouched
    zs = torch.randn(2, NUM_CLASSES, 4, 4, 4, requires_grad=True)
    zt = torch.randn(2, NUM_CLASSES, 4, 4, 4, requires_grad=True)
    out = model(s, t, _labels(2, SIZES[0], 21), student_logits=zs, teacher_logits=zt)
    assert out["loss"].dim() == 0 and float(out["loss"].detach()) > 0
    assert all(isinstance(v, float) for k, v in out.items() if k != "loss")
    out["loss"].backward()
    assert all(x.grad is None for x in t) and zt.grad is None
    if name in LOGIT_METHODS:
        assert zs.grad.abs().sum() > 0 and all(x.grad is None for x in s)
    else:
        assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, pname
    has_params = any(p.requires_grad for p in model.parameters())
    assert has_params == (name in ("fitnet", "cwd"))


def _finite(model, s, t, y):
    out = model(s, t, y)
    assert torch.isfinite(out["loss"]), out
    out["loss"].backward()
    assert all(torch.isfinite(x.grad).all() for x in s if x.grad is not None)
    return float(out["loss"].detach())


@pytest.mark.parametrize(
    "make_target",
    [
        lambda: torch.zeros(2, 1, 4, 5, 3, dtype=torch.long),  # background only: classes absent
        lambda: torch.cat([torch.zeros(1, 1, 4, 5, 3), torch.full((1, 1, 4, 5, 3), 2.0)]),  # one class each
        lambda: torch.full((2, 1, 4, 5, 3), 3),  # everything ignored
    ],
)
def test_ifvd_degenerate_targets(make_target):
    model = build_kd_method("ifvd", [3, 3], [5, 5], NUM_CLASSES, ignore_label=3)
    s = _feats(2, [3, 3], SIZES, 22, dtype=torch.float32, requires_grad=True)
    t = _feats(2, [5, 5], SIZES, 23, dtype=torch.float32)
    value = _finite(model, s, t, make_target())
    if int(make_target().min()) == 3:
        assert value == 0.0


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_degenerate_features_give_finite_losses(name):
    # batch of one, a 1x1x1 level (single pooled cell), an all-zero student, constant teacher
    sizes = [(4, 5, 3), (1, 1, 1)]
    model = build_kd_method(name, [3, 3], [5, 5], NUM_CLASSES)
    s = [torch.zeros(1, 3, *sizes[0], requires_grad=True), torch.randn(1, 3, *sizes[1], requires_grad=True)]
    t = [torch.ones(1, 5, *sizes[0]), torch.randn(1, 5, *sizes[1])]
    _finite(model, s, t, torch.zeros(1, 1, *sizes[0], dtype=torch.long))
    s = _feats(1, [3, 3], sizes, 24, dtype=torch.float32, requires_grad=True)
    _finite(model, s, [torch.randn(1, 5, *sz) for sz in sizes], _labels(1, sizes[0], 25))


def test_pooling_matches_explicit_windows_and_2d():
    f = _feats(2, [3], [(5, 7, 3)], 26)[0]
    for grid, mode in ((2, "avg"), (3, "max"), (8, "avg")):
        pooled = pool_to_grid(f, grid, mode)
        for b in range(2):
            torch.testing.assert_close(pooled[b], ref.ref_pool(f[b], grid, mode))
    torch.testing.assert_close(pool_to_grid(f[:, :, :1], 2, "max"), pool_to_grid(f[:, :, 0], 2, "max"))


def test_autocast_runs_losses_in_float32():
    s = [torch.randn(2, 3, 4, 4, 4).bfloat16().requires_grad_(True)]
    t = [torch.randn(2, 5, 4, 4, 4).bfloat16()]
    for name in FEATURE_METHODS:
        model = build_kd_method(name, [3], [5], NUM_CLASSES)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(s, t, torch.randint(0, NUM_CLASSES, (2, 1, 4, 4, 4)))
        assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"]), name
    z = torch.randn(1, NUM_CLASSES, 4, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LogitKD([], [], NUM_CLASSES)([], [], student_logits=z, teacher_logits=z + 1)
    assert out["loss"].dtype == torch.float32
    z2 = torch.randn(1, NUM_CLASSES, 4, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DISTKD([], [], NUM_CLASSES)([], [], student_logits=z, teacher_logits=z2)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_registry_lists_baselines_with_published_defaults():
    methods = available_methods()
    assert {"reco", "reco-sard", "reco-ca", "reco-affinity"} <= set(methods)  # ReCo-KD kept
    expected = {
        "logits": (LogitKD, {"temperature": 2.0, "regions": False}),
        "fitnet": (FitNet, {"alpha": 0.4, "level_weights": None}),
        "at": (AttentionTransfer, {}),
        "cwd": (ChannelWiseDistillation, {"temperature": 4.0}),
        "skd": (StructuredKD, {"grid": 4, "pool": "max"}),
        "ifvd": (IFVD, {"ignore_label": None, "regions": False}),
        "cirkd": (CrossImageRelationalKD, {"temperature": 0.1, "grid": 4, "pool": "avg"}),
        "rkd": (RelationalKD, {"distance_weight": 25.0, "angle_weight": 50.0, "across_batch": False}),
        "dist": (DISTKD, {"tau": 1.0, "beta": 1.0, "gamma": 1.0, "regions": False}),
    }
    for name, (cls, defaults) in expected.items():
        info = methods[name]
        assert info.description and info.factory is cls
        assert defaults.items() <= info.options().items(), name
        method = build_kd_method(name, [4, 4], [8, 8], 3)  # as `recokd train` validates a spec
        assert isinstance(method, cls)
        assert method.uses_logits == (name in LOGIT_METHODS)
        assert method.uses_features == (name not in LOGIT_METHODS)
        assert method.uses_target == (name == "ifvd")
    assert build_kd_method("cwd", [4], [8], 3, temperature=1.0).temperature == 1.0
    assert build_kd_method("rkd", [4], [8], 3, angle_weight=0.0).coef["angle"] == 0.0


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("logits", {"temperature": 0.0}, "temperature"),
        ("cwd", {"temperature": -1.0}, "temperature"),
        ("skd", {"grid": 0}, "grid"),
        ("cirkd", {"pool": "min"}, "pool"),
        ("fitnet", {"level_weights": [1.0, 2.0, 3.0]}, "level_weights"),
        ("at", {"grid": 2}, "no option 'grid'"),
        ("rkd", {"distance_weight": 0.0, "angle_weight": 0.0}, "nothing to distil"),
        ("dist", {"tau": 0.0}, "tau"),
        ("dist", {"tau": float("inf")}, "tau"),
        ("dist", {"beta": -1.0}, "beta"),
        ("dist", {"beta": float("inf")}, "beta"),
        ("dist", {"gamma": float("nan")}, "gamma"),
        ("dist", {"temperature": 2.0}, "no option 'temperature'"),
    ],
)
def test_bad_options_give_clear_errors(name, options, match):
    with pytest.raises(ValueError, match=match):
        build_kd_method(name, [4, 4], [8, 8], 3, **options)


def test_bad_inputs_give_clear_errors():
    model = build_kd_method("ifvd", [4, 4], [8, 8], 3)
    s = [torch.randn(1, 4, 4, 4, 4)] * 2
    t = [torch.randn(1, 8, 4, 4, 4)] * 2
    with pytest.raises(ValueError, match="2 levels"):
        model(s[:1], t[:1], torch.zeros(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="needs the ground-truth"):
        model(s, t, None)
    with pytest.raises(ValueError, match="label values"):
        model(s, t, torch.full((1, 1, 4, 4, 4), 7))
    with pytest.raises(ValueError, match="channels"):
        build_kd_method("at", [4, 4], [8, 8], 3)([torch.randn(1, 5, 4, 4, 4)] * 2, t)
    with pytest.raises(ValueError, match="spatial"):
        build_kd_method("skd", [4, 4], [8, 8], 3)(s, [torch.randn(1, 8, 3, 4, 4)] * 2)
    logits = build_kd_method("logits", [4], [8], 3)
    with pytest.raises(ValueError, match="needs student_logits"):
        logits(s, t)
    with pytest.raises(ValueError, match="3 classes"):
        z = torch.randn(1, 4, 4, 4, 4)
        logits([], [], student_logits=z, teacher_logits=z)


def test_combination_with_reco_sets_uses_logits_and_sums_weighted_terms():
    combo = build_kd_method("reco+logits:0.5", [4], [8], 3, **{"logits.temperature": 4.0})
    assert isinstance(combo, CombinedKD)
    assert combo.uses_logits and combo.uses_features and combo.uses_target
    assert combo.methods["logits"].temperature == 4.0 and combo.methods["reco"].temperature == 0.5
    s, t = [torch.randn(2, 4, 4, 4, 4)], [torch.randn(2, 8, 4, 4, 4)]
    y = torch.randint(0, 3, (2, 1, 4, 4, 4))
    zs, zt = torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 8, 8, 8)
    with torch.no_grad():
        out = combo(s, t, y, student_logits=zs, teacher_logits=zt)
        a = combo.methods["reco"](s, t, y)["loss"]
        b = combo.methods["logits"]([], [], student_logits=zs, teacher_logits=zt)["loss"]
    assert float(out["loss"]) == pytest.approx(float(a + 0.5 * b), rel=1e-6)
    assert math.isfinite(out["logits:kl"]) and "reco:fg/0" in out
    features_only = build_kd_method("fitnet+at:2+rkd", [4], [8], 3)
    assert not features_only.uses_logits and not features_only.uses_target


@pytest.fixture(scope="module")
def nets():
    from recokd.kd.partial import tap_channels
    from recokd.kd.taps import default_nnunet_taps
    from recokd.kd.widths import scale_widths
    from tests.kd._nets import plain_unet

    widths = (8, 16, 32, 32)
    teacher, student = plain_unet(widths), plain_unet(scale_widths(widths, 2))
    taps = default_nnunet_taps(teacher)
    shape = (1, 1, 16, 16, 16)
    return teacher, student, taps, tap_channels(student, taps, shape), tap_channels(teacher, taps, shape)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_runs_through_the_distiller(nets, name):
    from recokd.kd.distiller import Distiller

    teacher, student, taps, cs, ct = nets
    kd = build_kd_method(name, cs, ct, 3)
    d = Distiller(teacher, student, kd, taps).train()
    decoder_calls = []
    hook = teacher.decoder.register_forward_hook(lambda *a: decoder_calls.append(1))
    try:
        student.zero_grad(set_to_none=True)
        x = torch.randn(2, 1, 16, 16, 16)
        y = torch.randint(0, 3, (2, 1, 16, 16, 16))
        _, losses = d(x, y)
    finally:
        hook.remove()
    assert torch.isfinite(losses["loss"]) and float(losses["loss"].detach()) > 0
    losses["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert bool(decoder_calls) == (name in LOGIT_METHODS)  # only logit methods run the teacher's decoder
    keys = {k for k in losses if k != "loss"}
    if name == "logits":
        assert keys == {"kl"}
    elif name == "dist":
        assert keys == {"inter", "intra"}
    else:
        assert any(k.endswith(f"/{len(taps) - 1}") for k in keys)  # every tapped level logged
