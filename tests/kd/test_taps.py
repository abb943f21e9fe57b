"""Feature taps: module paths, hook life cycle, captured shapes, default taps, channel probing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recokd.errors import UserError
from recokd.kd.partial import tap_channels
from recokd.kd.taps import FeatureTaps, default_nnunet_taps, default_taps, resolve_module
from tests.kd._nets import NETS, SIZE, input_volume, plain_unet


class Toy(nn.Module):
    """a -> b -> tail; ``spare`` is never used by the forward; ``pair`` returns a tuple."""

    def __init__(self, norm: bool = False):
        super().__init__()
        self.a = nn.Conv3d(1, 2, 1)
        self.b = nn.Sequential(nn.Conv3d(2, 3, 1), nn.BatchNorm3d(3) if norm else nn.Identity())
        self.tail = nn.Conv3d(3, 2, 1)
        self.spare = nn.Conv3d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.b(self.a(x)))


def _no_hooks(net: nn.Module) -> bool:
    return all(not m._forward_hooks for m in net.modules())


# ---------------------------------------------------------------- resolve_module


def test_resolve_module_returns_the_submodule():
    net = plain_unet()
    assert resolve_module(net, "encoder.stages.1") is net.encoder.stages[1]
    assert resolve_module(net, "decoder") is net.decoder
    assert resolve_module(net, "") is net


def test_resolve_module_unknown_name_lists_available_children():
    net = plain_unet()
    with pytest.raises(UserError) as e:
        resolve_module(net, "encoder.stagez.0")
    msg = str(e.value)
    assert "'encoder.stagez.0'" in msg and "'stagez'" in msg
    assert "'stages'" in msg  # what is available under encoder


def test_resolve_module_bad_index_lists_indices():
    net = plain_unet()
    with pytest.raises(UserError) as e:
        resolve_module(net, "encoder.stages.7")
    msg = str(e.value)
    assert "'7'" in msg and "encoder.stages" in msg
    assert all(f"'{i}'" in msg for i in range(4))


def test_resolve_module_hints_at_wrapped_network():
    wrapper = nn.Module()
    wrapper.module = plain_unet()
    with pytest.raises(UserError, match="unwrap"):
        resolve_module(wrapper, "encoder.stages.0")


def test_bad_path_fails_at_construction_without_hooks():
    net = Toy()
    with pytest.raises(UserError, match="'nope'"):
        FeatureTaps(net, ["a", "nope"])
    assert _no_hooks(net)


# ---------------------------------------------------------------- captures


@pytest.mark.parametrize("name", list(NETS))
def test_default_taps_capture_expected_shapes(name):
    case = NETS[name]
    net = case.build()
    taps = default_taps(net)
    assert taps == case.taps
    x = input_volume(batch=2)
    with torch.no_grad(), FeatureTaps(net, taps) as tp:
        net(x)
        feats = tp.features()
    assert len(feats) == len(taps)
    for f, c, s in zip(feats, case.channels, case.sizes, strict=True):
        assert tuple(f.shape) == (2, c, s, s, s)
    assert _no_hooks(net)


def test_features_follow_the_order_of_paths():
    net = Toy()
    x = input_volume()
    with torch.no_grad(), FeatureTaps(net, ["b", "a"]) as tp:
        net(x)
        b, a = tp.features()
        assert torch.equal(a, net.a(x)) and torch.equal(b, net.b(net.a(x)))


def test_each_forward_overwrites_and_clear_forgets():
    net = Toy()
    x1, x2 = input_volume(seed=1), input_volume(seed=2)
    with torch.no_grad(), FeatureTaps(net, ["a"]) as tp:
        net(x1)
        first = tp.features()[0]
        net(x2)
        second = tp.features()[0]
        assert torch.equal(second, net.a(x2)) and not torch.equal(first, second)
        tp.clear()
        with pytest.raises(RuntimeError, match="'a'"):
            tp.features()


def test_unfired_tap_is_named():
    net = Toy()
    with torch.no_grad(), FeatureTaps(net, ["a", "spare"]) as tp:
        net(input_volume())
        assert tp.fired() == [True, False]
        with pytest.raises(RuntimeError) as e:
            tp.features()
    assert "['spare']" in str(e.value)


def test_tuple_output_gives_first_tensor_and_non_tensor_is_an_error():
    class Pair(nn.Module):
        def forward(self, x):
            return (None, x * 2, x * 3)

    class Named(nn.Module):
        def forward(self, x):
            return {"x": x}

    net = nn.Sequential(Pair())
    x = input_volume()
    with FeatureTaps(net, ["0"]) as tp:
        net(x)
        assert torch.equal(tp.features()[0], x * 2)
    net = nn.Sequential(Named())
    with pytest.raises(UserError, match="not a tensor"), FeatureTaps(net, ["0"]):
        net(x)
    assert _no_hooks(net)


def test_empty_paths():
    net = Toy()
    with FeatureTaps(net, []) as tp:
        net(input_volume())
        assert tp.features() == []


# ---------------------------------------------------------------- hook life cycle


def test_hooks_removed_after_success_and_after_exception():
    net = plain_unet()
    taps = default_nnunet_taps(net)
    modules = [resolve_module(net, p) for p in taps]
    with FeatureTaps(net, taps) as tp:
        assert all(len(m._forward_hooks) == 1 for m in modules)
        assert tp.attached
    assert all(not m._forward_hooks for m in modules) and not tp.attached

    with pytest.raises(ValueError, match="boom"), FeatureTaps(net, taps):
        assert all(len(m._forward_hooks) == 1 for m in modules)
        with torch.no_grad():
            net(input_volume())
        raise ValueError("boom")
    assert all(not m._forward_hooks for m in modules)
    assert _no_hooks(net)


def test_attach_remove_without_with():
    net = Toy()
    tp = FeatureTaps(net, ["a", "b"]).attach()
    with pytest.raises(RuntimeError, match="already attached"):
        tp.attach()
    net(input_volume())
    tp.remove()
    tp.remove()  # idempotent
    assert _no_hooks(net)
    assert len(tp.features()) == 2  # captures survive remove()
    net(input_volume(seed=3))  # no hooks: nothing captured any more
    with torch.no_grad():
        assert not torch.equal(tp.features()[0], net.a(input_volume(seed=3)))


# ---------------------------------------------------------------- gradients


def test_gradients_flow_through_captured_student_features():
    net = plain_unet().train()
    taps = default_nnunet_taps(net)
    with FeatureTaps(net, taps) as tp:
        net(input_volume())
        feats = tp.features()
    assert all(f.requires_grad and f.grad_fn is not None for f in feats)
    loss = sum(f.pow(2).mean() for f in feats)
    loss.backward()
    first_conv = net.encoder.stages[0][0].convs[0].conv
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    # only the features carry the loss: the decoder and the untapped bottleneck get no gradient
    # (UNetDecoder keeps a reference to the encoder, so list its own parts explicitly)
    decoder_parts = (net.decoder.stages, net.decoder.transpconvs, net.decoder.seg_layers)
    assert all(p.grad is None for part in decoder_parts for p in part.parameters())
    assert all(p.grad is None for p in net.encoder.stages[3].parameters())


# ---------------------------------------------------------------- default taps / channels


def test_default_nnunet_taps_rejects_other_networks():
    with pytest.raises(UserError, match="explicit tap paths"):
        default_nnunet_taps(NETS["dynunet"].build())
    one_stage = nn.Module()
    one_stage.encoder = nn.Module()
    one_stage.encoder.stages = nn.Sequential(nn.Identity())
    with pytest.raises(UserError, match="at least 2"):
        default_nnunet_taps(one_stage)


def test_default_taps_unknown_architecture():
    with pytest.raises(UserError) as e:
        default_taps(Toy())
    msg = str(e.value)
    assert "explicit tap paths" in msg and "'tail'" in msg


@pytest.mark.parametrize("name", list(NETS))
def test_tap_channels(name):
    case = NETS[name]
    net = case.build()
    assert tap_channels(net, case.taps, (1, 1, SIZE, SIZE, SIZE)) == case.channels


def test_tap_channels_keeps_train_mode_and_norm_statistics():
    net = Toy(norm=True).train()
    bn = net.b[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    with torch.no_grad():
        bn.running_mean.fill_(0.5)  # a forward of zeros in train mode would move this
    assert tap_channels(net, ["a", "b"], (2, 1, 4, 4, 4)) == [2, 3]
    assert net.training and all(m.training for m in net.modules())
    assert torch.all(bn.running_mean == 0.5) and int(bn.num_batches_tracked) == before[2]


def test_tap_channels_bad_input_shape():
    net = plain_unet()
    with pytest.raises(UserError, match="input_shape"):
        tap_channels(net, ["encoder.stages.0"], (1, 3, 8, 8, 8))  # 3 input channels, net takes 1
    with pytest.raises(UserError, match="input_shape"):
        tap_channels(net, ["encoder.stages.0"], (8, 8, 8))
