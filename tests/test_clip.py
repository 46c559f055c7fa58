"""Chapter 02 (language supervision): losses against references, the towers, zero-shot, retrieval,
a learning test, the locked MiniLM tower, and a real two-process run of the gathered negatives."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from types import SimpleNamespace

import numpy as np
from torch import nn

from tests.margins import above
from tests.test_distributed import ROOT, torchrun
from tests.test_real_data import DEBIAN_FASHION, write_idx
from tests.toy import one_training_step
from vfm_lab.backbones import build_backbone
from vfm_lab.cli import expand_grid, plan_runs
from vfm_lab.config import ClipConfig, ConfigError
from vfm_lab.data import DataMissingError, load
from vfm_lab.data.icons import ICON_SETS
from vfm_lab.engine import fit
from vfm_lab.evaluate import retrieval_recall
from vfm_lab.jobs import (build_clip, clip_metrics, fashion_zero_shot, format_table, icon_sets, shapes_templates,
                          table_row)
from vfm_lab.methods.clip import (MAX_LOGIT_SCALE, TEMPLATES, ClipModel, embed_images, embed_texts,
                                  symmetric_infonce, tokenize, zero_shot_predict)


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def small_model(captions=("a red circle", "a blue square", "a green star", "a white heart"), **kw):
    torch.manual_seed(0)
    return ClipModel(build_backbone("convnet-s", 3, 16), list(captions), embed_dim=16, **kw)


# ---- the losses against references -----------------------------------------------------------
def clip_pseudocode(I_e, T_e, t):
    """CLIP paper, fig. 3 (numpy-like pseudo-code), re-typed: I_e, T_e already L2-normalised."""
    logits = I_e @ T_e.T * math.exp(t)
    labels = torch.arange(len(I_e))
    loss_i = F.cross_entropy(logits, labels)  # cross_entropy_loss(logits, labels, axis=0)
    loss_t = F.cross_entropy(logits.T, labels)  # axis=1
    return (loss_i + loss_t) / 2


def siglip_pseudocode(img_emb, txt_emb, t_prime, b):
    """SigLIP paper, algorithm 1, re-typed: t = exp(t'), labels 2 * eye(n) - ones(n)."""
    n = len(img_emb)
    logits = img_emb @ txt_emb.T * math.exp(t_prime) + b
    labels = 2 * torch.eye(n) - torch.ones(n)
    return -F.logsigmoid(labels * logits).sum() / n


@pytest.mark.parametrize("batch,dim,t", [(4, 8, math.log(1 / 0.07)), (16, 32, 0.0), (33, 5, math.log(100))])
def test_symmetric_infonce_matches_open_clip_and_the_paper(batch, dim, t):
    img, txt = unit(batch, dim, seed=batch), unit(batch, dim, seed=batch + 1)
    scale = torch.tensor(t).exp()
    ours = symmetric_infonce(img, txt, scale)
    torch.testing.assert_close(ours, ClipLoss()(img, txt, scale))
    torch.testing.assert_close(ours, clip_pseudocode(img, txt, t))


@pytest.mark.parametrize("batch,t_prime,b", [(4, math.log(10), -10.0), (12, 1.0, 0.5)])
def test_open_clip_siglip_loss_matches_the_paper(batch, t_prime, b):
    img, txt = unit(batch, 16, seed=3), unit(batch, 16, seed=4)
    ours = SigLipLoss()(img, txt, torch.tensor(t_prime).exp(), torch.tensor(b))
    torch.testing.assert_close(ours, siglip_pseudocode(img, txt, t_prime, b))


def test_the_model_loss_is_the_library_loss_on_its_own_embeddings():
    model = small_model()
    batch = {"image": torch.rand(4, 3, 16, 16), "index": torch.arange(4)}
    model.eval()  # no augmentation
    out = model(batch)
    img = model.encode_image(batch["image"])
    txt = model.encode_text(["a red circle", "a blue square", "a green star", "a white heart"])
    torch.testing.assert_close(out["loss"], symmetric_infonce(img, txt, model.logit_scale.exp()))
    assert out["temperature"].item() == pytest.approx(0.07)


# ---- towers, shapes, zero-shot, retrieval ---------------------------------------------------
def test_tokenize_shapes_start_end_and_truncation():
    tokens = tokenize(["a red circle", "a " * 50 + "circle"], context_length=12)
    assert tokens.shape == (2, 12) and tokens.dtype == torch.long
    sot, eot = 49406, 49407
    assert tokens[0, 0] == sot and tokens[0, 4] == eot and (tokens[0, 5:] == 0).all()
    assert tokens[1, -1] == eot  # cut, still ends the text


def test_embeddings_are_unit_length_and_gradients_reach_every_part():
    model = small_model(loss="siglip")
    out = model({"image": torch.rand(4, 3, 16, 16), "index": torch.tensor([3, 2, 1, 0])})
    assert set(out) == {"loss", "temperature", "bias"} and out["bias"].item() == -10.0
    out["loss"].backward()
    for name in ("logit_scale", "logit_bias", "image_proj.weight", "text.token_embedding.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert next(model.backbone.parameters()).grad.abs().sum() > 0
    emb = model.encode_text(["a", "b", "c"])
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))


