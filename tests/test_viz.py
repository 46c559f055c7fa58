from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import sklearn.metrics  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from vfm_lab import viz  # noqa: E402
from vfm_lab.figures import FIGURES, method_figure  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_plot_history_one_panel_per_key_skipping_rows_without_it():
    rows = [{"step": s, "epoch": s / 10, "loss": 3.0 / s, "lr": 0.1} for s in range(1, 21)]
    rows += [{"step": 10, "knn": 0.3}, {"step": 20, "knn": 0.5}]  # epoch-end rows
    fig = viz.plot_history(rows, keys=("loss", "knn"), log=True)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    (loss,), (knn,) = fig.axes[0].lines, fig.axes[1].lines
    assert list(loss.get_xdata()) == list(range(1, 21)) and list(knn.get_ydata()) == [0.3, 0.5]
    assert fig.axes[0].get_yscale() == "log"
    assert viz.plot_history(rows, keys=("loss",), x="epoch").axes[0].get_xlabel() == "epoch"


def test_plot_history_names_the_keys_it_has_when_one_is_missing():
    with pytest.raises(ValueError, match="'acc' in no row; the rows have loss, step"):
        viz.plot_history([{"step": 1, "loss": 1.0}], keys=("acc",))


def test_plot_schedules_one_panel_per_schedule():
    lr = np.linspace(0, 1, 50)
    fig = viz.plot_schedules({"lr": lr, "wd": np.full(50, 0.05), "momentum": torch.linspace(0.99, 1, 50)})
    assert len(fig.axes) == 3 and [ax.get_title() for ax in fig.axes] == ["lr", "wd", "momentum"]
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), lr)


@pytest.mark.parametrize("images", [torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8),
                                    torch.rand(10, 1, 8, 8)])
def test_image_grid_one_axes_per_image(images):
    fig = viz.image_grid(images, titles=[f"#{i}" for i in range(10)], nrow=4)
    assert len(fig.axes) == 10 and all(len(ax.images) == 1 for ax in fig.axes)
    assert fig.axes[9].get_title() == "#9"
    shown = fig.axes[0].images[0].get_array()
    expected = images[0].float() / 255 if images.dtype == torch.uint8 else images[0]
    np.testing.assert_allclose(np.asarray(shown).squeeze(), expected.permute(1, 2, 0).squeeze().numpy(), atol=1e-6)


def test_image_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="3 titles for 10 images"):
        viz.image_grid(torch.rand(10, 3, 8, 8), titles=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"C=1 or C=3, got \(2, 8, 8\)"):
        viz.image_grid(torch.rand(4, 2, 8, 8))


def blobs(n_per_class: int = 50, k: int = 3, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = 5 * torch.randn(k, d, generator=g)
    labels = torch.arange(k).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), d, generator=g), labels


def test_embedding_map_pca_scatters_each_class_at_its_principal_components():
    features, labels = blobs()
    fig = viz.embedding_map(features, labels, class_names=["a", "b", "c"])
    (ax,) = fig.axes
    assert len(ax.collections) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]
    reference = PCA(n_components=2).fit_transform(features.numpy())
    for k, points in enumerate(ax.collections):
        ours, ref = points.get_offsets(), reference[labels.numpy() == k]
        np.testing.assert_allclose(np.abs(ours), np.abs(ref), atol=1e-3)  # equal up to the sign of each axis


def test_embedding_map_tsne_and_subsampling():
    features, labels = blobs(n_per_class=40)
    with threadpool_limits(1):  # OpenMP threads on a busy shared CPU slow t-SNE down 100-fold
        fig = viz.embedding_map(features, labels, method="tsne", max_points=60)
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 60
    with pytest.raises(ValueError, match="method='umap' is not a projection; choose one of pca, tsne"):
        viz.embedding_map(features, labels, method="umap")


def test_confusion_counts_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    y_true, y_pred = torch.randint(0, 7, (500,), generator=g), torch.randint(0, 7, (500,), generator=g)
    y_pred[:200] = y_true[:200]
    counts = viz.confusion_counts(y_true, y_pred, num_classes=8)  # class 7 never occurs
    assert counts.dtype == torch.int64
    np.testing.assert_array_equal(counts.numpy(),
                                  sklearn.metrics.confusion_matrix(y_true, y_pred, labels=list(range(8))))
    with pytest.raises(ValueError, match=r"y_pred has labels in \[0, 6\]; with num_classes=5"):
        viz.confusion_counts(y_true.clamp(max=4), y_pred, num_classes=5)


