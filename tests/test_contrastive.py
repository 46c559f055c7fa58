"""Contrastive methods (chapter 03): NT-Xent, MoCo's InfoNCE with a queue and MoCo v3's ``ctr``
against the papers' pseudo-code re-typed here, the queue and the momentum encoder, bad input,
a real two-process run (per-rank labels, loss and gradients equal one process on the
concatenated batch), and a short SimCLR run that must get better at its pretext task on unseen images."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.margins import above
from tests.test_distributed import ROOT, torchrun
from tests.test_real_data import write_fashion
from tests.toy import one_training_step, short_ssl_run
from vfm_lab import augment as A
from vfm_lab.backbones import build_backbone
from vfm_lab.config import ContrastiveConfig
from vfm_lab.data import load, real
from vfm_lab.engine import fit
from vfm_lab.jobs import build_contrastive, train_contrastive
from vfm_lab.methods.dino import DINOLoss
from vfm_lab.methods.moco import InfoNCELoss, MoCoV2, MoCoV3, MoCoV3Loss
from vfm_lab.methods.simclr import NTXentLoss, SimCLR, projection_mlp, two_views

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- references: the papers' pseudo-code, one sample at a time in float64 -------------------
def ntxent_reference(z1, z2, tau):
    """SimCLR (Chen et al., 2020, arXiv:2002.05709) Algorithm 1: views interleaved as z_{2k-1}, z_{2k};
    s_ij = z_i.z_j / (|z_i||z_j|); l(i, j) = -log exp(s_ij / τ) / Σ_{k ≠ i} exp(s_ik / τ);
    L = 1/(2N) Σ_k [l(2k-1, 2k) + l(2k, 2k-1)]."""
    z = [v for pair in zip(z1.double(), z2.double()) for v in pair]  # z_1, z_2, ..., z_2N (0-based here)
    s = [[float(a @ b / (a.norm() * b.norm())) for b in z] for a in z]

    def l(i, j):
        return -math.log(math.exp(s[i][j] / tau) / sum(math.exp(s[i][k] / tau) for k in range(len(z)) if k != i))

    n = len(z1)
    return sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def moco_reference(q, k, queue, tau):
    """MoCo (He et al., 2019, arXiv:1911.05722) Algorithm 1, on normalised q, k and queue:
    l_pos = q.k, l_neg = q queue^T, loss = CE([l_pos, l_neg] / τ, 0)."""
    total = 0.0
    for qi, ki in zip(F.normalize(q.double(), dim=1), F.normalize(k.double(), dim=1)):
        pos = math.exp(float(qi @ ki) / tau)
        neg = sum(math.exp(float(qi @ kj) / tau) for kj in F.normalize(queue.double(), dim=1))
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def ctr_reference(q, k, tau):
    """MoCo v3 (Chen, Xie and He, 2021, arXiv:2104.02057) Algorithm 1: logits = q k^T, labels = range(N),
    2τ CE(logits / τ, labels), on normalised q and k (as ``moco/builder.py``)."""
    q, k = F.normalize(q.double(), dim=1), F.normalize(k.double(), dim=1)
    total = 0.0
    for i in range(len(q)):
        row = [float(q[i] @ k[j]) / tau for j in range(len(k))]
        total += -(row[i] - math.log(sum(math.exp(r) for r in row)))
    return 2 * tau * total / len(q)


# ---- NT-Xent -----------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("b, d", [(1, 4), (3, 8), (7, 16)])
def test_ntxent_matches_simclr_algorithm_1(tau, b, d):
    z1, z2 = randn(b, b, d), randn(b + 100, b, d)
    assert NTXentLoss(tau)(z1, z2).item() == pytest.approx(ntxent_reference(z1, z2, tau), rel=1e-5, abs=1e-6)


def test_ntxent_gradient_matches_a_masked_logsumexp_in_float64():
    z1, z2 = randn(0, 6, 8).requires_grad_(), randn(1, 6, 8).requires_grad_()
    NTXentLoss(0.2)(z1, z2).backward()
    r1, r2 = z1.detach().double().requires_grad_(), z2.detach().double().requires_grad_()
    z = F.normalize(torch.cat([r1, r2]), dim=1)  # (2B, D)
    sim = (z @ z.T / 0.2).masked_fill(torch.eye(12, dtype=torch.bool), -math.inf)  # (2B, 2B) no self-pairs
    pos = torch.cat([torch.arange(6, 12), torch.arange(6)])
    (sim.logsumexp(1) - sim[torch.arange(12), pos]).mean().backward()
    torch.testing.assert_close(z1.grad, r1.grad.float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(z2.grad, r2.grad.float(), rtol=1e-4, atol=1e-6)


def test_ntxent_properties():
    z1, z2 = randn(0, 8, 16), randn(1, 8, 16)
    loss = NTXentLoss(0.5)
    torch.testing.assert_close(loss(3 * z1, 0.5 * z2), loss(z1, z2))  # cosine: norms do not matter
    torch.testing.assert_close(loss(z2, z1), loss(z1, z2))  # symmetric in the views
    assert loss(z1, z1).item() < loss(z1, z2).item()  # identical views are easier
    assert NTXentLoss.targets(3, 0, 1).tolist() == [3, 4, 5, 0, 1, 2]
    # a perfect, well-separated embedding: the loss goes to its floor as τ shrinks
    eye = torch.eye(8)
    assert NTXentLoss(0.01)(eye, eye).item() < 1e-6


def test_ntxent_matches_lightly():
    from lightly import loss as lightly_loss  # the test extra installs it: a reference, not an option
    z1, z2 = randn(0, 16, 32), randn(1, 16, 32)
    for tau in (0.1, 0.5):
        torch.testing.assert_close(NTXentLoss(tau)(z1, z2), lightly_loss.NTXentLoss(temperature=tau)(z1, z2))


@pytest.mark.parametrize("bad", [dict(z1=randn(0, 4, 8), z2=randn(1, 5, 8)), dict(z1=randn(0, 8), z2=randn(1, 8))])
def test_ntxent_refuses_mismatched_views(bad):
    with pytest.raises(ValueError, match="two views"):
        NTXentLoss()(**bad)


# ---- MoCo losses -----------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("queue_size", [1, 16, 64])
def test_infonce_matches_moco_algorithm_1(tau, queue_size):
    q, k, queue = randn(0, 5, 8), randn(1, 5, 8), randn(2, queue_size, 8)
    assert InfoNCELoss(tau)(q, k, queue).item() == pytest.approx(moco_reference(q, k, queue, tau), rel=1e-5)


@pytest.mark.parametrize("tau", [0.1, 0.2, 1.0])
@pytest.mark.parametrize("b", [2, 9])
def test_mocov3_ctr_matches_algorithm_1(tau, b):
    q, k = randn(b, b, 8), randn(b + 1, b, 8)
    assert MoCoV3Loss(tau)(q, k).item() == pytest.approx(ctr_reference(q, k, tau), rel=1e-5)


def test_mocov3_keys_get_no_gradient():
    q, k = randn(0, 4, 8).requires_grad_(), randn(1, 4, 8).requires_grad_()
    MoCoV3Loss()(q, k).backward()
    assert q.grad is not None and k.grad is None


@pytest.mark.parametrize("make", [lambda: InfoNCELoss(0.0), lambda: MoCoV3Loss(-1.0), lambda: NTXentLoss(0.0),
                                  lambda: projection_mlp(4, 4, 4, 0), lambda: two_views([A.none(8)] * 3)])
def test_bad_hyper_parameters_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="queue"):
        InfoNCELoss()(randn(0, 4, 8), randn(1, 4, 8), randn(2, 10, 7))
    with pytest.raises(ValueError, match="queries"):
        MoCoV3Loss()(randn(0, 4, 8), randn(1, 3, 8))


# ---- the methods: queue, momentum encoder, outputs ------------------------------------------
def small_backbone(size=16):
    torch.manual_seed(0)
    return build_backbone("convnet-s", 3, size)


def test_moco_v2_queue_is_a_fifo_of_normalised_keys():
    moco = MoCoV2(small_backbone(), proj_dim=4, hidden_dim=8, queue_size=10)
    keys = [randn(i, 4, 4) for i in range(3)]  # three batches of 4 keys: 12 > 10 wraps around
    for k in keys:
        moco.enqueue(k)
    expected = F.normalize(torch.cat(keys), dim=1)  # (12, 4)
    torch.testing.assert_close(moco.queue[:2], expected[10:])  # the newest two overwrote the oldest
    torch.testing.assert_close(moco.queue[2:], expected[2:10])
    assert int(moco.queue_ptr) == 2
    moco.eval()  # evaluation does not touch the queue
    before = moco.queue.clone()
    moco({"image": torch.rand(4, 3, 16, 16)})
    assert torch.equal(moco.queue, before)
    many = randn(3, 12, 4)  # one batch longer than the queue: its last 10 keys, oldest first
    moco.enqueue(many)
    torch.testing.assert_close(torch.roll(moco.queue, -int(moco.queue_ptr), 0), F.normalize(many[2:], dim=1))
    with pytest.raises(ValueError, match="queue_size"):
        MoCoV2(small_backbone(), queue_size=0)


def test_symmetric_moco_v2_averages_both_directions_against_one_queue_and_enqueues_both_views():
    x1_of, x2_of = (lambda x: x), (lambda x: x.flip(-1))  # two fixed views
    moco = MoCoV2(small_backbone(), proj_dim=4, hidden_dim=8, queue_size=32, symmetric=True, augment=(x1_of, x2_of))
    x = torch.rand(6, 3, 16, 16)
    queue = moco.queue.clone()
    loss = moco({"image": x})["loss"]
    x1, x2 = x1_of(x), x2_of(x)
    k1, k2 = moco.keys(x1), moco.keys(x2)  # train-mode BN: the same batch gives the same keys
    one_way = moco.criterion(moco.embed(x1), k2, queue)
    expected = (one_way + moco.criterion(moco.embed(x2), k1, queue)) / 2
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, one_way)
    torch.testing.assert_close(moco.queue[:12], F.normalize(torch.cat([k1, k2]), dim=1))
    assert int(moco.queue_ptr) == 12
    moco.symmetric = False  # the paper's loss: view 1 asks, only view 2's keys join the queue
    queue = moco.queue.clone()
    torch.testing.assert_close(moco({"image": x})["loss"], moco.criterion(moco.embed(x1), moco.keys(x2), queue))
    assert int(moco.queue_ptr) == 18


@pytest.mark.parametrize("make", [
    lambda b: MoCoV2(b, proj_dim=8, hidden_dim=16, queue_size=64, momentum=0.9),
    lambda b: MoCoV3(b, proj_dim=8, hidden_dim=16, proj_layers=2, momentum=0.9)])
def test_momentum_encoder_follows_the_query_encoder_by_ema(make):
    model = make(small_backbone())
    assert all(not p.requires_grad for p in model.key_backbone.parameters())
    out = model({"image": torch.rand(8, 3, 16, 16)})
    out["loss"].backward()
    assert all(p.grad is None for p in [*model.key_backbone.parameters(), *model.key_projector.parameters()])
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    key_before = [p.clone() for p in model.key_backbone.parameters()]
    model.after_step(0, total_steps=10)
    m = model.momentum
    for kb, k, q in zip(key_before, model.key_backbone.parameters(), model.backbone.parameters()):
        torch.testing.assert_close(k, m * kb + (1 - m) * q)  # MoCo eq. 2
    assert set(out) >= {"loss", "z_std", "momentum"} and out["z_std"].ndim == 0


def test_mocov3_momentum_rises_from_base_to_one_on_a_cosine():
    model = MoCoV3(small_backbone(), proj_dim=8, hidden_dim=16, momentum=0.99)
    ms = []
    for step in range(100):
        model.after_step(step, 100)
        ms.append(model.momentum)
    assert ms[0] == pytest.approx(0.99) and ms == sorted(ms) and ms[-1] > 0.9999
    assert ms[50] == pytest.approx(1 - 0.01 * (1 + math.cos(math.pi * 0.5)) / 2)
    with pytest.raises(ValueError, match="momentum"):
        MoCoV3(small_backbone(), momentum=1.5)


def test_methods_train_under_the_engine_with_bf16_autocast_and_take_the_given_views():
    data = load("shapes", "train", n=64, image_size=16)
    seen = []

    def spy(x):
        seen.append(x.dtype)
        return A.none(16)(x)

    for make in (lambda b: SimCLR(b, proj_dim=8, augment=spy), lambda b: MoCoV2(b, proj_dim=8, queue_size=32),
                 lambda b: MoCoV3(b, proj_dim=8, hidden_dim=16)):
        model = make(small_backbone())
        run = fit(model, data, epochs=1, batch_size=16, lr=1e-3, device="cpu", precision="bf16", progress=False,
                  log_every=1)
        assert run.steps == 4 and all(math.isfinite(r["loss"]) for r in run.history)
        assert model.embed(torch.rand(3, 3, 16, 16)).shape == (3, 8)
    assert len(seen) == 2 * 4  # SimCLR made its two views of each of the 4 batches with the given recipe


# ---- many processes ----------------------------------------------------------------------
def test_two_processes_use_per_rank_labels_and_match_one_process(tmp_path):
    proc = torchrun([str(ROOT / "tests" / "ddp_ssl.py"), str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    B, K, world = 4, 5, 2
    # (1) the positives of rank r sit at r * B + i: among [z1 of all ranks; z2 of all ranks] for NT-Xent
    assert reports[0]["ntxent_targets"] == [8, 9, 10, 11, 0, 1, 2, 3]
    assert reports[1]["ntxent_targets"] == [12, 13, 14, 15, 4, 5, 6, 7]
    assert reports[0]["mocov3_labels"] == [0, 1, 2, 3] and reports[1]["mocov3_labels"] == [4, 5, 6, 7]

    # (2) NT-Xent on the concatenated batch in one process: the same loss; each rank's gathered
    # gradient is the sum over ranks' losses, i.e. world x the gradient of the mean loss
    z1, z2 = randn(1, world * B, K).requires_grad_(), randn(2, world * B, K).requires_grad_()
    loss = NTXentLoss(0.3)(z1, z2)
    loss.backward()
    for r, rep in enumerate(reports):
        assert rep["ntxent_loss"] == pytest.approx(loss.item(), rel=1e-5)
        rows = slice(r * B, (r + 1) * B)
        torch.testing.assert_close(torch.tensor(rep["ntxent_grad_z1"]) / world, z1.grad[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.tensor(rep["ntxent_grad_z2"]) / world, z2.grad[rows], rtol=1e-4, atol=1e-6)

    # (3) a DDP encoder's averaged gradients equal one process's on the concatenated batch
    x1, x2 = randn(3, world * B, 6), randn(4, world * B, 6)
    for name in ("ntxent", "mocov3"):
        torch.manual_seed(0)
        enc = nn.Linear(6, K)
        q1, q2 = enc(x1), enc(x2)
        if name == "ntxent":
            loss = NTXentLoss(0.3)(q1, q2)
        else:
            torch.manual_seed(0)
            keys = nn.Linear(6, K)
            with torch.no_grad():
                k1, k2 = keys(x1), keys(x2)
            loss = MoCoV3Loss(0.2)(q1, k2) + MoCoV3Loss(0.2)(q2, k1)
        loss.backward()
        for rep in reports:
            w, b = rep[f"{name}_ddp_grad"]
            torch.testing.assert_close(torch.tensor(w), enc.weight.grad, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(torch.tensor(b), enc.bias.grad, rtol=1e-4, atol=1e-6)

    # (4) MoCo v2: both ranks enqueue the global batch of keys, rank order
    keys = F.normalize(randn(5, world * B, K), dim=1)
    for rep in reports:
        assert rep["queue_ptr"] == world * B
        torch.testing.assert_close(torch.tensor(rep["queue_head"]), keys)

    # (5) DINO's center is the global batch's mean teacher score on both ranks, as in one process
    # (with per-rank means the two centers would differ); the mean loss is the one-process loss
    dino = DINOLoss(K, center_momentum=0.5)
    loss = dino(randn(6, 4, world * B, K), randn(7, 2, world * B, K))
    for rep in reports:
        torch.testing.assert_close(torch.tensor(rep["dino_center"]), dino.center, rtol=1e-5, atol=1e-6)
        assert rep["dino_loss"] == pytest.approx(loss.item(), rel=1e-5)


# ---- learning ------------------------------------------------------------------------------
def test_the_chapter_views_are_a_flip_and_a_tone_curve_unless_the_config_asks_otherwise():
    views = build_contrastive(ContrastiveConfig.from_params(scale="smoke"), build_backbone("convnet-s", 3, 32)).view1
    assert (views.crop_scale, views.tone_p, views.jitter_p, views.grayscale_p) == ((1.0, 1.0), 1.0, 0.0, 0.0)
    cfg = ContrastiveConfig.from_params(scale="smoke", crop_min=0.3, jitter_strength=1.0, tone_p=0.5)
    views = build_contrastive(cfg, build_backbone("convnet-s", 3, 32), "moco_v3").view1
    assert (views.crop_scale, views.tone_p, views.jitter_p, views.hue) == ((0.3, 1.0), 0.5, 0.8, 0.2)


@pytest.mark.parametrize("name", ["simclr", "moco_v2", "moco_v3"])
def test_the_full_preset_takes_simclrs_cifar_views_and_its_sizes_fit(name):
    cfg = ContrastiveConfig.from_params(scale="full")
    model = build_contrastive(cfg, build_backbone(cfg.backbone, 3, cfg.image_size), name)
    assert (model.view1.crop_scale, model.view1.tone_p, model.view1.jitter_p, model.view1.hue) == \
        ((0.08, 1.0), 0.0, 0.8, 0.1)
    one_training_step(model, load("shapes", "train", n=8, image_size=cfg.image_size))


def test_each_moco_takes_its_own_key_encoder_momentum():
    cfg = ContrastiveConfig.from_params(scale="smoke", momentum=0.95, v3_momentum=0.8)
    assert build_contrastive(cfg, build_backbone("convnet-s", 3, 32), "moco_v2").momentum == 0.95
    assert build_contrastive(cfg, build_backbone("convnet-s", 3, 32), "moco_v3").momentum == 0.8
    for symmetric in (True, False):
        cfg = ContrastiveConfig.from_params(scale="smoke", symmetric=symmetric)
        assert build_contrastive(cfg, build_backbone("convnet-s", 3, 32), "moco_v2").symmetric is symmetric


@pytest.mark.learning
@pytest.mark.slow
@pytest.mark.parametrize("name", ["simclr", "moco_v2", "moco_v3"])
def test_a_short_run_beats_the_random_backbone(name):
    """SimCLR, MoCo v2 and v3 with the paper's views (crops, colour jitter) on 1,024 shapes scenes at 16 px for
    96 steps: the linear probes of the frozen backbone on the position, colour and size of the main object rise
    above the same network at initialisation (as BYOL's test in test_non_contrastive.py). Those are the easy
    features; the shape class needs the chapter's tone-curve views and minutes of training
    (`vfm-lab train 03 -p scale=lab`). The three probes gain 0.18-0.33 together under the kernels and threads of
    `make test-kernels`, against a line of 0.06."""
    cfg = ContrastiveConfig.from_params(scale="smoke", queue_size=256, crop_min=0.3, jitter_strength=0.5, tone_p=0.0)
    before, after = short_ssl_run(lambda b: build_contrastive(cfg, b, name, proj_dim=64, hidden_dim=256))
    above(f"{name}: probe gain over position, colour and size", sum(after.values()) - sum(before.values()), 0.06)


def test_the_job_writes_each_method_next_to_the_random_backbone_and_labels(tmp_path, monkeypatch):
    """`vfm-lab train 03` on Fashion-MNIST (its default; here a fixture in the same IDX files, 28 px grey):
    results.json holds the random backbone (`random_init`, the baseline of every number), the method, and the
    supervised reference (chapter 01's recipe on the same images and epochs)."""
    (tmp_path / "fashion-mnist").mkdir()
    write_fashion(tmp_path / "fashion-mnist", n_train=96, n_test=40)
    monkeypatch.setenv("VFM_LAB_DATA", str(tmp_path))
    cfg = ContrastiveConfig.from_params(scale="smoke", n_train=0, n_test=0, epochs=1, batch_size=32, image_size=16,
                                        queue_size=64, out_dir=str(tmp_path / "run"), precision="fp32")
    metrics = train_contrastive(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["dataset"] == "fashion-mnist"
    assert results["simclr"]["knn_acc"] == metrics["simclr"]["knn_acc"] and "erank" in metrics["simclr"]["collapse"]
    for entry in ("random_init", "simclr", "supervised"):
        assert 0.0 <= results[entry]["linear_acc"] <= 1.0 and 0.0 <= results[entry]["knn_acc"] <= 1.0
    assert results["simclr"]["steps"] == 3 and len(results["simclr"]["online_knn"]) == 1  # 96 images, batch 32
    assert results["supervised"]["steps"] == 1  # one epoch at chapter 01's smoke batch of 64


def test_without_fashion_mnist_the_job_falls_back_to_shapes_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VFM_LAB_DATA", raising=False)
    monkeypatch.setattr(real, "SYSTEM_ROOTS", {})
    monkeypatch.setattr(real, "REPO_DATA", tmp_path / "checkout-data")
    cfg = ContrastiveConfig.from_params(scale="smoke", n_train=256, n_test=128, epochs=1, batch_size=64, image_size=16,
                                        queue_size=128, out_dir=str(tmp_path / "run"), precision="fp32")
    assert cfg.dataset == "fashion-mnist"
    train_contrastive(cfg)
    said = capsys.readouterr().out
    assert "data: shapes, because fashion-mnist is not on this machine" in said and "fetch.sh fashion-mnist" in said
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["dataset"] == "shapes"
    for entry in ("random_init", "simclr", "supervised"):
        assert {"shape", "colour"} <= set(results[entry]["probe"]) and 0.0 < results[entry]["linear_acc"] <= 1.0
    assert results["random_init"]["probe"]["colour"] != results["simclr"]["probe"]["colour"]  # trained: another net