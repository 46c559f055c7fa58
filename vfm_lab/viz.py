"""Plots for the chapters: training curves, schedules, images, embeddings, confusion matrices.

Every function returns a matplotlib ``Figure`` and never calls ``plt.show()``: a
notebook displays the figure it gets as a cell's value (once: the figure is closed in
pyplot, so the inline backend does not show it a second time), a script saves it with
``fig.savefig(path)``, a test counts its axes. The library never picks a backend;
headless runs use matplotlib's Agg default.

>>> rows = [{"step": 10, "loss": 2.3}, {"step": 20, "loss": 1.9, "knn": 0.41}, {"step": 30, "loss": 1.6}]
>>> fig = plot_history(rows, keys=("loss", "knn"))
>>> len(fig.axes), [len(ax.lines) for ax in fig.axes]
(2, [1, 1])
>>> confusion_counts(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), num_classes=2).tolist()
[[1, 0], [1, 1]]
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

EMBEDDING_METHODS = ("pca", "tsne")


def _subplots(*args, **kwargs) -> tuple[Figure, np.ndarray | Axes]:
    """``plt.subplots`` for a figure that pyplot forgets at once (see the module docstring)."""
    fig, axes = plt.subplots(*args, **kwargs)
    plt.close(fig)
    return fig, axes


def plot_history(rows: Sequence[Mapping[str, float]], keys: Sequence[str] = ("loss",), x: str = "step",
                 log: bool = False) -> Figure:
    """Training curves from the engine's metrics rows (``TrainResult.history`` or the lines
    of ``metrics.jsonl``): one panel per key against ``x``. A key may be absent from some
    rows (an online kNN logged once per epoch): each panel uses the rows that have it.
    ``log`` puts the y axes on a log scale (losses that fall over decades)."""
    if len(keys) == 0:
        raise ValueError("keys is empty; name at least one metric, e.g. keys=('loss',)")
    present = sorted({k for row in rows for k in row})
    missing = [k for k in (*keys, x) if k not in present]
    if missing:
        raise ValueError(f"{', '.join(map(repr, missing))} in no row; the rows have {', '.join(present) or 'nothing'}")
    fig, axes = _subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(row[x], row[key]) for row in rows if x in row and key in row]
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o" if len(points) <= 30 else None, markersize=3)
        ax.set(title=key, xlabel=x, yscale="log" if log else "linear")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_schedules(schedules: Mapping[str, np.ndarray | Sequence[float] | torch.Tensor]) -> Figure:
    """Per-step schedules (lr, weight decay, EMA momentum, temperature), one panel each,
    against the optimizer step (dino ``utils.cosine_scheduler`` arrays)."""
    if len(schedules) == 0:
        raise ValueError("schedules is empty; pass name -> per-step values, e.g. {'lr': lr_schedule}")
    fig, axes = _subplots(1, len(schedules), figsize=(3.5 * len(schedules), 2.8), squeeze=False)
    for ax, (name, values) in zip(axes[0], schedules.items()):
        ax.plot(np.asarray(values, dtype=float))
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _show(ax: Axes, image: torch.Tensor) -> None:
    """Draw one (C, H, W) uint8 or float [0, 1] image, grey (C=1) or RGB (C=3), without ticks."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"an image must be (C, H, W) with C=1 or C=3, got {tuple(image.shape)}")
    image = image.detach().cpu()
    image = image.float() / 255 if image.dtype == torch.uint8 else image.float().clamp(0, 1)
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image.permute(1, 2, 0).numpy())
    ax.set(xticks=[], yticks=[])


