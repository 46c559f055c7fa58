from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vfm_lab.data import shapes
from vfm_lab.data.shapes import COLOURS, HELDOUT_COMBOS, POSITIONS, SHAPES, SIZES, load


@pytest.fixture(scope="module")
def ds():
    return load("train", n=600, image_size=32, seed=0)  # 600 > one 512-scene chunk


def reference_boxes(masks: torch.Tensor, k_max: int) -> torch.Tensor:
    """Boxes of each instance id, one image and one object at a time."""
    boxes = torch.zeros(len(masks), k_max, 4)
    for i, m in enumerate(masks):
        for k in range(k_max):
            ys, xs = torch.nonzero(m == k + 1, as_tuple=True)
            if len(ys):
                boxes[i, k] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return boxes


def check_invariants(d, n: int, size: int, k_max: int) -> None:
    """Everything that must hold for any load: shapes, dtypes and mutual consistency of annotations."""
    ex = d.extras
    assert d.images.shape == (n, 3, size, size) and d.images.dtype == torch.uint8
    assert d.labels.shape == (n,) and d.labels.dtype == torch.int64
    assert ex["instance_masks"].shape == (n, size, size) and ex["instance_masks"].dtype == torch.uint8
    assert ex["boxes"].shape == (n, k_max, 4) and ex["boxes"].dtype == torch.float32
    for key in ("object_shapes", "object_colours"):
        assert ex[key].shape == (n, k_max) and ex[key].dtype == torch.int64
    for name, values in d.attribute_values.items():
        a = d.attributes[name]
        assert a.shape == (n,) and a.dtype == torch.int64
        assert 0 <= int(a.min()) and int(a.max()) < len(values), name
    assert len(d.captions) == len(ex["phrases"]) == len(ex["qa"]) == n

    count = ex["num_objects"]
    assert ((1 <= count) & (count <= k_max)).all()
    assert [d.attribute_values["count"][c] for c in d.attributes["count"]] == [str(c) for c in count.tolist()]
    present = torch.arange(k_max) < count[:, None]  # objects fill the first slots
    assert torch.equal(ex["object_shapes"] >= 0, present) and torch.equal(ex["object_colours"] >= 0, present)
    ids = ex["instance_masks"].long()
    assert torch.equal(ids.flatten(1).amax(1), count)  # ids run 1..count, each visible
    for k in range(k_max):
        assert torch.equal((ids == k + 1).flatten(1).any(1), present[:, k])
    assert torch.equal(ex["boxes"], reference_boxes(ex["instance_masks"], k_max))
    assert torch.equal(d.labels, ex["object_shapes"][:, 0]) and torch.equal(d.labels, d.attributes["shape"])
    assert torch.equal(d.attributes["colour"], ex["object_colours"][:, 0])
    for i in range(n):
        shp, col = ex["object_shapes"][i].tolist(), ex["object_colours"][i].tolist()
        phrases = ex["phrases"][i]
        assert len(phrases) == count[i]
        assert all(p.split()[0] in SIZES and p.split()[1:] == [COLOURS[col[k]], SHAPES[shp[k]]]
                   for k, p in enumerate(phrases))
        primary = f"{SIZES[d.attributes['size'][i]]} {COLOURS[col[0]]} {SHAPES[shp[0]]}"
        assert phrases[0] == primary and d.captions[i].startswith("a " + primary)
        qa = dict(ex["qa"][i])
        assert qa["how many objects are there?"] == str(int(count[i]))
        assert qa["what shape is the largest object?"] == SHAPES[shp[0]]
        for q, a in ex["qa"][i]:
            if q.startswith("is there a "):
                assert (SHAPES.index(q[len("is there a "):-1]) in shp) == (a == "yes")


def test_shapes_and_consistency(ds):
    check_invariants(ds, 600, 32, 4)


def test_same_seed_same_bytes_other_seed_or_split_differs(ds):
    again = load("train", n=600, image_size=32, seed=0)
    assert torch.equal(again.images, ds.images) and torch.equal(again.extras["instance_masks"],
                                                                ds.extras["instance_masks"])
    assert again.captions == ds.captions and again.extras["qa"] == ds.extras["qa"]
    for other in (load("train", n=600, seed=1), load("test", n=600, seed=0)):
        assert (other.images != ds.images).flatten(1).any(1).all()  # every image differs
        assert (other.labels != ds.labels).float().mean() > 0.7


def test_first_scenes_do_not_depend_on_n_or_resolution(ds):
    small = load("train", n=20, image_size=32, seed=0)
    assert torch.equal(small.images, ds.images[:20]) and small.captions == ds.captions[:20]
    big = load("train", n=20, image_size=64, seed=0)  # same scenes, more pixels
    assert torch.equal(big.labels, small.labels)
    assert all(torch.equal(big.attributes[k], small.attributes[k]) for k in ("colour", "size", "position"))
    assert torch.allclose(big.extras["boxes"] / 2, small.extras["boxes"], atol=1.5)


