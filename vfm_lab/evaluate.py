"""Evaluation reads a backbone: frozen features, kNN, linear and attribute probes, results.json.

The protocol of the self-supervised literature: freeze the backbone, extract one
feature vector per image, and measure how much of the label a simple reader recovers.

- **kNN** (Wu et al., 2018, "Unsupervised Feature Learning via Non-Parametric Instance
  Discrimination", arXiv:1805.01978, sec. 3.4; DINO's ``eval_knn.py``, Caron et al., 2021,
  arXiv:2104.14294): the k most cosine-similar training features vote for their label with
  weight ``exp(sim / T)``.
- **Linear probe**: a softmax regression on standardised frozen features (the "linear
  evaluation protocol" of SimCLR, Chen et al., 2020, arXiv:2002.05709, sec. 4.3).
- **Attribute probes**: one linear probe per annotated factor (shape, colour, size,
  position, count on ``shapes``), next to the accuracy of always guessing the majority value.

Every accuracy is a fraction in [0, 1]. :func:`evaluate_backbone` runs all of it and
:func:`write_results` merges the numbers into a run's ``results.json``.

>>> g = torch.Generator().manual_seed(0)
>>> centres = 5 * torch.randn(3, 16, generator=g)                     # (K, D): 3 classes
>>> y = torch.arange(300) % 3                                        # (N,)
>>> x = centres[y] + torch.randn(300, 16, generator=g)               # (N, D)
>>> knn_accuracy(x[:200], y[:200], x[200:], y[200:], k=10)
1.0
>>> linear_probe(x[:200], y[:200], x[200:], y[200:], steps=20)["test_acc"]
1.0
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vfm_lab.backbones import Backbone
from vfm_lab.data import ImageSet, batches
from vfm_lab.engine import atomic_write, fit
from vfm_lab.methods.supervised import Classifier
from vfm_lab.runtime import autocast, eval_mode

RESULTS_FILE = "results.json"


@torch.no_grad()
def extract_features(backbone: Backbone, data: ImageSet, batch_size: int = 256,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of every image of ``data``, in order: ``(features (N, D) float32, labels (N,))``
    on the CPU.

    The backbone runs in eval mode (BatchNorm running statistics, no dropout) and each of its
    modules goes back to the mode it was in. ``device`` defaults to where the backbone's
    parameters are; ``dtype`` (e.g. ``torch.bfloat16``) runs it under autocast.
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()
    feats = []
    try:
        for batch in batches(data, batch_size, shuffle=False, drop_last=False, device=device):
            with autocast(device, dtype or torch.float32):
                feats.append(backbone(batch["image"]).float().cpu())  # (B, D)
    finally:
        for m, training in modes.items():
            m.training = training
    return torch.cat(feats), data.labels.clone()  # (N, D), (N,)


@torch.no_grad()
def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
                 chunk: int = 1024) -> float:
    """Top-1 accuracy of the cosine-similarity weighted kNN classifier (InstDisc sec. 3.4; DINO ``knn_classifier``).

    For each test feature, the ``k`` training features with the highest cosine similarity
    ``s_i`` vote for their label with weight ``exp(s_i / temperature)``; the class with the
    largest total wins. Test features are processed ``chunk`` at a time, so memory is
    ``chunk x N_train``. The defaults (k=20, T=0.07) are DINO's.
    """
    _check_pairs(train_x, train_y, test_x, test_y)
    if not 1 <= k <= len(train_x):
        raise ValueError(f"k={k} neighbours but only {len(train_x)} training features; choose 1 <= k <= {len(train_x)}")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive")
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    train_x = F.normalize(train_x.float(), dim=1)  # (N, D)
    correct = 0
    for start in range(0, len(test_x), chunk):
        q = F.normalize(test_x[start:start + chunk].float(), dim=1)  # (Q, D)
        sim, idx = (q @ train_x.T).topk(k, dim=1)  # (Q, k)
        votes = torch.zeros(len(q), num_classes, device=q.device)  # (Q, K)
        votes.scatter_add_(1, train_y[idx], (sim / temperature).exp())
        correct += int((votes.argmax(dim=1) == test_y[start:start + chunk]).sum())
    return correct / len(test_x)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 steps: int = 100, weight_decay: float = 1e-3, device: torch.device | str = "cpu",
                 num_classes: int | None = None) -> dict[str, Any]:
    """Train a softmax-regression probe on frozen features: ``{"train_acc", "test_acc", "probe"}``.

    Features are standardised with the training mean and standard deviation; the linear
    layer starts at zero and minimises the mean cross-entropy plus ``weight_decay / 2 *
    ||W||^2`` with full-batch L-BFGS for ``steps`` iterations (as scikit-learn's
    ``LogisticRegression``), so the result is deterministic and its cost does not grow
    with the number of epochs a mini-batch optimiser would need. The returned ``probe``
    (an ``nn.Linear`` on the CPU) has the standardisation folded in: it takes raw
    features, ``probe(x).argmax(1)`` is the prediction.
    """
    _check_pairs(train_x, train_y, test_x, test_y)
    if steps < 1 or weight_decay < 0:
        raise ValueError(f"steps={steps} must be at least 1 and weight_decay={weight_decay} non-negative")
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    train_x, train_y = train_x.to(device, torch.float32), train_y.to(device)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)  # (D,), (D,)
    z = (train_x - mean) / std  # (N, D)
    probe = nn.Linear(z.shape[1], num_classes).to(device)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    opt = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(probe(z), train_y) + 0.5 * weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():  # fold the standardisation in: W (x - m) / s + b = (W / s) x + (b - (W / s) m)
        probe.weight.div_(std)
        probe.bias.sub_(probe.weight @ mean)
        probe = probe.cpu()
        train_acc = (probe(train_x.cpu()).argmax(1) == train_y.cpu()).float().mean().item()
        test_acc = (probe(test_x.float().cpu()).argmax(1) == test_y.cpu()).float().mean().item()
    return {"train_acc": train_acc, "test_acc": test_acc, "probe": probe}


def attribute_probes(train_x: torch.Tensor, train_attrs: dict[str, torch.Tensor], test_x: torch.Tensor,
                     test_attrs: dict[str, torch.Tensor], **probe_kw: Any) -> dict[str, dict[str, float]]:
    """A linear probe per attribute: name -> ``{"acc": test accuracy, "chance": majority rate}``.

    ``chance`` is the test accuracy of always answering the most frequent training value,
    the score of a probe that learned nothing from the features. ``probe_kw`` goes to
    :func:`linear_probe`.
    """
    if set(train_attrs) != set(test_attrs):
        raise ValueError(f"train attributes {sorted(train_attrs)} differ from test attributes {sorted(test_attrs)}")
    out = {}
    for name in sorted(train_attrs):
        y_train, y_test = train_attrs[name], test_attrs[name]
        majority = torch.bincount(y_train).argmax()
        acc = linear_probe(train_x, y_train, test_x, y_test, **probe_kw)["test_acc"]
        out[name] = {"acc": acc, "chance": (y_test == majority).float().mean().item()}
    return out


@torch.no_grad()
def retrieval_recall(queries: torch.Tensor, gallery: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)
                     ) -> dict[str, float]:
    """Recall@k of cross-modal retrieval, ``{"R@k": fraction}``: query ``i`` (N, E) should find
    gallery item ``i`` (N, E) among its ``k`` most cosine-similar (CLIP sec. 3.1, image->text and
    text->image). Chance is ``k / N``. Ties count against the query.

    >>> x = torch.eye(4)
    >>> retrieval_recall(x, x, ks=(1,)), retrieval_recall(x, x.roll(1, 0), ks=(1, 2))
    ({'R@1': 1.0}, {'R@1': 0.0, 'R@2': 0.0})
    """
    if queries.ndim != 2 or queries.shape != gallery.shape:
        raise ValueError(f"queries and gallery must both be (N, E) with row i matching row i, got "
                         f"{tuple(queries.shape)} and {tuple(gallery.shape)}")
    sim = F.normalize(queries.float(), dim=1) @ F.normalize(gallery.float(), dim=1).T  # (N, N)
    rank = (sim > sim.diag()[:, None]).sum(1) + (sim == sim.diag()[:, None]).sum(1) - 1  # (N,) 0 = first
    return {f"R@{k}": (rank < k).float().mean().item() for k in ks}


def write_results(out_dir: str | os.PathLike, results: dict[str, Any], *, merge: bool = True) -> Path:
    """Write ``results`` to ``out_dir/results.json``; with ``merge`` its top-level keys replace
    those of the file already there and the others stay.

    Tensors and numpy values become plain numbers and lists; keys are sorted. The file is
    written to a temporary file in the same folder and moved into place with ``os.replace``,
    so a reader never sees half a file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_FILE
    merged = json.loads(path.read_text()) if merge and path.exists() else {}
    merged.update(_to_json(results, "results"))

    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(merged, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)
    return path