def test_the_full_preset_builds_its_towers_and_takes_a_step():
    cfg = ClipConfig.from_params(scale="full")
    train = load("shapes", "train", n=8, image_size=cfg.image_size)
    model = build_clip(cfg, train)
    assert (model.backbone.name, model.encode_text(["a red star"]).shape) == ("resnet18", (1, 256))
    one_training_step(model, train)


def test_temperature_is_clipped_at_one_hundredth():
    model = small_model()
    model.logit_scale.data.fill_(10.0)
    model.after_step(0, 1)
    assert model.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)


def test_zero_shot_classifier_ensembles_prompts():
    model = small_model()
    w = model.classifier(["circle", "square"], templates=("a {}", "a big {}"))
    assert w.shape == (2, 16)
    by_hand = F.normalize(model.encode_text(["a circle", "a big circle"]).mean(0), dim=0)
    torch.testing.assert_close(w[0], by_hand)
    assert zero_shot_predict(torch.cat([w, -w]), w).tolist() == [0, 1, 1, 0]


def test_retrieval_recall_counts_the_rank_of_the_partner():
    q = torch.eye(5)
    g = torch.eye(5)[[0, 2, 1, 3, 4]]  # items 1 and 2 swapped
    r = retrieval_recall(q, g, ks=(1, 2))
    assert r == pytest.approx({"R@1": 0.6, "R@2": 0.6})
    assert retrieval_recall(q, torch.eye(5), ks=(1,)) == {"R@1": 1.0}


@pytest.mark.parametrize("kw,match", [(dict(loss="infonce"), "loss='infonce'"),
                                      (dict(text_tower="bert"), "text_tower='bert'"),
                                      (dict(init_temperature=0.0), "init_temperature")])
def test_bad_arguments_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        small_model(**kw)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="captions"):
        ClipModel(build_backbone("convnet-s", 3, 16), None)
    with pytest.raises(ValueError, match="one \\{\\}"):
        small_model().classifier(["circle"], templates=("no placeholder",))
    with pytest.raises(ValueError, match="non-empty list"):
        tokenize("a string, not a list")
    with pytest.raises(ValueError, match="row i matching"):
        retrieval_recall(torch.eye(3), torch.eye(4))
    with pytest.raises(ConfigError, match="choose one of 'clip', 'siglip'"):
        ClipConfig.from_params(loss="contrastive")


# ---- learning ---------------------------------------------------------------------------------
@pytest.mark.learning
@pytest.mark.slow
def test_a_short_clip_run_aligns_images_and_captions(tmp_path):
    """50 steps on 640 shapes pairs, in fp32: text->image retrieval on 200 unseen pairs beats the untrained
    model and chance (R@10 = 0.05) several times over."""
    cfg = ClipConfig.from_params(scale="smoke", n_train=640, n_test=200, batch_size=64, epochs=5, lr=2e-3,
                                 out_dir=str(tmp_path), device="cpu", precision="fp32")
    train, test = load("shapes", "train", n=640), load("shapes", "test", n=200)
    torch.manual_seed(0)
    model = build_clip(cfg, train)
    before = clip_metrics(model, test)
    run = fit(model, train, out_dir=tmp_path / "clip", progress=False, **cfg.train_kwargs())
    after = clip_metrics(model, test)
    # measured under the kernels and threads of `make test-kernels`: a fall of 1.67-1.68, R@10 0.38-0.40 against 0.15
    above("clip: loss fall over the run", run.history[0]["loss"] - run.history[-1]["loss"], 0.5)
    above("clip: text-to-image R@10", after["t2i_R@10"], max(2 * before["t2i_R@10"], 3 * 10 / len(test)))


