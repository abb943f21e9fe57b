"""The Distiller on small nnU-Net nets: gradients, frozen teacher, teacher cost, logits path."""

from __future__ import annotations

import pytest
import torch

from recokd.kd.distiller import Distiller
from recokd.kd.partial import tap_channels
from recokd.kd.reco import ReCoKD
from recokd.kd.taps import default_nnunet_taps
from recokd.kd.widths import scale_widths
from tests.kd._nets import plain_unet


def _pair():
    torch.manual_seed(0)
    widths = (8, 16, 32, 32)
    teacher = plain_unet(widths)
    student = plain_unet(scale_widths(widths, 2))
    taps = default_nnunet_taps(teacher)
    shape = (1, 1, 16, 16, 16)
    kd = ReCoKD(tap_channels(student, taps, shape), tap_channels(teacher, taps, shape), 3)
    return teacher, student, kd, taps


def test_gradients_reach_student_and_kd_params_never_teacher():
    teacher, student, kd, taps = _pair()
    d = Distiller(teacher, student, kd, taps).train()
    assert not teacher.training and student.training
    x = torch.randn(2, 1, 16, 16, 16)
    y = torch.randint(0, 3, (2, 1, 16, 16, 16))
    out, losses = d(x, y)
    assert isinstance(out, list | tuple) and out[0].shape == (2, 3, 16, 16, 16)  # deep supervision
    losses["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.encoder.parameters())
    kd_params = list(d.kd_parameters())
    assert kd_params and all(any(p is q for q in kd.parameters()) for p in kd_params)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in kd_params)
    assert {"fg/0", "bg/0", "att/0", "ctx/0"} <= set(losses)


def test_teacher_runs_encoder_only():
    teacher, student, kd, taps = _pair()
    calls = []
    teacher.decoder.register_forward_hook(lambda *a: calls.append(1))
    d = Distiller(teacher, student, kd, taps)
    d(torch.randn(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16, dtype=torch.long))
    assert calls == []


def test_teacher_features_match_full_forward():
    teacher, student, kd, taps = _pair()
    d = Distiller(teacher, student, kd, taps)
    x = torch.randn(1, 1, 16, 16, 16)
    feats, logits = d.teacher_outputs(x)
    assert logits is None
    from recokd.kd.taps import FeatureTaps

    with torch.no_grad(), FeatureTaps(teacher, taps) as tp:
        teacher(x)
        full = tp.features()
    for a, b in zip(feats, full, strict=True):
        assert torch.equal(a, b)


class _LogitKD(ReCoKD):
    """A method asking for logits too: the teacher must run in full."""

    uses_logits = True

    def forward(self, s, t, target=None, *, student_logits=None, teacher_logits=None):
        out = super().forward(s, t, target)
        out["loss"] = out["loss"] + ((student_logits - teacher_logits) ** 2).mean()
        return out


