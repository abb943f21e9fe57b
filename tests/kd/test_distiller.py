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