def image_grid(images: torch.Tensor, titles: Sequence[str] | None = None, nrow: int = 8) -> Figure:
    """A grid of images, ``nrow`` per row (as ``torchvision.utils.make_grid``), one axes
    each, so each can have a title. images: (N, C, H, W) uint8, or float in [0, 1]."""
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got {tuple(images.shape)}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images; give one title per image or none")
    if nrow < 1:
        raise ValueError(f"nrow={nrow} must be at least 1 (images per row)")
    n, cols = len(images), min(nrow, len(images))
    rows = math.ceil(n / cols)
    fig, axes = _subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.3 * (titles is not None)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            fig.delaxes(ax)
            continue
        _show(ax, images[i])
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def annotated_scenes(images: torch.Tensor, boxes: torch.Tensor, phrases: Sequence[Sequence[str]],
                     masks: torch.Tensor, n: int = 4) -> Figure:
    """Scenes with their boxes and phrases (top row) and instance masks (bottom row):
    the region- and pixel-level annotations of ``shapes``. boxes: (N, K, 4) xyxy pixels,
    phrases: N lists (one phrase per present object), masks: (N, H, W) instance ids."""
    n = min(n, len(images))
    fig, axes = _subplots(2, n, figsize=(2.4 * n, 4.6), squeeze=False)
    for i in range(n):
        _show(axes[0, i], images[i])
        for k, phrase in enumerate(phrases[i]):
            x0, y0, x1, y1 = boxes[i, k].tolist()
            colour = _class_colours(10)[k + 1]  # the colour of instance id k + 1 in the mask panel
            axes[0, i].add_patch(matplotlib.patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0,
                                                              fill=False, color=colour, lw=1.5))
            axes[0, i].text(x0, y0 - 1, phrase, color=colour, fontsize=6, va="bottom")
        axes[1, i].imshow(masks[i].numpy(), cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        axes[1, i].set(xticks=[], yticks=[], title="instance masks")
    fig.tight_layout()
    return fig


def detected_boxes(images: torch.Tensor, boxes: Sequence[torch.Tensor], labels: Sequence[Sequence[str]],
                   truth: Sequence[torch.Tensor] | None = None, titles: Sequence[str] | None = None) -> Figure:
    """Images with detected or grounded boxes: ``boxes[i]`` (M, 4) xyxy pixels, each named by ``labels[i]``
    ("star 0.83"), in the colours of the labels' order; ``truth[i]`` (T, 4), if given, dashed white under them."""
    if not len(images) == len(boxes) == len(labels) or (truth is not None and len(truth) != len(images)):
        raise ValueError(f"{len(images)} images, {len(boxes)} box sets, {len(labels)} label sets"
                         + (f", {len(truth)} true box sets" if truth is not None else "") + ": give one of each per image")
    fig, axes = _subplots(1, len(images), figsize=(2.6 * len(images), 2.9), squeeze=False)
    colours = _class_colours(10)
    for i, ax in enumerate(axes[0]):
        _show(ax, images[i])
        drawn = [(b, "white", "--", None) for b in (truth[i] if truth is not None else [])]
        drawn += [(b, colours[k % 10], "-", text) for k, (b, text) in enumerate(zip(boxes[i], labels[i]))]
        for box, colour, style, text in drawn:
            x0, y0, x1, y1 = box.tolist()
            ax.add_patch(matplotlib.patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                                      color=colour, lw=1.5, ls=style))
            if text:
                ax.text(x0, y0 - 0.5, text, color=colour, fontsize=7, va="bottom")
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def prompted_masks(images: torch.Tensor, masks: torch.Tensor, points: torch.Tensor | None = None,
                   labels: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
                   titles: Sequence[str] | None = None) -> Figure:
    """Images (N, 3, H, W) with a mask each (N, H, W) bool, tinted, and the prompts that asked for it: ``points``
    (N, n, 2) pixels (x, y) with ``labels`` (N, n) (1 foreground: green +, 0 background: red x, -1 padding: not
    drawn) and ``boxes`` (N, 4) xyxy, dashed."""
    fig, axes = _subplots(1, len(images), figsize=(2.4 * len(images), 2.7), squeeze=False)
    for i, ax in enumerate(axes[0]):
        _show(ax, images[i])
        tint = np.zeros((*masks[i].shape, 4))
        tint[masks[i].numpy().astype(bool)] = (0.1, 0.4, 1.0, 0.55)
        ax.imshow(tint, interpolation="nearest")
        if boxes is not None:
            x0, y0, x1, y1 = boxes[i].tolist()
            ax.add_patch(matplotlib.patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                                      color="yellow", lw=1.5, ls="--"))
        if points is not None:
            for (x, y), label in zip(points[i].tolist(), labels[i].tolist()):
                if label >= 0:
                    ax.plot(x, y, "+" if label > 0 else "x", color="lime" if label > 0 else "red", ms=9, mew=2.5)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def label_maps(images: torch.Tensor, maps: Sequence[torch.Tensor], names: Sequence[str],
               titles: Sequence[str]) -> Figure:
    """Each image (N, 3, H, W) next to label maps of it: ``maps[j]`` (N, H, W), 0 to ``len(names) - 1`` an index
    into ``names`` (0, the background: grey; 255, not counted: white), one column per map titled ``titles[j]``; a
    legend of the names shown."""
    colours = [(0.35, 0.35, 0.35, 1.0), *_class_colours(len(names) - 1)]
    fig, axes = _subplots(len(images), 1 + len(maps), figsize=(2.2 * (1 + len(maps)) + 2, 2.2 * len(images)),
                          squeeze=False)
    shown: set[int] = set()
    for i in range(len(images)):
        _show(axes[i, 0], images[i])
        for j, m in enumerate(maps):
            rgb = np.ones((*m[i].shape, 3))
            for c in m[i].unique().tolist():
                if c < len(names):
                    rgb[(m[i] == c).numpy()] = colours[c][:3]
                    shown.add(c)
            axes[i, j + 1].imshow(rgb, interpolation="nearest")
            axes[i, j + 1].set(xticks=[], yticks=[])
            if i == 0:
                axes[i, j + 1].set_title(titles[j], fontsize=8)
    handles = [matplotlib.patches.Patch(color=colours[c], label=names[c]) for c in sorted(shown)]
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    return fig


