"""The partial teacher forward: same features as a full forward, less of the network run."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from recokd.errors import UserError
from recokd.kd.partial import forward_features, teacher_forward_mode
from recokd.kd.taps import FeatureTaps, resolve_module
from tests.kd._nets import NETS, CallRecorder, input_volume, plain_unet


class Toy(nn.Module):
    """a -> b -> tail; ``spare`` is never used by the forward."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv3d(1, 2, 1)
        self.b = nn.Conv3d(2, 3, 1)
        self.tail = nn.Conv3d(3, 2, 1)
        self.spare = nn.Conv3d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.b(self.a(x)))


def _no_hooks(net: nn.Module) -> bool:
    return all(not m._forward_hooks for m in net.modules())


def _full_forward_features(net: nn.Module, x: torch.Tensor, paths: list[str]) -> list[torch.Tensor]:
    with FeatureTaps(net, paths) as tp:
        net(x)
        return tp.features()


@pytest.mark.parametrize("name", list(NETS))
def test_forward_features_equals_full_forward_and_skips_the_rest(name):
    case = NETS[name]
    net = case.build()
    x = input_volume(batch=2)
    after = CallRecorder(resolve_module(net, case.after_last_tap))
    decoder = CallRecorder(net.decoder) if hasattr(net, "decoder") else None
    with torch.no_grad():
        full = _full_forward_features(net, x, case.taps)
        assert after.calls == 1  # the recorder sees a full forward ...
        part = forward_features(net, x, case.taps)
    assert after.calls == 1  # ... but the partial forward stops before that module
    if decoder is not None:
        assert decoder.calls == 1  # nnU-Net: the decoder ran only in the full forward
    assert len(part) == len(full) == len(case.taps)
    for p, f in zip(part, full, strict=True):
        assert torch.equal(p, f)
    after.handle.remove()
    if decoder is not None:
        decoder.handle.remove()
    assert _no_hooks(net)


@pytest.mark.parametrize("name,mode", [("plain", "encoder"), ("resenc", "encoder"),
                                       ("dynunet", "early-exit"), ("segresnet", "early-exit")])
def test_teacher_forward_mode(name, mode):
    case = NETS[name]
    assert teacher_forward_mode(case.build(), case.taps) == mode


def test_nnunet_decoder_tap_falls_back_to_early_exit():
    net = plain_unet()
    paths = ["encoder.stages.1", "decoder.stages.0"]
    assert teacher_forward_mode(net, paths) == "early-exit"
    later = CallRecorder(net.decoder.stages[1])
    x = input_volume()
    with torch.no_grad():
        part = forward_features(net, x, paths)
        assert later.calls == 0
        full = _full_forward_features(net, x, paths)
    assert later.calls == 1
    assert all(torch.equal(p, f) for p, f in zip(part, full, strict=True))


def test_early_exit_stops_after_last_tap_in_any_order():
    net = Toy()
    tail = CallRecorder(net.tail)
    x = input_volume()
    with torch.no_grad():
        b, a = forward_features(net, x, ["b", "a"])
        assert tail.calls == 0
        assert torch.equal(a, net.a(x)) and torch.equal(b, net.b(net.a(x)))
    tail.handle.remove()
    assert _no_hooks(net)


def test_unfired_tap_is_named_and_hooks_removed():
    net = Toy()
    with pytest.raises(RuntimeError, match=r"\['spare'\]"):
        forward_features(net, input_volume(), ["a", "spare"])
    assert _no_hooks(net)


def test_hooks_removed_when_the_forward_raises():
    net = plain_unet()
    wrong_channels = torch.zeros(1, 2, 8, 8, 8)
    with pytest.raises(RuntimeError):
        forward_features(net, wrong_channels, ["encoder.stages.0", "encoder.stages.1"])
    assert _no_hooks(net)
    with pytest.raises(UserError, match="'stagez'"):
        forward_features(net, input_volume(), ["encoder.stagez.0"])
    assert _no_hooks(net)


def test_empty_paths_run_nothing():
    net = Toy()
    a = CallRecorder(net.a)
    assert forward_features(net, input_volume(), []) == []
    assert a.calls == 0


def test_grad_and_train_state_are_left_to_the_caller():
    net = plain_unet().train()
    paths = ["encoder.stages.0"]
    (f,) = forward_features(net, input_volume(), paths)
    assert f.requires_grad and net.training and torch.is_grad_enabled()
    with torch.no_grad():
        (f,) = forward_features(net, input_volume(), paths)
    assert not f.requires_grad and net.training


def test_kd_modules_do_not_import_nnunet_or_monai():
    code = (
        "import sys, recokd.kd.taps, recokd.kd.partial; "
        "bad = [m for m in ('nnunetv2', 'monai', 'dynamic_network_architectures') if m in sys.modules]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