def test_logit_methods_get_full_resolution_logits():
    teacher, student, kd, taps = _pair()
    kd = _LogitKD(kd.student_channels, kd.teacher_channels, 3)
    d = Distiller(teacher, student, kd, taps)
    x = torch.randn(1, 1, 16, 16, 16)
    feats, logits = d.teacher_outputs(x)
    assert logits.shape == (1, 3, 16, 16, 16) and len(feats) == len(taps)
    out, losses = d(x, torch.zeros(1, 1, 16, 16, 16, dtype=torch.long))
    losses["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_mismatched_tap_lists_are_refused():
    teacher, student, kd, taps = _pair()
    with pytest.raises(ValueError, match="one per level"):
        Distiller(teacher, student, kd, taps, teacher_taps=taps[:1])


# ---------------------------------------------------------------- unlabelled samples, fold ensembles


def _recording(kd):
    """Wrap ``kd.forward`` so that the target and logits it receives are recorded."""
    seen = {}
    forward = kd.forward

    def record(s, t, target=None, **kw):
        seen["target"], seen["teacher_logits"] = target, kw.get("teacher_logits")
        return forward(s, t, target, **kw)

    kd.forward = record
    return seen


def _teacher_logits(teacher, x):
    with torch.no_grad():
        return teacher(x)[0]


def test_unlabelled_samples_get_the_teachers_argmax_and_labelled_ones_keep_theirs():
    teacher, student, kd, taps = _pair()
    seen = _recording(kd)
    d = Distiller(teacher, student, kd, taps)
    x = torch.randn(3, 1, 16, 16, 16)
    target = [torch.randint(0, 3, (3, 1, 16, 16, 16)), torch.randint(0, 3, (3, 1, 8, 8, 8))]
    labelled = torch.tensor([True, False, True])
    d(x, target, labelled)
    argmax = _teacher_logits(teacher, x).argmax(1, keepdim=True)
    got = seen["target"]
    for level in (0, 1):
        assert torch.equal(got[level][labelled], target[level][labelled])
    assert torch.equal(got[0][1], argmax[1])
    # the lower deep-supervision map: the teacher's map, nearest-resized (every 2nd voxel)
    assert torch.equal(got[1][1], argmax[1][:, ::2, ::2, ::2])
    assert got[0].dtype == target[0].dtype


def test_return_target_gives_the_teachers_labels_for_the_label_loss_even_for_a_logit_method():
    """``return_target``: kd["target"] is the deep-supervision target with the unlabelled samples filled
    by the teacher's argmax (what --pseudo-label-loss trains on), also when the KD method itself needs
    no target; without unlabelled samples it is the given target, untouched."""
    from recokd.kd.registry import build_kd_method

    teacher, student, _, taps = _pair()
    logit_kd = build_kd_method("logits", [2, 4, 8], [8, 16, 32], 3)
    assert not logit_kd.uses_target
    d = Distiller(teacher, student, logit_kd, taps)
    x = torch.randn(2, 1, 16, 16, 16)
    target = [torch.randint(0, 3, (2, 1, 16, 16, 16)), torch.randint(0, 3, (2, 1, 8, 8, 8))]
    _, kd = d(x, target, torch.tensor([False, True]), return_target=True)
    argmax = _teacher_logits(teacher, x).argmax(1, keepdim=True)
    assert torch.equal(kd["target"][0][0], argmax[0])
    assert torch.equal(kd["target"][1][0], argmax[0][:, ::2, ::2, ::2])
    assert torch.equal(kd["target"][0][1], target[0][1]) and torch.equal(kd["target"][1][1], target[1][1])
    _, kd = d(x, target, None, return_target=True)
    assert kd["target"] is target
    _, kd = d(x, target, torch.tensor([False, True]))
    assert "target" not in kd


def test_ms_sard_masks_of_an_unlabelled_sample_are_those_of_the_teachers_argmax():
    from recokd.kd.masks import region_weights

    teacher, student, kd, taps = _pair()
    seen = _recording(kd)
    x = torch.randn(2, 1, 16, 16, 16)
    target = torch.randint(0, 3, (2, 1, 16, 16, 16))
    Distiller(teacher, student, kd, taps)(x, target, torch.tensor([False, True]))
    argmax = _teacher_logits(teacher, x).argmax(1, keepdim=True)
    got_fg, got_bg = region_weights(seen["target"][:1], 3)
    ref_fg, ref_bg = region_weights(argmax[:1], 3)
    assert torch.equal(got_fg, ref_fg) and torch.equal(got_bg, ref_bg)


def test_all_labelled_mask_changes_nothing_and_runs_the_encoder_only():
    teacher, student, kd, taps = _pair()
    calls = []
    teacher.decoder.register_forward_hook(lambda *a: calls.append(1))
    d = Distiller(teacher, student, kd, taps)
    x = torch.randn(2, 1, 16, 16, 16)
    y = torch.randint(0, 3, (2, 1, 16, 16, 16))
    torch.manual_seed(1)
    _, a = d(x, y)
    torch.manual_seed(1)
    _, b = d(x, y, torch.tensor([True, True]))
    assert torch.equal(a["loss"], b["loss"]) and calls == []


def test_region_targets_of_unlabelled_samples_keep_the_ignore_channel_empty():
    from recokd.kd.distiller import teacher_label_map

    logits = torch.randn(2, 2, 4, 4, 4)
    like = torch.ones(2, 3, 4, 4, 4)  # two regions + nnU-Net's ignore channel
    got = teacher_label_map(logits, like, regions=True)
    assert torch.equal(got[:, :2], (logits > 0).float()) and not got[:, 2].any()
    with pytest.raises(ValueError, match="channels"):
        teacher_label_map(logits, torch.ones(2, 5, 4, 4, 4), regions=True)


def test_fold_ensemble_logits_are_the_members_mean_and_features_the_first_members():
    teacher, student, kd, taps = _pair()
    torch.manual_seed(5)
    other = plain_unet((8, 16, 32, 32))
    kd = _LogitKD(kd.student_channels, kd.teacher_channels, 3)
    d = Distiller(teacher, student, kd, taps, ensemble=[other])
    x = torch.randn(1, 1, 16, 16, 16)
    feats, logits = d.teacher_outputs(x)
    mean = (_teacher_logits(teacher, x) + _teacher_logits(other, x)) / 2
    assert torch.allclose(logits, mean, atol=1e-6)
    single, _ = Distiller(teacher, student, kd, taps).teacher_outputs(x)
    for a, b in zip(feats, single, strict=True):
        assert torch.equal(a, b)
    assert all(not p.requires_grad for p in other.parameters()) and not d.train().ensemble.training