def _class_colours(num_classes: int) -> list:
    cmap = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo"]
    return [cmap(i if num_classes <= 20 else i / max(num_classes - 1, 1)) for i in range(num_classes)]


def embedding_map(features: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                  class_names: Sequence[str] | None = None, method: str = "pca", max_points: int = 2000,
                  seed: int = 0) -> Figure:
    """A 2-D map of features (N, D), coloured by label, one scatter (and legend entry) per class.

    ``method="pca"``: the first two principal components, by an exact SVD of the centred
    features (``torch.pca_lowrank`` would draw from the global RNG and so shift a training
    run's random stream). ``method="tsne"``: scikit-learn's t-SNE (van der Maaten and
    Hinton, 2008), keeps neighbourhoods rather than distances; about 10 s for 2,000 points
    on one core. At most
    ``max_points`` points, a random subset fixed by ``seed``.
    """
    if method not in EMBEDDING_METHODS:
        raise ValueError(f"method={method!r} is not a projection; choose one of {', '.join(EMBEDDING_METHODS)}")
    features = torch.as_tensor(features).detach().cpu().float()  # (N, D)
    labels = torch.as_tensor(labels).detach().cpu().long()  # (N,)
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be (N, D) and labels (N,), got {tuple(features.shape)} "
                         f"and {tuple(labels.shape)}")
    if len(features) < 3:
        raise ValueError(f"{len(features)} points are too few to map; give at least 3")
    if len(features) > max_points:
        keep = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:max_points]
        features, labels = features[keep], labels[keep]
    if method == "pca":
        centred = features - features.mean(dim=0)  # (N, D)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(N, D), D)
        xy = (centred @ vh[:2].T).numpy()  # (N, 2)
    else:
        from sklearn.manifold import TSNE

        tsne = TSNE(n_components=2, init="pca", perplexity=min(30.0, (len(features) - 1) / 3), random_state=seed)
        xy = tsne.fit_transform(features.numpy())  # (N, 2)
    num_classes = int(labels.max()) + 1 if class_names is None else len(class_names)
    if class_names is not None and int(labels.max()) >= num_classes:
        raise ValueError(f"label {int(labels.max())} has no name among {num_classes} class_names")
    colours = _class_colours(num_classes)
    fig, ax = _subplots(figsize=(5, 4.5))
    for k in labels.unique().tolist():
        at = (labels == k).numpy()
        ax.scatter(xy[at, 0], xy[at, 1], s=6, color=colours[k], label=class_names[k] if class_names else str(k))
    ax.set(title=f"{method.upper()} of {features.shape[1]}-d features", xticks=[], yticks=[])
    if num_classes <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="best", frameon=False)
    fig.tight_layout()
    return fig