def evaluate_backbone(backbone: Backbone, train: ImageSet, test: ImageSet, *, knn_k: int = 20,
                      knn_temperature: float = 0.07, probe_steps: int = 100, attributes: bool = True,
                      batch_size: int = 256, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None, seed: int = 0) -> dict[str, Any]:
    """Frozen-feature evaluation of a backbone, accuracies in [0, 1]: ``knn_acc``, ``linear_acc``,
    ``linear_train_acc`` and, when ``attributes`` and the data have them, ``probe`` (one linear
    probe per attribute: ``metrics["probe"]["shape"]``) and ``probe_chance`` (each one's
    majority-value baseline).

    ``knn_k`` is capped at the number of training images.
    """
    train_x, train_y = extract_features(backbone, train, batch_size, device, dtype)  # (N, D), (N,)
    test_x, test_y = extract_features(backbone, test, batch_size, device, dtype)  # (M, D), (M,)
    num_classes = max(train.num_classes, test.num_classes)
    probe_device = device if device is not None else next(backbone.parameters()).device
    probe = linear_probe(train_x, train_y, test_x, test_y, steps=probe_steps, device=probe_device,
                         num_classes=num_classes)
    results = {"knn_acc": knn_accuracy(train_x, train_y, test_x, test_y, k=min(knn_k, len(train_x)),
                                       temperature=knn_temperature, num_classes=num_classes),
               "linear_acc": probe["test_acc"], "linear_train_acc": probe["train_acc"]}
    if attributes and train.attributes:
        attrs = attribute_probes(train_x, train.attributes, test_x, test.attributes, steps=probe_steps,
                                 device=probe_device)
        results["probe"] = {name: r["acc"] for name, r in attrs.items()}
        results["probe_chance"] = {name: r["chance"] for name, r in attrs.items()}
    return results


