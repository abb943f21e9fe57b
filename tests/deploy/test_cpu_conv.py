"""recokd.deploy.cpu_conv: per-layer oneDNN choice keeps the outputs and only affects CPU inference."""

from __future__ import annotations

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from recokd.deploy.cpu_conv import use_fastest_cpu_conv3d


def _student() -> nn.Module:
    torch.manual_seed(0)
    return PlainConvUNet(1, 4, [8, 16, 32, 64], nn.Conv3d, 3, [1, 2, 2, 2], 2, 3, [2, 2, 2], True,
                         nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU,
                         {"inplace": True}, deep_supervision=False).eval()


def test_outputs_unchanged_and_every_conv_decided():
    net = _student()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ref = net(x)
    choice = use_fastest_cpu_conv3d(net, x, repeats=1)
    convs = [n for n, m in net.named_modules() if type(m) is nn.Conv3d]
    assert sorted(choice) == sorted(convs) and set(choice.values()) <= {"onednn", "default", "not run"}
    assert sum(v != "not run" for v in choice.values()) >= len(convs) - 3  # 3 deep-supervision heads
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-4)
        other = torch.randn(1, 1, 48, 32, 40)  # other tile sizes go through the chosen kernels too
        out = net(other)
    assert out.shape == (1, 3, 48, 32, 40)


def test_forced_onednn_matches_default_and_training_uses_the_default_path():
    net = _student()
    convs = [m for m in net.modules() if type(m) is nn.Conv3d]
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ref = net(x)
    from recokd.deploy.cpu_conv import _mkldnn_forward

    for m in convs:
        m.forward = _mkldnn_forward(m)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-4)
    net.train()
    out = net(x)  # grad enabled: the layers' own forward, gradients flow
    out.sum().backward()
    assert net.encoder.stages[0][0].convs[0].conv.weight.grad is not None
    from recokd.deploy.cpu_conv import default_conv_kernels

    with default_conv_kernels(net):
        assert not any(hasattr(m.forward, "recokd_default") for m in convs)
    assert all(hasattr(m.forward, "recokd_default") for m in convs)
    choice = use_fastest_cpu_conv3d(net.eval(), x, repeats=1)  # re-deciding undoes the forced kernels
    for name, m in net.named_modules():
        if type(m) is nn.Conv3d:
            assert hasattr(m.forward, "recokd_default") == (choice[name] == "onednn"), name