def confusion_counts(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, row = true class, column = predicted class
    (the convention of ``sklearn.metrics.confusion_matrix``)."""
    y_true, y_pred = torch.as_tensor(y_true).long().flatten(), torch.as_tensor(y_pred).long().flatten()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {len(y_true)} labels and y_pred {len(y_pred)}; they must match")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < num_classes:
            raise ValueError(f"{name} has labels in [{int(y.min())}, {int(y.max())}]; "
                             f"with num_classes={num_classes} they must lie in [0, {num_classes - 1}]")
    flat = y_true.cpu() * num_classes + y_pred.cpu()  # (N,) index of each (true, predicted) cell
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes)


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, class_names: Sequence[str]) -> Figure:
    """The confusion matrix, coloured by the fraction of each true class (rows sum to 1),
    with the counts written in the cells (up to 20 classes)."""
    k = len(class_names)
    counts = confusion_counts(y_true, y_pred, k)  # (K, K)
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)  # (K, K) rows sum to 1
    fig, ax = _subplots(figsize=(1.0 + 0.45 * k, 0.6 + 0.45 * k))
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 20:
        dark = (rates > 0.5).numpy()  # (K, K) cells that need white text
        for (i, j), c in np.ndenumerate(counts.numpy()):
            ax.text(j, i, str(c), ha="center", va="center", fontsize=7, color="white" if dark[i, j] else "black")
    accuracy = counts.diag().sum() / counts.sum().clamp(min=1)
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true",
           title=f"accuracy {100 * float(accuracy):.1f}%")
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(class_names, fontsize=8)
    fig.tight_layout()
    return fig


def bar_table(results: Mapping[str, Mapping[str, float]], ylabel: str = "accuracy") -> Figure:
    """Grouped bars: ``results[series][group] = value`` (for example method -> attribute ->
    accuracy), one colour per series, groups along x in first-seen order, values on top.
    A series may miss a group: no bar there."""
    if len(results) == 0:
        raise ValueError("results is empty; pass series -> {group: value}")
    groups = list(dict.fromkeys(g for row in results.values() for g in row))
    width = 0.8 / len(results)
    fig, ax = _subplots(figsize=(max(4.0, 0.5 + len(groups) * (0.4 + 0.25 * len(results))), 3.2))
    for s, (series, row) in enumerate(results.items()):
        at = [i for i, g in enumerate(groups) if g in row]
        heights = [float(row[groups[i]]) for i in at]
        bars = ax.bar(np.array(at) + (s - (len(results) - 1) / 2) * width, heights, width, label=series)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.set_xticks(range(len(groups)), groups, rotation=30 if len(groups) > 6 else 0)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def views_side_by_side(x: torch.Tensor, view1: torch.Tensor, view2: torch.Tensor, n: int = 6) -> Figure:
    """Originals on the top row, the two augmented views of each below (the augmentation
    explorer). x, view1, view2: (B, C, H, W), views may be smaller; shows the first ``n``."""
    n = min(n, len(x))
    if n < 1 or len(view1) < n or len(view2) < n:
        raise ValueError(f"need at least n={n} images in x ({len(x)}), view1 ({len(view1)}) and view2 ({len(view2)})")
    fig, axes = _subplots(3, n, figsize=(1.4 * n, 4.4), squeeze=False)
    for row, (name, images) in enumerate((("original", x), ("view 1", view1), ("view 2", view2))):
        for i in range(n):
            _show(axes[row, i], images[i])
        axes[row, 0].set_ylabel(name)
    fig.tight_layout()
    return fig


def similarity_matrix(images: torch.Tensor, sim: torch.Tensor, texts: Sequence[str], title: str = "") -> Figure:
    """A batch's image-text cosine similarities (N, N), images along the top and captions down the
    side (CLIP fig. 1): after training the diagonal, each image with its own caption, lights up."""
    n = len(images)
    if sim.shape != (n, n) or len(texts) != n:
        raise ValueError(f"need N images, an (N, N) similarity and N texts; got {n}, {tuple(sim.shape)}, {len(texts)}")
    fig = plt.figure(figsize=(2.0 + 0.55 * n + 3.5, 0.8 + 0.55 * (n + 1)))
    plt.close(fig)
    grid = fig.add_gridspec(2, 1, height_ratios=(1, n), hspace=0.05)
    top = grid[0].subgridspec(1, n, wspace=0.05)
    for i in range(n):
        _show(fig.add_subplot(top[i]), images[i])
    ax = fig.add_subplot(grid[1])
    im = ax.imshow(sim.detach().cpu().float().numpy(), cmap="viridis", aspect="auto")
    ax.set_yticks(range(n), [t if len(t) < 48 else t[:45] + "..." for t in texts], fontsize=7)
    ax.set_xticks([])
    # the colour bar sits beside the matrix, so the columns stay under their images
    fig.colorbar(im, cax=ax.inset_axes((1.02, 0.0, 0.03, 1.0)), label="cosine similarity")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def attention_maps(images: torch.Tensor, maps: torch.Tensor, n: int = 4) -> Figure:
    """Each image next to its attention maps, one per head (DINO fig. 1 and 3: the class token of a
    self-supervised ViT attends to the objects). images: (B, C, H, W); maps: (B, heads, h, w), e.g.
    :func:`vfm_lab.diagnostics.cls_attention`, each head's map drawn over the image (nearest
    upsampling, normalised per map). Shows the first ``n`` images, one row each."""
    n = min(n, len(images))
    if maps.ndim != 4 or len(maps) < n or n < 1:
        raise ValueError(f"need maps (B, heads, h, w) for at least n={n} images, got {tuple(maps.shape)}")
    heads, (H, W) = maps.shape[1], images.shape[-2:]
    fig, axes = _subplots(n, heads + 1, figsize=(1.5 * (heads + 1), 1.5 * n), squeeze=False)
    up = torch.nn.functional.interpolate(maps[:n].detach().cpu().float(), size=(H, W), mode="nearest")  # (n, h, H, W)
    for i in range(n):
        _show(axes[i, 0], images[i])
        for h in range(heads):
            m = up[i, h]
            _show(axes[i, h + 1], images[i])
            axes[i, h + 1].imshow(((m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)).numpy(), cmap="inferno",
                                  alpha=0.7)
            if i == 0:
                axes[i, h + 1].set_title(f"head {h}", fontsize=8)
    axes[0, 0].set_title("image", fontsize=8)
    fig.tight_layout()
    return fig
