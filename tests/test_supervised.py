"""Label supervision: CosFace against the paper's formula, sampled softmax against the full
softmax, the class sampler's invariants, the Classifier wrapper, attribute-combination
labels, and a tiny real training run that must learn the digits."""
from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vfm_lab.backbones import build_backbone
from vfm_lab.config import SupervisedConfig
from vfm_lab.data import load
from vfm_lab.engine import fit
from vfm_lab.evaluate import predict
from vfm_lab.methods.supervised import (LOSSES, Classifier, CosFaceHead, LinearHead, SampledSoftmaxHead, build_head,
                                        combination_labels)
from tests.margins import above, below
from tests.toy import one_training_step


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py: 10x faster on a busy CPU


def features_and_labels(b=12, d=8, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randint(0, k, (b,), generator=g)  # (B, D), (B,)


def cosface_reference(features, weight, labels, margin, scale):
    """CosFace (Wang et al., 2018, arXiv:1801.09414) eq. 4, one sample at a time in float64:
    L = 1/N sum_i -log( e^{s(cos θ_{y_i,i} - m)} / (e^{s(cos θ_{y_i,i} - m)} + sum_{j != y_i} e^{s cos θ_{j,i}}) ),
    with cos θ_{j,i} = W_j . x_i / (|W_j| |x_i|)."""
    total = 0.0
    for x, y in zip(features.double(), labels.tolist()):
        cos = [float(w @ x / (w.norm() * x.norm())) for w in weight.double()]
        target = math.exp(scale * (cos[y] - margin))
        others = sum(math.exp(scale * c) for j, c in enumerate(cos) if j != y)
        total += -math.log(target / (target + others))
    return total / len(labels)


# ---- CosFace ------------------------------------------------------------------------------
@pytest.mark.parametrize("margin, scale", [(0.0, 1.0), (0.35, 16.0), (0.2, 30.0), (0.5, 64.0), (0.9, 8.0)])
def test_cosface_matches_the_paper(margin, scale):
    f, y = features_and_labels()
    head = CosFaceHead(8, 5, margin=margin, scale=scale)
    expected = cosface_reference(f, head.weight.detach(), y, margin, scale)
    assert head(f, y).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_cosface_without_margin_and_scale_is_cross_entropy_on_cosines():
    f, y = features_and_labels()
    head = CosFaceHead(8, 5, margin=0.0, scale=1.0)
    cos = F.normalize(f, dim=-1) @ F.normalize(head.weight, dim=-1).T  # (B, K)
    assert cos.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(head(f, y), F.cross_entropy(cos, y))
    torch.testing.assert_close(head.logits(f), cos)


def test_cosface_margin_raises_the_loss_and_norms_do_not_matter():
    f, y = features_and_labels()
    head = CosFaceHead(8, 5, margin=0.0, scale=16.0)
    losses = []
    for margin in (0.0, 0.1, 0.35, 0.7):
        head.margin = margin
        losses.append(head(f, y).item())
    assert losses == sorted(losses) and len(set(losses)) == 4
    torch.testing.assert_close(head(3.0 * f, y), head(f, y))  # only directions count


@pytest.mark.parametrize("margin, scale", [(1.0, 30.0), (-0.1, 30.0), (0.35, 0.0)])
def test_cosface_refuses_bad_margin_or_scale(margin, scale):
    with pytest.raises(ValueError, match=f"margin={margin}, scale={scale}"):
        CosFaceHead(8, 5, margin=margin, scale=scale)


# ---- sampled softmax ------------------------------------------------------------------------
@pytest.mark.parametrize("num_sampled", [5, 6, 100])
def test_sampled_softmax_with_every_class_sampled_is_full_cross_entropy(num_sampled):
    f, y = features_and_labels()
    head = SampledSoftmaxHead(8, 5, num_sampled=num_sampled).double()
    torch.testing.assert_close(head(f.double(), y), F.cross_entropy(head.fc(f.double()), y), rtol=1e-12, atol=1e-12)


def test_sampled_softmax_is_cross_entropy_over_the_sampled_classes_and_trains_only_them():
    f, y = features_and_labels(b=16, k=1000)
    head = SampledSoftmaxHead(8, 1000, num_sampled=20)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        classes = head.sample_classes(y)  # (C,)
    torch.manual_seed(7)
    loss = head(f, y)
    target = torch.tensor([classes.tolist().index(label) for label in y.tolist()])
    expected = F.cross_entropy(f @ head.fc.weight[classes].T + head.fc.bias[classes], target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    touched = head.fc.weight.grad.abs().sum(1) > 0  # (K,)
    assert set(touched.nonzero().flatten().tolist()) <= set(classes.tolist())
    assert touched[y].all() and touched.sum() > len(y.unique())  # the labels and some negatives learn


@settings(max_examples=100, deadline=None)
@given(num_classes=st.integers(1, 300), batch=st.integers(1, 64), num_sampled=st.integers(1, 400),
       seed=st.integers(0, 2**31))
def test_sampled_classes_hold_the_labels_once(num_classes, batch, num_sampled, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    head = SampledSoftmaxHead(4, num_classes, num_sampled=num_sampled)
    torch.manual_seed(seed)
    classes = head.sample_classes(labels)
    positives = labels.unique()
    assert len(classes.unique()) == len(classes)  # no repeats
    assert torch.equal(classes[:len(positives)], positives)  # every label, first
    assert ((classes >= 0) & (classes < num_classes)).all()
    assert len(classes) <= len(positives) + num_sampled
    assert len(classes) == min(num_classes, len(positives) + num_sampled)  # as many negatives as there are


def test_sampled_softmax_under_a_proposal_draws_by_it_and_subtracts_its_log():
    f, y = features_and_labels(b=16, k=1000)
    zipf = 1.0 / torch.arange(1, 1001)
    head = SampledSoftmaxHead(8, 1000, num_sampled=20, proposal=zipf)
    q = zipf / zipf.sum()
    torch.manual_seed(7)
    classes = head.sample_classes(y)
    torch.manual_seed(7)
    loss = head(f, y)
    target = torch.tensor([classes.tolist().index(label) for label in y.tolist()])
    expected = F.cross_entropy(f @ head.fc.weight[classes].T + head.fc.bias[classes] - q[classes].log(), target)
    torch.testing.assert_close(loss, expected)
    # the frequent classes are the ones sampled: the first 10 classes hold 39 % of the proposal, the last 100 1.4 %
    # (28x); drawn without repeats, the first saturate, and they come up 14x as often (measured, seed 0)
    torch.manual_seed(0)
    drawn = torch.cat([head.sample_classes(torch.tensor([500]))[1:] for _ in range(300)])  # negatives only
    counts = torch.bincount(drawn, minlength=1000)
    assert counts[:10].sum() > 5 * counts[-100:].sum()


@pytest.mark.parametrize("proposal, match", [(torch.ones(4), r"proposal must hold 5 .*got shape \(4,\)"),
                                             (torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]), "positive.*min 0")])
def test_sampled_softmax_refuses_a_bad_proposal(proposal, match):
    with pytest.raises(ValueError, match=match):
        SampledSoftmaxHead(8, 5, proposal=proposal)


def test_sampled_softmax_refuses_no_negatives():
    with pytest.raises(ValueError, match="num_sampled=0"):
        SampledSoftmaxHead(8, 5, num_sampled=0)


# ---- linear head and build_head -----------------------------------------------------------
def test_linear_head_is_cross_entropy():
    f, y = features_and_labels()
    head = LinearHead(8, 5)
    torch.testing.assert_close(head(f, y), F.cross_entropy(f @ head.fc.weight.T + head.fc.bias, y))


def test_build_head():
    assert type(build_head("ce", 8, 5)) is LinearHead
    cosface = build_head("cosface", 8, 5, margin=0.2, scale=12.0)
    assert type(cosface) is CosFaceHead and (cosface.margin, cosface.scale) == (0.2, 12.0)
    sampled = build_head("sampled", 8, 50, num_sampled=7)
    assert type(sampled) is SampledSoftmaxHead and sampled.num_sampled == 7 and sampled.fc.out_features == 50
    with pytest.raises(ValueError, match="loss='arcface' is not a supervised loss; choose one of ce, cosface, sampled"):
        build_head("arcface", 8, 5)


# ---- the classifier -----------------------------------------------------------------------
def image_batch(b=6, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(b, 1, 16, 16, generator=g), "label": torch.randint(0, k, (b,), generator=g)}


@pytest.mark.parametrize("loss", LOSSES)
def test_classifier_loss_is_finite_and_reaches_the_backbone(loss):
    torch.manual_seed(0)
    model = Classifier(build_backbone("convnet-s", 1, 16), 4, loss, num_sampled=2)
    out = model(image_batch())
    assert set(out) == {"loss"} and out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    pred = model.predict(image_batch()["image"])
    assert pred.shape == (6,) and pred.dtype == torch.int64 and ((pred >= 0) & (pred < 4)).all()


def test_classifier_target_and_augment():
    calls = []

    def augment(x):
        calls.append(x.shape)
        return x.flip(-1)

    torch.manual_seed(0)
    model = Classifier(build_backbone("convnet-s", 1, 16), 3, target="colour", augment=augment)
    batch = {**image_batch(), "colour": torch.tensor([0, 1, 2, 0, 1, 2])}
    batch["label"] = torch.full((6,), 99)  # would be out of range: the head must read "colour"
    assert torch.isfinite(model(batch)["loss"]) and calls == [(6, 1, 16, 16)]
    model.eval()
    model(batch)
    assert len(calls) == 1  # no augmentation at evaluation


# The models notebook 01 trains, as (loss, data set, target): sections 2-4, section 5 (thousands of classes), 6-7.
FULL_RUNS = [("ce", "shapes", "label"), ("cosface", "shapes", "label"), ("ce", "shapes", "fine"),
             ("sampled", "shapes", "fine"), ("ce", "digits", "label")]


@pytest.mark.parametrize("loss, dataset, target", FULL_RUNS)
def test_the_full_preset_builds_each_of_the_chapters_models_and_takes_a_step(loss, dataset, target):
    """At ``full`` chapter 01 trains resnet18: with each head on ``shapes``, on the attribute combinations,
    and on a one-channel real set (its real data sets are grey) resized to ``image_size``."""
    cfg = SupervisedConfig.from_params(scale="full")
    assert cfg.backbone == "resnet18"
    data = load(dataset, "train", n=8, image_size=cfg.image_size)
    num_classes = data.num_classes
    if target == "fine":
        names = ("shape", "colour", "size", "position", "count")
        fine, num_classes = combination_labels(data.attributes, names,
                                               {k: len(data.attribute_values[k]) for k in names})
        data = dataclasses.replace(data, attributes={**data.attributes, "fine": fine})
        assert num_classes > cfg.num_sampled  # sampling pays only when it leaves classes out
    torch.manual_seed(0)
    model = Classifier(build_backbone(cfg.backbone, data.channels, cfg.image_size), num_classes, loss,
                       target=target, margin=cfg.margin, scale=cfg.cosface_scale, num_sampled=cfg.num_sampled)
    one_training_step(model, data)


# ---- attribute combinations -----------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_combination_labels_is_a_bijection_onto_range_total(sizes):
    names = tuple(f"a{i}" for i in range(len(sizes)))
    combos = torch.tensor(list(itertools.product(*[range(s) for s in sizes])))  # (N, A): every combination
    attributes = {name: combos[:, i] for i, name in enumerate(names)}
    labels, total = combination_labels(attributes, names, dict(zip(names, sizes)))
    assert total == math.prod(sizes)
    assert sorted(labels.tolist()) == list(range(total))  # one class per combination, none left out
    radix = [math.prod(sizes[i + 1:]) for i in range(len(sizes))]  # mixed radix: the first name is the most significant
    assert labels.tolist() == [sum(int(v) * r for v, r in zip(row, radix)) for row in combos]


# ---- learning ---------------------------------------------------------------------------------
@pytest.mark.learning
@pytest.mark.slow
def test_supervised_training_learns_the_digits():
    """convnet-s with cross-entropy, 3 epochs on the 1,438 16x16 training digits in fp32 (~2 s). Measured test
    accuracy 0.944-0.961 over seeds 0-3, and 0.958-0.981 over the kernels and threads of `make test-kernels`
    (untrained 0.064; the final loss 0.05 of the first), against a line of 0.85."""
    torch.manual_seed(0)
    train, test = load("digits", "train", image_size=16), load("digits", "test", image_size=16)
    model = Classifier(build_backbone("convnet-s", 1, 16), 10)
    before = (predict(model, test) == test.labels).float().mean().item()
    result = fit(model, train, epochs=3, batch_size=64, lr=3e-3, warmup_epochs=0.5, device="cpu",
                 precision="fp32", seed=0, progress=False)
    after = (predict(model, test) == test.labels).float().mean().item()
    below("digits: accuracy of the untrained classifier", before, 0.3)  # chance is 0.1
    above("digits: test accuracy", after, 0.85)
    below("digits: final loss against the first", result.final_loss, 0.5 * result.history[0]["loss"])
