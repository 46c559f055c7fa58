"""Backbone presets: shapes, channel and size options, errors, independence, gradients, timm parity."""
from __future__ import annotations

import pytest
import timm
import torch

from vfm_lab.backbones import BACKBONE_NAMES, PIXEL_MEAN, PIXEL_STD, build_backbone

VITS = [n for n in BACKBONE_NAMES if n.startswith("vit")]
CONVNETS = [n for n in BACKBONE_NAMES if n not in VITS]


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_forward_and_token_shapes(name):
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    x = torch.rand(2, 3, 32, 32)  # (B, C, H, W)
    feats, tokens = net(x), net.forward_tokens(x)
    assert feats.shape == (2, net.embed_dim)
    # ViT: (32 / 4)^2 patches; resnet18: 32 px / 8 (three stride-2 stages after the stride-1 stem) = 4x4;
    # convnet-s also keeps the stride-2 max-pool: 2x2.
    assert tokens.shape == (2, {"convnet-s": 4, "resnet18": 16}.get(name, 64), net.embed_dim)
    assert torch.isfinite(feats).all() and torch.isfinite(tokens).all()
    assert net.name == name and net.in_chans == 3 and net.image_size == 32
    assert net.patch_size == (4 if name in VITS else None)
    assert isinstance(net.model.get_classifier(), torch.nn.Identity), "no classifier head"


@pytest.mark.parametrize("name", CONVNETS)
def test_convnet_pools_its_tokens_and_normalises_inside(name):
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(net(x), net.forward_tokens(x).mean(1))  # global average pool of the last map
    torch.testing.assert_close(net(x), net.model((x - PIXEL_MEAN) / PIXEL_STD))


@pytest.mark.parametrize("name", CONVNETS)
def test_convnet_runs_channels_last_with_the_nchw_result(name):
    torch.manual_seed(0)
    net = build_backbone(name)
    assert net.channels_last and all(p.is_contiguous(memory_format=torch.channels_last)
                                     for p in net.parameters() if p.ndim == 4)
    x = torch.rand(4, 3, 32, 32)  # an ordinary NCHW batch: the backbone converts it
    assert net.normalise(x).is_contiguous(memory_format=torch.channels_last)
    feats = net(x)
    feats.sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    nchw = build_backbone(name)
    nchw.load_state_dict(net.state_dict())  # the same weights, then the NCHW layout
    nchw.set_channels_last(False)
    assert not nchw.channels_last and all(p.is_contiguous() for p in nchw.parameters())
    assert not nchw.normalise(x).is_contiguous(memory_format=torch.channels_last)
    nchw(x).sum().backward()
    torch.testing.assert_close(feats, nchw(x), rtol=1e-4, atol=1e-5)
    for g, p in zip(grads, nchw.parameters()):  # sums over 4,096 positions in another order: error on the tensor's scale
        torch.testing.assert_close(g, p.grad, rtol=1e-3, atol=1e-3 * g.abs().max().item())


def test_vit_keeps_its_layout():
    net = build_backbone("vit-nano")
    x = torch.rand(2, 3, 32, 32)
    assert not net.channels_last
    torch.testing.assert_close(net.normalise(x), (x - PIXEL_MEAN) / PIXEL_STD)


@pytest.mark.parametrize("name", VITS)
def test_vit_pools_the_class_token_and_exposes_timm_modules(name):
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    x = torch.rand(3, 3, 32, 32)
    all_tokens = net.model.forward_features((x - PIXEL_MEAN) / PIXEL_STD)  # (B, 1 + N, D)
    torch.testing.assert_close(net(x), all_tokens[:, 0])
    torch.testing.assert_close(net.forward_tokens(x), all_tokens[:, 1:])
    assert len(net.model.blocks) == {"vit-nano": 4, "vit-tiny": 12}[name]
    assert net.model.patch_embed(x).shape == (3, 64, net.embed_dim)
    assert net.embed_dim == {"vit-nano": 128, "vit-tiny": 192}[name]


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_one_channel_28px(name):
    net = build_backbone(name, in_chans=1, image_size=28).eval()
    x = torch.rand(2, 1, 28, 28)
    assert net(x).shape == (2, net.embed_dim)
    # 28/4 = 7 patches a side; resnet18: 28 -> 4 a side; convnet-s: 28 -> 2 a side
    assert net.forward_tokens(x).shape[:2] == (2, {"convnet-s": 4, "resnet18": 16}.get(name, 49))


@pytest.mark.parametrize("patch_size, n_tokens", [(7, 16), (4, 49), (14, 4)])
def test_vit_patch_size_override(patch_size, n_tokens):
    net = build_backbone("vit-nano", in_chans=1, image_size=28, patch_size=patch_size).eval()
    assert net.patch_size == patch_size
    assert net.forward_tokens(torch.rand(2, 1, 28, 28)).shape == (2, n_tokens, 128)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="vit-tiny"):  # names the valid presets
        build_backbone("vit-huge")
    with pytest.raises(ValueError, match="image_size=30 is not divisible by patch_size=4"):
        build_backbone("vit-nano", image_size=30)
    with pytest.raises(ValueError, match="patch_size=5"):
        build_backbone("vit-tiny", image_size=32, patch_size=5)
    with pytest.raises(ValueError, match="ViT presets only"):
        build_backbone("convnet-s", patch_size=4)
    with pytest.raises(ValueError, match="in_chans=0"):
        build_backbone("resnet18", in_chans=0)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_two_builds_share_no_parameter(name):
    a, b = build_backbone(name), build_backbone(name)
    ptrs_a = {t.data_ptr() for t in list(a.parameters()) + list(a.buffers()) if t.numel()}
    ptrs_b = {t.data_ptr() for t in list(b.parameters()) + list(b.buffers()) if t.numel()}
    assert not ptrs_a & ptrs_b
    with torch.no_grad():
        next(a.parameters()).add_(1.0)
    assert not torch.equal(next(a.parameters()), next(b.parameters()))


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    net = build_backbone(name).train()
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    net(x).pow(2).sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    first = net.model.conv1 if name in CONVNETS else net.model.patch_embed.proj
    assert first.weight.grad.abs().sum() > 0  # the loss reaches the very first layer
    assert x.grad.abs().sum() > 0


def test_resnet18_is_timm_resnet18_with_the_cifar_stem():
    ours = build_backbone("resnet18").model.state_dict()
    ref = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    assert ours.keys() == ref.keys()
    differing = {k for k in ours if ours[k].shape != ref[k].shape}
    assert differing == {"conv1.weight"}
    assert ours["conv1.weight"].shape == (64, 3, 3, 3) and ref["conv1.weight"].shape == (64, 3, 7, 7)


def test_parameter_counts_match_the_documented_table():
    counts = {n: sum(p.numel() for p in build_backbone(n).parameters()) for n in BACKBONE_NAMES}
    assert counts == {"convnet-s": 1_238_656, "resnet18": 11_168_832, "vit-nano": 808_064, "vit-tiny": 5_360_832}


def test_building_a_feature_pyramid_leaves_the_backbone_as_it_was():
    """The pyramid probes the stage shapes with a zero image: in eval mode, so BatchNorm's statistics stay put."""
    from vfm_lab.backbones import FeaturePyramid

    net = build_backbone("convnet-s")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pyramid = FeaturePyramid(net, 16)
    assert (pyramid.grid, pyramid.stride) == (8, 4.0) and net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
