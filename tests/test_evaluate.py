"""Evaluation: kNN against a loop reference, linear probe against sklearn, attribute probes,
results.json writing, feature extraction."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tests.margins import above, below
from vfm_lab import evaluate
from vfm_lab.backbones import build_backbone
from vfm_lab.data import ImageSet, load
from vfm_lab.evaluate import (attribute_probes, evaluate_backbone, extract_features, knn_accuracy, linear_probe,
                              write_results)


def gaussian_clusters(n, dim=16, classes=4, spread=1.0, seed=0):
    """(N, D) features around ``classes`` well-separated centres, with labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    centres = 6 * torch.randn(classes, dim, generator=g)  # (K, D)
    y = torch.arange(n) % classes  # (N,)
    return centres[y] + spread * torch.randn(n, dim, generator=g), y


def knn_reference(train_x, train_y, test_x, k, temperature, num_classes):
    """InstDisc / DINO weighted kNN, one test point at a time in plain Python."""
    train = [v / v.norm() for v in train_x]
    predictions = []
    for q in test_x:
        q = q / q.norm()
        sims = sorted(((float(q @ t), int(label)) for t, label in zip(train, train_y)), reverse=True)[:k]
        votes = [0.0] * num_classes
        for s, label in sims:
            votes[label] += math.exp(s / temperature)
        predictions.append(max(range(num_classes), key=lambda c: votes[c]))
    return predictions


# ----------------------------------------------------------------------------- kNN

def test_knn_separates_gaussian_clusters():
    x, y = gaussian_clusters(400)
    assert knn_accuracy(x[:300], y[:300], x[300:], y[300:], k=20) == 1.0


@pytest.mark.parametrize("k, temperature, chunk", [(1, 0.07, 1024), (5, 0.5, 7), (20, 0.07, 13), (60, 1.0, 1)])
def test_knn_matches_loop_reference(k, temperature, chunk):
    g = torch.Generator().manual_seed(k)
    train_x, test_x = torch.randn(60, 8, generator=g), torch.randn(40, 8, generator=g)
    train_y, test_y = torch.randint(0, 5, (60,), generator=g), torch.randint(0, 5, (40,), generator=g)
    predictions = knn_reference(train_x, train_y, test_x, k, temperature, num_classes=5)
    expected = float(np.mean(np.array(predictions) == test_y.numpy()))
    assert 0.0 < expected < 1.0  # random labels: a wrong vote would show
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=temperature, chunk=chunk) == \
        pytest.approx(expected)


def test_knn_rejects_bad_arguments():
    x, y = gaussian_clusters(20)
    with pytest.raises(ValueError, match="k=21 neighbours but only 20 training features"):
        knn_accuracy(x, y, x, y, k=21)
    with pytest.raises(ValueError, match="temperature"):
        knn_accuracy(x, y, x, y, k=5, temperature=0.0)
    with pytest.raises(ValueError, match="D=16"):
        knn_accuracy(x, y, x[:, :8], y, k=5)


# ----------------------------------------------------------------------------- linear probe

def test_linear_probe_separable_and_folded_standardisation():
    x, y = gaussian_clusters(400)
    x = 100 * x + 50  # far from standardised: the probe standardises internally
    out = linear_probe(x[:300], y[:300], x[300:], y[300:], steps=20)
    assert out["train_acc"] == 1.0 and out["test_acc"] == 1.0
    probe = out["probe"]
    assert isinstance(probe, torch.nn.Linear) and probe.weight.shape == (4, 16)
    # The returned probe reads raw features: its predictions give the reported accuracy.
    assert (probe(x[300:]).argmax(1) == y[300:]).float().mean().item() == out["test_acc"]


def test_linear_probe_is_invariant_to_feature_scale_and_shift():
    x, y = gaussian_clusters(300, spread=4.0)  # overlapping classes: the logits matter
    a = linear_probe(x[:200], y[:200], x[200:], y[200:], steps=10)
    b = linear_probe(3 * x[:200] - 40, y[:200], 3 * x[200:] - 40, y[200:], steps=10)
    assert a["test_acc"] > 0.5 and a["test_acc"] == b["test_acc"]
    # Standardisation is folded into each probe, so both give the same logits on their own features.
    torch.testing.assert_close(b["probe"](3 * x[200:] - 40), a["probe"](x[200:]), rtol=1e-3, atol=1e-3)


def test_linear_probe_is_deterministic_and_more_steps_fit_better():
    x, y = gaussian_clusters(200, spread=4.0)
    a = linear_probe(x[:150], y[:150], x[150:], y[150:], steps=5)
    b = linear_probe(x[:150], y[:150], x[150:], y[150:], steps=5)
    assert torch.equal(a["probe"].weight, b["probe"].weight) and torch.equal(a["probe"].bias, b["probe"].bias)
    c = linear_probe(x[:150], y[:150], x[150:], y[150:], steps=1)
    assert c["train_acc"] <= a["train_acc"]
    with pytest.raises(ValueError, match="steps=0"):
        linear_probe(x[:150], y[:150], x[150:], y[150:], steps=0)


@pytest.mark.learning
def test_linear_probe_matches_sklearn_logistic_regression_on_digits():
    train, test = load("digits", "train"), load("digits", "test")  # real 8x8 digits, 1438 / 359
    x_tr, x_te = train.images.flatten(1).float(), test.images.flatten(1).float()  # (N, 64) pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk_acc = LogisticRegression(max_iter=5000).fit(x_tr.numpy(), train.labels.numpy()).score(
            x_te.numpy(), test.labels.numpy())
    ours = linear_probe(x_tr, train.labels, x_te, test.labels)["test_acc"]
    above("digits: scikit-learn's logistic regression", sk_acc, 0.9)  # the data are learnable (measured 0.961)
    below("digits: our probe's distance to scikit-learn's", abs(ours - sk_acc), 0.02)