def test_objects_too_small_for_the_resolution_are_dropped():
    tiny, sharp = load("train", n=600, image_size=16, seed=0), load("train", n=600, image_size=64, seed=0)
    assert torch.equal(tiny.labels, sharp.labels)
    lost = tiny.extras["num_objects"] < sharp.extras["num_objects"]
    assert lost.any() and (tiny.extras["num_objects"] <= sharp.extras["num_objects"]).all()
    check_invariants(tiny.subset(torch.nonzero(lost).squeeze(1)), int(lost.sum()), 16, 4)


def test_primary_is_the_largest_object_and_never_occluded(ds):
    ids = ds.extras["instance_masks"].long()
    area = torch.stack([(ids == k + 1).flatten(1).sum(1) for k in range(4)], 1)  # (N, 4)
    assert (area[:, 0] > area[:, 1:].amax(1)).all()
    scenes = shapes._sample_scenes(torch.Generator().manual_seed(0), 256, 4, False)
    _, inst = shapes._render(scenes, 32)
    alone = dict(scenes, placed=scenes["placed"] & (torch.arange(4) == 0))  # the primary object only
    _, inst_alone = shapes._render(alone, 32)
    assert (inst > 1).any() and torch.equal(inst == 1, inst_alone == 1)
    # the position attribute is the 3x3 cell of the primary's centre
    col, row = (scenes["centre"][:, 0] * 3).long().unbind(1)
    assert torch.equal(row * 3 + col, scenes["cell"])


def test_every_factor_value_occurs_and_classes_are_balanced(ds):
    for name, values in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES), ("position", POSITIONS)):
        assert set(ds.attributes[name].tolist()) == set(range(len(values))), name
    counts = torch.bincount(ds.labels, minlength=len(SHAPES))
    assert counts.min() > 600 / len(SHAPES) / 2
    assert set(ds.extras["num_objects"].tolist()) == {1, 2, 3, 4}


def test_heldout_combos_only_with_holdout(ds):
    held = {(SHAPES.index(s), COLOURS.index(c)) for s, c in HELDOUT_COMBOS}
    assert 0.10 <= len(held) / (len(SHAPES) * len(COLOURS)) <= 0.15
    primary = set(zip(ds.attributes["shape"].tolist(), ds.attributes["colour"].tolist()))
    assert not primary & held and len(primary) == len(SHAPES) * len(COLOURS) - len(held)
    h = load("test", n=300, holdout=True)
    assert set(zip(h.attributes["shape"].tolist(), h.attributes["colour"].tolist())) == held
    assert not torch.equal(h.images[:5], load("test", n=5).images)


def test_captions_describe_the_relation_to_the_second_object():
    d = load("train", n=200, seed=3, max_objects=2)
    for i in torch.nonzero(d.extras["num_objects"] == 2).squeeze(1).tolist():
        b = d.extras["boxes"][i]
        (x0, y0), (x1, y1) = (b[0, :2] + b[0, 2:]) / 2, (b[1, :2] + b[1, 2:]) / 2
        rel = d.captions[i].split(d.extras["phrases"][i][0] + " ")[1].split(" a ")[0]
        expected = {"left of": x0 < x1, "right of": x0 > x1, "above": y0 < y1, "below": y0 > y1}[rel]
        assert expected, (d.captions[i], b)


def test_dispatch_through_data_load():
    from vfm_lab.data import load as load_any

    d = load_any("shapes", "test", n=4, image_size=16, seed=2, max_objects=2, holdout=True)
    assert torch.equal(d.images, load("test", n=4, image_size=16, seed=2, max_objects=2, holdout=True).images)


@pytest.mark.parametrize("kwargs, named", [
    (dict(split="val"), "split='val'"), (dict(n=0), "n=0"), (dict(image_size=8), "image_size=8"),
    (dict(image_size=32.0), "image_size=32.0"), (dict(seed=-1), "seed=-1"), (dict(max_objects=5), "max_objects=5"),
    (dict(holdout="yes"), "holdout='yes'"),
])
def test_invalid_arguments_name_the_bad_value(kwargs, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        load(**{"n": 4, **kwargs})


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), image_size=st.integers(16, 48), seed=st.integers(0, 10_000),
       max_objects=st.integers(1, 4), split=st.sampled_from(["train", "test"]))
def test_invariants_hold_for_any_arguments(n, image_size, seed, max_objects, split):
    check_invariants(load(split, n=n, image_size=image_size, seed=seed, max_objects=max_objects),
                     n, image_size, max_objects)


def test_module_constants():
    assert len(SHAPES) == len(set(SHAPES)) == 8 and len(COLOURS) == len(set(COLOURS)) == 8
    assert len(POSITIONS) == 9 and shapes.MAX_OBJECTS == 4