def test_confusion_matrix_figure_shows_row_rates_and_counts():
    y_true, y_pred = torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor([0, 0, 1, 1, 1, 0])
    fig = viz.confusion_matrix(y_true, y_pred, ["cat", "dog", "emu"])
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the matrix and its colour bar
    np.testing.assert_allclose(ax.images[0].get_array(), [[2 / 3, 1 / 3, 0], [0, 1, 0], [1, 0, 0]])
    assert [t.get_text() for t in ax.texts] == ["2", "1", "0", "0", "2", "0", "1", "0", "0"]
    assert ax.get_title() == "accuracy 66.7%"


def test_bar_table_one_group_of_bars_per_key():
    results = {"simclr": {"shape": 0.9, "colour": 0.5, "size": 0.7}, "mae": {"shape": 0.6, "colour": 0.8}}
    fig = viz.bar_table(results)
    ax = fig.axes[0]
    assert len(ax.containers) == 2
    assert [b.get_height() for b in ax.containers[0]] == [0.9, 0.5, 0.7]
    assert [b.get_height() for b in ax.containers[1]] == [0.6, 0.8]  # no bar for the missing group
    assert [t.get_text() for t in ax.get_xticklabels()] == ["shape", "colour", "size"]


def test_views_side_by_side_three_rows_of_n():
    x = torch.rand(8, 3, 32, 32)
    fig = viz.views_side_by_side(x, x[:, :, :16, :16], x.flip(-1), n=5)
    assert len(fig.axes) == 15 and all(len(ax.images) == 1 for ax in fig.axes)
    assert [fig.axes[i].get_ylabel() for i in (0, 5, 10)] == ["original", "view 1", "view 2"]


# ---- the method figures --------------------------------------------------------------------
@pytest.mark.parametrize("name", FIGURES)
def test_method_figure_draws_every_box_and_arrow_of_its_method(name):
    _, boxes, arrows = FIGURES[name]
    ax = method_figure(name).axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert all(text in texts for _, _, text, _ in boxes.values())
    styles = [a.arrow_patch.get_linestyle() for a in ax.texts if getattr(a, "arrow_patch", None) is not None]
    assert len(styles) == len(arrows)
    assert all(src in boxes and dst in boxes for src, dst, _, _ in arrows)


def test_the_figures_mark_what_gets_no_gradient():
    for name in ("moco", "byol", "dino", "mae"):  # a target without gradient: an EMA copy, a stop-gradient, pixels
        assert any(style == "nograd" for *_, style in FIGURES[name][2]), name
    assert any(kind == "frozen" for *_, kind in FIGURES["byol"][1].values())


def test_method_figure_names_the_figures_it_has():
    with pytest.raises(ValueError, match="no figure for method='swav'; choose one of supervised, clip"):
        method_figure("swav")


@pytest.mark.parametrize("chapter, methods", [("01_supervised", ["supervised"]), ("02_clip", ["clip"]),
                                              ("03_contrastive", ["simclr", "moco"]),
                                              ("04_non_contrastive", ["byol", "simsiam", "dino"]),
                                              ("05_mim", ["mae", "simmim"])])
def test_each_chapter_shows_the_figure_of_each_method_it_teaches(chapter, methods):
    nb = json.loads((Path(__file__).parents[1] / "notebooks" / f"{chapter}.ipynb").read_text())
    shown = [m for c in nb["cells"] if c["cell_type"] == "code"
             for m in re.findall(r'method_figure\("(\w+)"\)', "".join(c["source"]))]
    assert shown == methods


def test_prompted_masks_draws_each_mask_its_clicks_and_its_box():
    images = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, 4:8, 4:8] = True
    points, labels = torch.tensor([[[5.0, 5.0], [12.0, 12.0]], [[6.0, 6.0], [0.0, 0.0]]]), torch.tensor([[1, 0], [1, -1]])
    fig = viz.prompted_masks(images, masks, points, labels, torch.tensor([[3.0, 3.0, 9.0, 9.0]] * 2), titles=["a", "b"])
    first, second = fig.axes
    assert [m.get_marker() for m in first.lines] == ["+", "x"] and [m.get_marker() for m in second.lines] == ["+"]
    assert len(first.patches) == 1 and len(first.images) == 2 and first.get_title() == "a"  # the image, then the tint


def test_label_maps_put_each_map_beside_its_image_and_name_the_labels_shown():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    truth = torch.zeros(2, 8, 8, dtype=torch.uint8)
    truth[0, :4] = 2
    predicted = truth.clone()
    predicted[1, 0, 0] = 255  # not counted: white
    fig = viz.label_maps(images, [truth, predicted], ["background", "star", "heart"], ["true", "predicted"])
    assert len(fig.axes) == 6 and fig.axes[1].get_title() == "true"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["background", "heart"]
    assert fig.axes[5].images[0].get_array()[0, 0].tolist() == [1.0, 1.0, 1.0]
