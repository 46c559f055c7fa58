"""The collapse monitor against hand-made embeddings, CLS attention against timm's own attention
output, online kNN, and the shared SSL pre-training job end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vfm_lab.backbones import build_backbone
from vfm_lab.config import TourConfig
from vfm_lab.data import load
from vfm_lab.diagnostics import (OnlineKNN, alignment, attention_share, cls_attention, collapse_report,
                                 effective_rank, embedding_std, uniformity)
from vfm_lab.engine import Method
from vfm_lab.jobs import pretrain

G = lambda: torch.Generator().manual_seed(0)


def test_embedding_std_is_one_when_spread_and_zero_when_collapsed():
    spread = torch.randn(8192, 64, generator=G())
    assert embedding_std(spread) == pytest.approx(1.0, abs=0.03)
    assert embedding_std(torch.ones(100, 64)) == pytest.approx(0.0, abs=1e-6)
    # one direction, any positive scale per row: still one point on the sphere
    scales = torch.rand(100, 1, generator=G()) + 0.5
    assert embedding_std(scales * torch.randn(1, 64, generator=G())) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("rank", [1, 3, 10])
def test_effective_rank_counts_the_directions_used(rank):
    g = G()
    z = torch.randn(1024, rank, generator=g) @ torch.randn(rank, 64, generator=g)  # (N, D) of rank `rank`
    assert 1.0 <= effective_rank(z) <= rank + 0.05
    assert effective_rank(torch.randn(8192, 64, generator=g)) > 0.9 * 64  # an isotropic cloud uses them all


def test_alignment_and_uniformity_match_their_definitions():
    g = G()
    z1, z2 = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    assert alignment(z1, z1) == pytest.approx(0.0, abs=1e-6)
    assert alignment(z1, -z1) == pytest.approx(4.0, abs=1e-5)  # antipodal on the unit sphere
    n1, n2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    by_hand = sum((n1[i] - n2[i]).pow(2).sum().item() for i in range(50)) / 50
    assert alignment(z1, z2) == pytest.approx(by_hand, rel=1e-5)
    pairs = [(n1[i] - n1[j]).pow(2).sum() for i in range(50) for j in range(50) if i != j]
    expected = math.log(sum(math.exp(-2 * d.item()) for d in pairs) / len(pairs))
    assert uniformity(z1) == pytest.approx(expected, rel=1e-5)
    assert uniformity(torch.ones(10, 8)) == pytest.approx(0.0, abs=1e-6)  # one point: the worst value


def test_collapse_report_flags_collapse_and_only_collapse():
    g = G()
    healthy = collapse_report(torch.randn(512, 32, generator=g), torch.randn(512, 32, generator=g))
    assert set(healthy) == {"std", "erank", "uniformity", "alignment", "collapsed"} and healthy["collapsed"] == 0.0
    constant = torch.randn(1, 32, generator=g).expand(512, 32) + 1e-4 * torch.randn(512, 32, generator=g)
    assert collapse_report(constant)["collapsed"] == 1.0  # complete collapse: std ~ 0
    one_dim = torch.randn(512, 1, generator=g) * torch.randn(1, 32, generator=g)  # +-one direction: std high
    report = collapse_report(one_dim)
    assert report["std"] > 0.5 and report["erank"] < 1.5 and report["collapsed"] == 1.0  # dimensional collapse
    crowd = torch.randn(1, 64, generator=g).repeat(512, 1)  # 95 % of the images at one point, a few elsewhere
    crowd[:24] = torch.randn(24, 64, generator=g)
    report = collapse_report(crowd)
    assert report["std"] > 0.1 and report["erank"] > 2 and report["uniformity"] > -0.2 and report["collapsed"] == 1.0


@pytest.mark.parametrize("bad", [torch.randn(5), torch.randn(1, 4), torch.randn(2, 3, 4)])
def test_monitor_refuses_what_is_not_a_batch_of_embeddings(bad):
    with pytest.raises(ValueError, match=r"embeddings \(N, D\)"):
        embedding_std(bad)
    with pytest.raises(ValueError, match="two views"):
        alignment(torch.randn(4, 3), torch.randn(5, 3))


def test_cls_attention_reproduces_timms_attention_output():
    """The maps, with the class token's weight on itself, rebuild the class token's attention
    output that timm's (fused) attention computed: sum_j w_j v_j."""
    torch.manual_seed(0)
    vit = build_backbone("vit-nano", 3, 32).eval()
    attn = vit.model.blocks[-1].attn
    seen = {}
    hooks = [attn.register_forward_pre_hook(lambda m, a: seen.__setitem__("tokens", a[0])),
             attn.proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("mixed", a[0]))]
    x = torch.rand(2, 3, 32, 32, generator=G())
    maps = cls_attention(vit, x)  # runs the backbone once more; the hooks keep the last call
    with torch.no_grad():
        vit(x)
    for h in hooks:
        h.remove()
    B, heads, d = 2, attn.num_heads, attn.head_dim
    assert maps.shape == (B, heads, 8, 8) and (maps >= 0).all()
    assert (maps.sum((-1, -2)) < 1).all()  # the rest went to the class token itself
    v = attn.qkv(seen["tokens"]).reshape(B, -1, 3, heads, d)[:, :, 2]  # (B, N, h, d)
    w_cls = 1 - maps.flatten(2).sum(-1)  # (B, h)
    rebuilt = w_cls[..., None] * v[:, 0] + torch.einsum("bhp,bphd->bhd", maps.flatten(2), v[:, 1:])  # (B, h, d)
    torch.testing.assert_close(rebuilt.reshape(B, heads * d), seen["mixed"][:, 0], atol=1e-5, rtol=1e-4)