# ---- the locked pretrained text tower ----------------------------------------------------------
def test_locked_minilm_text_tower_trains_only_its_projection():
    model = small_model(text_tower="minilm-locked")
    assert model.text_inputs.shape == (4, 384)
    torch.testing.assert_close(model.text_inputs.norm(dim=1), torch.ones(4))
    names = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("text")}
    assert names == {"text.weight", "text.bias"}  # the projection; MiniLM itself is not a parameter
    raw = model.prepare_text(["a red circle", "a crimson round disc", "a tax return form"])
    assert raw[0] @ raw[1] > raw[0] @ raw[2]  # it knows what words mean before any training
    model({"image": torch.rand(4, 3, 16, 16), "index": torch.arange(4)})["loss"].backward()
    assert model.text.weight.grad.abs().sum() > 0


# ---- many processes -------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_gather_negatives_with_gradients(tmp_path):
    proc = torchrun([str(ROOT / "tests" / "ddp_clip.py"), str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in reports:
        assert r["world"] == 2
        for variant in ("clip", "clip_local", "siglip"):
            assert r[f"{variant}_loss_err"] < 1e-5, (variant, r)
            assert r[f"{variant}_grad_err"] < 1e-6, (variant, r)
    assert reports[0]["image_proj"] == reports[1]["image_proj"]

    data = load("shapes", "train", n=64, image_size=16)  # one process, the global batch of 2 x 16
    torch.manual_seed(0)
    single = ClipModel(build_backbone("vit-nano", 3, 16), data.captions, embed_dim=16)
    fit(single, data, epochs=1, batch_size=32, lr=1e-3, weight_decay=0.0, device="cpu", precision="fp32",
        progress=False)
    torch.testing.assert_close(torch.tensor(reports[0]["image_proj"]), single.image_proj.weight.detach().flatten(),
                               rtol=1e-4, atol=1e-5)
    assert reports[0]["logit_scale"] == pytest.approx(single.logit_scale.item(), abs=1e-5)


def test_metrics_have_chance_levels_and_shapes_templates():
    model = small_model()
    test = load("shapes", "test", n=16, image_size=16)
    heldout = load("shapes", "test", n=16, image_size=16, holdout=True)
    m = clip_metrics(model, test, heldout)
    assert m["zs_combo_chance"] == 1 / 64 and m["zs_heldout_chance"] == 1 / 8
    assert m["retrieval_chance_R@1"] == 1 / 16
    accuracies = [k for k in m if k.startswith("zs_") and k.endswith("_acc")]  # the notebooks print each with its chance
    assert "zs_prompt_acc" in accuracies and all(k.replace("_acc", "_chance") in m for k in accuracies)
    assert all(0.0 <= v <= 1.0 for v in m.values())
    assert len(shapes_templates()) == 15 and len(shapes_templates(colours=True)) == 120
    assert all(t.count("{}") == 1 for t in shapes_templates(colours=True))
    assert embed_images(model, test.images).shape == embed_texts(model, test.captions).shape == (16, 16)


# ---- Fashion-MNIST zero-shot, the icon sets, the comparison tables, the batch sweep ---------------
class GreyLevelModel(nn.Module):
    """A stand-in for a trained CLIP that embeds an image as the one-hot of its grey level (0, 25, ..., 225
    after inversion: class y) and class k of the prompts as the one-hot k: perfect on the fake data below
    exactly when the images are inverted and the labels line up with the prompt names."""

    def __init__(self, size: int = 16):
        super().__init__()
        self.backbone = SimpleNamespace(image_size=size, in_chans=3)
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.names = None

    def encode_image(self, x):  # (B, 3, size, size) in [0, 1]
        assert x.shape[1:] == (3, self.backbone.image_size, self.backbone.image_size)
        return F.one_hot((x.mean((1, 2, 3)) * 255 / 25).round().long().clamp(0, 9), 10).float()  # (B, 10)

    def classifier(self, names, templates):
        assert templates == TEMPLATES
        self.names = list(names)
        return torch.eye(len(names))  # (K, K)


def test_fashion_zero_shot_inverts_names_the_classes_and_scores_against_chance(tmp_path):
    labels = np.arange(30, dtype=np.uint8) % 10
    images = np.repeat((255 - 25 * labels)[:, None, None], 28, 1).repeat(28, 2)  # (30, 28, 28): light = class 0
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    model = GreyLevelModel()
    out = fashion_zero_shot(model, root=str(tmp_path))
    assert out == {"fmnist_zs_acc": 1.0, "fmnist_zs_chance": 0.1}
    assert model.names[0] == "t-shirt or top" and model.names[9] == "ankle boot" and len(model.names) == 10
    assert fashion_zero_shot(model, invert=False, root=str(tmp_path))["fmnist_zs_acc"] == pytest.approx(0.1)
    assert fashion_zero_shot(model, n=10, root=str(tmp_path))["fmnist_zs_acc"] == 1.0
    with pytest.raises(DataMissingError, match="fetch.sh fashion-mnist"):
        fashion_zero_shot(model, root=str(tmp_path / "nowhere"))


@pytest.mark.skipif(not (DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_zero_shot_on_the_real_test_set():
    """The 10,000 real test images at their own 28 px, in file order, through the grey-level stand-in: its
    accuracy is the share of images whose inverted mean grey level, in steps of 25, is their label, computed
    here from the raw IDX bytes (Debian's dataset-fashion-mnist; `make test` installs it)."""
    import gzip

    folder = DEBIAN_FASHION
    raw = lambda name, skip: np.frombuffer(gzip.open(folder / name).read()[skip:], np.uint8)
    images, labels = raw("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28 * 28), raw("t10k-labels-idx1-ubyte.gz", 8)
    level = np.clip(np.round((255 - images.astype(np.float64)).mean(1) / 25), 0, 9)
    model = GreyLevelModel(size=28)
    out = fashion_zero_shot(model, root=str(folder))
    assert out == {"fmnist_zs_acc": pytest.approx(float((level == labels).mean()), abs=1e-6), "fmnist_zs_chance": 0.1}
    assert model.names == ["t-shirt or top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                           "bag", "ankle boot"]


def test_icon_sets_and_tables():
    assert icon_sets(ClipConfig.from_params(icon_dataset="all")) == ICON_SETS
    assert icon_sets(ClipConfig.from_params(icon_dataset="none")) == ()
    assert icon_sets(ClipConfig.from_params(icon_dataset="openmoji")) == ("openmoji",)
    with pytest.raises(ConfigError, match="'all'"):
        ClipConfig.from_params(icon_dataset="everything")
    rows = {"clip": table_row({"t2i_R@1": 0.5, "zs_heldout_acc": 0.25, "zs_heldout_chance": 0.125, "loss": 1.0}),
            "siglip": {"t2i_R@1": 0.375}}
    assert rows["clip"] == {"t2i_R@1": 0.5, "zs_heldout_acc": 0.25, "zs_heldout_chance": 0.125}
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["clip", "siglip"] and lines[1].split() == ["t2i_R@1", "0.5", "0.375"]
    assert lines[3].split() == ["zs_heldout_chance", "0.125"]


def test_the_batch_size_sweep_plans_one_valid_run_per_batch_size(tmp_path):
    """`vfm-lab run 02 --grid sweeps/02_clip_batch.yaml -p scale=smoke` (a real run of the grid takes
    minutes: the notebook once per batch size); here its plan, validated as the runner does first."""
    grid = expand_grid(ROOT / "sweeps" / "02_clip_batch.yaml")
    plans = plan_runs(["02_clip"], {"scale": "smoke"}, grid, tmp_path)
    sizes = [params["batch_size"] for _, params, _ in plans]
    assert len(sizes) >= 2 and sizes == sorted(set(sizes))
    assert len({out for _, _, out in plans}) == len(plans)
    assert all(f"batch_size={b}" in out.name for b, (_, _, out) in zip(sizes, plans))
    assert all(b <= ClipConfig.from_params(scale="smoke").n_train for b in sizes)