# ----------------------------------------------------------------------------- attribute probes

def test_attribute_probes_accuracy_and_chance():
    x, colour = gaussian_clusters(300, classes=3)
    g = torch.Generator().manual_seed(1)
    size = (torch.rand(300, generator=g) < 0.7).long()  # unrelated to the features, 70 % ones
    attrs = {"colour": colour, "size": size}
    train = {k: v[:200] for k, v in attrs.items()}
    test = {k: v[200:] for k, v in attrs.items()}
    out = attribute_probes(x[:200], train, x[200:], test, steps=10)
    assert set(out) == {"colour", "size"} and set(out["size"]) == {"acc", "chance"}
    assert out["colour"]["acc"] == 1.0
    assert out["colour"]["chance"] == pytest.approx((test["colour"] == torch.bincount(train["colour"]).argmax())
                                                    .float().mean().item())
    assert out["size"]["chance"] == pytest.approx((test["size"] == 1).float().mean().item())
    with pytest.raises(ValueError, match="differ"):
        attribute_probes(x[:200], train, x[200:], {"colour": test["colour"]})


# ----------------------------------------------------------------------------- results.json

def test_write_results_merges_sorts_and_converts(tmp_path):
    path = write_results(tmp_path / "run", {"linear_acc": np.float32(0.5), "knn_acc": torch.tensor(0.25)})
    assert path == tmp_path / "run" / "results.json"
    write_results(tmp_path / "run", {"epochs": np.int64(3), "curve": torch.tensor([1.0, 2.0]), "linear_acc": 0.75})
    text = path.read_text()
    data = json.loads(text)
    assert data == {"curve": [1.0, 2.0], "epochs": 3, "knn_acc": 0.25, "linear_acc": 0.75}
    assert type(data["epochs"]) is int
    assert text.index('"curve"') < text.index('"epochs"') < text.index('"knn_acc"')  # sorted keys
    write_results(tmp_path / "run", {"only": 1}, merge=False)
    assert json.loads(path.read_text()) == {"only": 1}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["results.json"]  # no temporary file left


def test_write_results_is_atomic_on_failure(tmp_path, monkeypatch):
    path = write_results(tmp_path, {"a": 1})
    with pytest.raises(TypeError, match="results.b"):
        write_results(tmp_path, {"b": object()})

    def broken_dump(obj, f, **kw):
        assert f.name != str(path) and json.loads(path.read_text()) == {"a": 1}  # writing elsewhere
        f.write('{"half": ')
        raise OSError("disk full")

    monkeypatch.setattr(evaluate.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        write_results(tmp_path, {"b": 2})
    assert json.loads(path.read_text()) == {"a": 1}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


# ----------------------------------------------------------------------------- extraction and the whole evaluation

def image_set(n, size=16, seed=0):
    """Images whose brightness is the class (dark / bright), with two attributes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (torch.rand(n, 3, size, size, generator=g) * 100 + 150 * labels[:, None, None, None]).to(torch.uint8)
    return ImageSet(name="toy", images=images, labels=labels, classes=["dark", "bright"],
                    attributes={"bright": labels.clone(), "noise": torch.randint(0, 3, (n,), generator=g)},
                    attribute_values={"bright": ["no", "yes"], "noise": ["a", "b", "c"]})


@pytest.mark.parametrize("training", [True, False])
def test_extract_features_shapes_values_and_mode_restored(training):
    torch.manual_seed(0)
    data = image_set(37)
    net = build_backbone("convnet-s", image_size=16).train(training)
    feats, labels = extract_features(net, data, batch_size=16)  # 16 + 16 + 5
    assert feats.shape == (37, net.embed_dim) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert torch.equal(labels, data.labels)
    assert net.training is training and all(m.training is training for m in net.modules())
    net.model.bn1.eval()  # a mixed state (a frozen BatchNorm in a training network) comes back as it was
    modes = [m.training for m in net.modules()]
    extract_features(net, data, batch_size=64)
    assert [m.training for m in net.modules()] == modes
    with torch.no_grad():
        expected = net.eval()(data.images.float() / 255)  # eval mode: BatchNorm uses running statistics
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)
    bf16, _ = extract_features(net, data, batch_size=16, dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, feats, rtol=0.1, atol=0.1)


def test_evaluate_backbone_returns_accuracies_and_a_probe_per_attribute():
    torch.manual_seed(0)
    net = build_backbone("convnet-s", image_size=16)
    out = evaluate_backbone(net, image_set(40), image_set(20, seed=1), knn_k=100, probe_steps=10)
    assert set(out) == {"knn_acc", "linear_acc", "linear_train_acc", "probe", "probe_chance"}
    assert set(out["probe"]) == set(out["probe_chance"]) == {"bright", "noise"}
    values = [out["knn_acc"], out["linear_acc"], out["linear_train_acc"], *out["probe"].values(),
              *out["probe_chance"].values()]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)
    assert out["knn_acc"] == 1.0 and out["linear_acc"] == 1.0  # brightness survives a random convnet
    assert out["probe_chance"]["bright"] == 0.5
    assert set(evaluate_backbone(net, image_set(40), image_set(20), probe_steps=2, attributes=False)) == \
        {"knn_acc", "linear_acc", "linear_train_acc"}