def test_cls_attention_needs_a_vit():
    with pytest.raises(ValueError, match="needs a ViT backbone.*convnet-s"):
        cls_attention(build_backbone("convnet-s", 3, 32), torch.rand(1, 3, 32, 32))


def test_online_knn_runs_every_n_epochs():
    train, test = load("shapes", "train", n=128, image_size=16), load("shapes", "test", n=64, image_size=16)
    knn = OnlineKNN(build_backbone("convnet-s", 3, 16), train, test, every=2, max_train=100)
    assert len(knn.train) == 100 and knn(0) == {}
    acc = knn(1)["knn_acc"]
    assert 0.0 <= acc <= 1.0
    with pytest.raises(ValueError, match="every=0"):
        OnlineKNN(knn.backbone, train, test, every=0)


class ShapeLabels(Method):
    """A stand-in for an SSL method (the contract: backbone, embed, forward -> loss): labels make it learn fast."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(backbone.embed_dim, 8)

    def embed(self, x):
        return self.backbone(x)

    def forward(self, batch):
        return {"loss": F.cross_entropy(self.head(self.backbone(batch["image"]).float()), batch["label"])}


def test_pretrain_trains_evaluates_monitors_and_writes_results(tmp_path):
    cfg = TourConfig.from_params(scale="smoke", n_train=256, n_test=128, image_size=16, epochs=2, batch_size=64,
                                 out_dir=str(tmp_path), precision="fp32")
    run = pretrain(cfg, ShapeLabels, "labels")
    metrics = run.metrics
    assert isinstance(run.method, ShapeLabels) and len(metrics["online_knn"]) == 2
    assert [row["knn_acc"] for row in run.history if "knn_acc" in row] == metrics["online_knn"]  # the whole history
    assert run.history[-2]["step"] == run.result.steps and any("loss" in row for row in run.history)
    assert {"knn_acc", "linear_acc", "probe", "collapse", "train_seconds"} <= set(metrics)
    assert "colour" in metrics["probe"] and {"std", "erank", "alignment"} <= set(metrics["collapse"])
    assert metrics["collapse"]["collapsed"] == 0.0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["chapter"] == "00_tour" and results["labels"]["knn_acc"] == metrics["knn_acc"]
    assert results["labels"]["collapse"] == metrics["collapse"]
    assert (tmp_path / "labels" / "checkpoint.pt").exists()
    again = pretrain(cfg, ShapeLabels, "labels")  # a rerun resumes the finished run: same backbone, same numbers
    assert again.metrics["knn_acc"] == metrics["knn_acc"] and again.history == run.history


def test_attention_share_is_one_on_the_objects_and_their_area_when_uniform():
    masks = torch.zeros(2, 32, 32, dtype=torch.uint8)
    masks[:, :16, :16] = 1  # a quarter of each image, the top-left 4x4 patches of an 8x8 grid
    on = torch.zeros(2, 3, 8, 8)
    on[:, :, :4, :4] = 1 / 16
    assert torch.allclose(attention_share(on, masks), torch.ones(3))
    assert torch.allclose(attention_share(torch.full((2, 3, 8, 8), 1 / 64), masks), torch.full((3,), 0.25))
    off = torch.zeros(2, 3, 8, 8)
    off[:, :, 4:, 4:] = 1 / 16
    assert torch.allclose(attention_share(off, masks), torch.zeros(3))
    with pytest.raises(ValueError, match="same B"):
        attention_share(on, masks[:1])