@torch.no_grad()
def predict(classifier: nn.Module, data: ImageSet, batch_size: int = 256,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Class predictions (N,) on the CPU of a model with ``predict(images)``, in eval mode
    (the model goes back to its mode afterwards)."""
    device = torch.device(device) if device is not None else next(classifier.parameters()).device
    with eval_mode(classifier):
        out = [classifier.predict(b["image"]).cpu()
               for b in batches(data, batch_size, shuffle=False, drop_last=False, device=device)]
    return torch.cat(out)


def accuracy(classifier: nn.Module, data: ImageSet, target: torch.Tensor | None = None) -> float:
    """Share of ``data`` that ``classifier`` predicts right (against its labels, or ``target``)."""
    return (predict(classifier, data) == (data.labels if target is None else target)).float().mean().item()


def finetune(backbone: Backbone, train: ImageSet, test: ImageSet, *, epochs: int, batch_size: int = 128,
             lr: float = 1e-3, augment: Any = None, layer_decay: float = 1.0, curve_every: int = 0,
             **fit_kw: Any) -> dict[str, Any]:
    """Fine-tune a copy of ``backbone`` with a new linear head and cross-entropy on
    ``train``: ``{"test_acc", "train_seconds", "model", "curve"}``. ``fit_kw`` goes to
    :func:`vfm_lab.engine.fit` (device, precision, seed, out_dir, ...). The backbone
    passed in is left untouched, so the same pre-trained weights can be probed too.
    ``layer_decay`` < 1 (ViTs only) gives the lower blocks smaller learning rates
    (:func:`layer_decay_scale`), as BEiT and MAE fine-tune. The new head is drawn from
    ``fit_kw["seed"]``, so two backbones fine-tuned with one seed start from the same head:
    only the backbones differ. With ``curve_every`` > 0 the test accuracy is measured after
    every ``curve_every`` epochs: ``curve`` lists ``[epoch, accuracy]`` pairs (has it converged?)."""
    with torch.random.fork_rng(devices=[]):  # leaves the caller's random stream as it was
        torch.manual_seed(fit_kw.get("seed", 0))
        model = Classifier(copy.deepcopy(backbone), train.num_classes, "ce", augment=augment)
    scale = layer_decay_scale(model, layer_decay) if layer_decay != 1.0 else None
    track = (lambda epoch: {"test_acc": accuracy(model, test)} if (epoch + 1) % curve_every == 0 else {}
             ) if curve_every > 0 else None
    result = fit(model, train, epochs=epochs, batch_size=batch_size, lr=lr, lr_scale=scale, on_epoch_end=track,
                 **fit_kw)
    curve = [[round(row["epoch"]), row["test_acc"]] for row in result.history if "test_acc" in row]
    return {"test_acc": accuracy(model, test), "train_seconds": result.seconds, "model": model, "curve": curve}


def layer_decay_scale(model: nn.Module, decay: float) -> Callable[[str], float]:
    """Layer-wise learning-rate decay for fine-tuning a ViT (BEiT, Bao et al., 2021, arXiv:2106.08254,
    sec. 2.6; MAE's ``util/lr_decay.py``): the patch embedding, class token and position embedding
    are layer 0, block ``i`` is layer ``i + 1``, the final norm and the head layer ``L = depth + 1``;
    a parameter of layer ``l`` trains at ``decay ** (L - l)`` times the learning rate. The blocks
    that pre-training shaped most generally (the lowest) move least. Returns ``name -> factor``
    for ``model.named_parameters()``, the form :func:`vfm_lab.engine.fit` takes as ``lr_scale``.

    >>> from vfm_lab.backbones import build_backbone
    >>> scale = layer_decay_scale(Classifier(build_backbone("vit-nano"), 10), 0.5)   # depth 4, L = 5
    >>> [scale(n) for n in ("backbone.model.cls_token", "backbone.model.blocks.0.attn.qkv.weight",
    ...                     "backbone.model.blocks.3.mlp.fc2.bias", "backbone.model.norm.weight", "head.fc.weight")]
    [0.03125, 0.0625, 0.5, 1.0, 1.0]
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer_decay={decay} must be in (0, 1]: 1 trains every layer at the same rate")
    blocks = [m for m in model.modules() if hasattr(m, "blocks") and hasattr(m, "patch_embed")]
    if len(blocks) != 1:
        raise ValueError(f"layer_decay={decay} needs a model with one ViT (vit-nano, vit-tiny); "
                         f"use layer_decay=1.0 for a {type(model).__name__} without one")
    top = len(blocks[0].blocks) + 1  # L: final norm and head

    def scale(name: str) -> float:
        block = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
        if block:
            layer = int(block.group(1)) + 1
        elif re.search(r"(?:^|\.)(cls_token|pos_embed|patch_embed|reg_token)(?:\.|$)", name):
            layer = 0
        else:
            layer = top
        return decay ** (top - layer)

    return scale


def _check_pairs(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> None:
    """Features (N, D) with one label each, and the same D for train and test."""
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
            raise ValueError(f"{split} features must be (N, D) with N > 0 and labels (N,), "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train features have D={train_x.shape[1]} but test features D={test_x.shape[1]}")


def _to_json(value: Any, key: str) -> Any:
    """``value`` with tensors, numpy values and paths turned into JSON types; ``key`` names it in errors."""
    if isinstance(value, dict):
        return {str(k): _to_json(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{key}={value!r} ({type(value).__name__}) cannot be written to {RESULTS_FILE}; "
                    f"give a number, string, list or dict")
