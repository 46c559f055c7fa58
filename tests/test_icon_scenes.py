"""Icon scenes (vfm_lab/data/icon_scenes.py) on the emoji fixture of tests/test_icons.py: every
annotation follows from the placement, the same seed gives the same scenes, bad input is named."""
import dataclasses

import pytest
import torch

from tests.test_icons import write_emoji_source
from vfm_lab.data import icon_scenes, icons, load
from vfm_lab.data.shapes import mask_boxes


@pytest.fixture(scope="module")
def emoji_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji")
    icons.build_index("emoji", write_emoji_source(tmp_path_factory.mktemp("emoji_src")), root, note="fixture")
    return str(root)


def scenes(root, **kw):
    return load("icon-scenes", kw.pop("split", "train"), **{"n": 40, "image_size": 48, "root": root, "max_objects": 2, **kw})


def test_annotations_follow_from_the_pasted_icons(emoji_root):
    ds = scenes(emoji_root)
    ex = ds.extras
    assert ds.images.shape == (40, 3, 48, 48) and ds.images.dtype == torch.uint8
    assert torch.equal(ex["boxes"], mask_boxes(ex["instance_masks"], 2))
    count = ex["num_objects"]
    assert set(count.tolist()) == {1, 2} and torch.equal(ds.attributes["count"], count - 1)
    for i in range(len(ds)):
        ids = set(ex["instance_masks"][i].unique().tolist()) - {0}
        assert ids <= set(range(1, count[i] + 1))  # every visible pixel belongs to a present icon
        assert len(ex["phrases"][i]) == count[i] and all(p in ds.captions[i] for p in ex["phrases"][i])
        assert ds.captions[i].endswith(" on " + ds.attribute_values["texture"][ds.attributes["texture"][i]])
        cats = ex["object_categories"][i, :count[i]].tolist()
        assert len(set(cats)) == len(cats) and cats[0] == ds.labels[i]  # different categories; the primary's is the label
        qa = dict(ex["qa"][i])
        assert qa["how many icons are there?"] == str(int(count[i])) and qa["what is the largest icon?"] == ex["phrases"][i][0]
    sides = (ex["boxes"][:, :, 2:] - ex["boxes"][:, :, :2]).amax(-1)  # (N, K) longest side of each visible icon
    two = count == 2
    assert (sides[two, 0] >= sides[two, 1]).float().mean() > 0.8  # the primary is the largest (glyphs vary in shape)


def test_the_same_seed_gives_the_same_scenes_and_held_out_scenes_show_held_out_categories(emoji_root):
    a, b, c = scenes(emoji_root), scenes(emoji_root), scenes(emoji_root, seed=1)
    assert torch.equal(a.images, b.images) and a.captions == b.captions and not torch.equal(a.images, c.images)
    held = scenes(emoji_root, split="test", holdout=True, max_objects=1)
    assert set(held.classes).isdisjoint(a.classes) and held.extras["heldout_classes"] == a.classes
    names = set(icons.load("emoji", "test", holdout=True, root=emoji_root).captions)
    assert {p for ph in held.extras["phrases"] for p in ph} <= names


def test_a_split_without_icons_of_some_category_pastes_only_the_stocked_ones(emoji_root, monkeypatch):
    """A test split can lack a seen category (emoji's does): its scenes draw from the categories it has."""
    pool = icons.load("emoji", "train", root=emoji_root)
    gone = int(pool.labels[0])
    other = int(pool.labels[pool.labels != gone][0])
    short = dataclasses.replace(pool, labels=torch.where(pool.labels == gone, other, pool.labels))  # no icon of it
    monkeypatch.setattr(icon_scenes.icon_sets, "load", lambda *a, **k: short)
    ds = scenes(emoji_root)
    present = ds.extras["object_categories"][ds.extras["object_categories"] >= 0]
    assert len(ds) == 40 and gone not in present.tolist()


def test_bad_arguments_are_named(emoji_root):
    with pytest.raises(ValueError, match="max_objects=5 must be an integer from 1 to 3"):
        scenes(emoji_root, max_objects=5)
    with pytest.raises(ValueError, match="image_size=16 must be an integer from 32 to 256"):
        load("icon-scenes", "train", image_size=16, root=emoji_root)
    with pytest.raises(ValueError, match="has icons of 1 categories; a scene of max_objects=2 icons"):
        scenes(emoji_root, split="test", holdout=True)
    with pytest.raises(ValueError, match="held-out categories have no train images"):
        scenes(emoji_root, holdout=True)
    with pytest.raises(ValueError, match="icon set 'emojis' does not exist"):
        scenes(emoji_root, source="emojis")
    assert icon_scenes.textures().shape == (3, 512, 512)


def test_the_chapter_07_attributes_read_back_from_the_true_captions(emoji_root):
    from vfm_lab.jobs import attribute_accuracy, question_type

    ds = scenes(emoji_root)
    assert attribute_accuracy(ds, ds.captions) == {"largest": 1.0, "texture": 1.0, "mean": 1.0}
    assert {question_type(q) for qa in ds.extras["qa"] for q, _ in qa} == {"count", "largest", "exists", "background"}
