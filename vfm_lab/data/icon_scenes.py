"""Icon scenes: real icons pasted on real textures, with exact captions, questions, boxes and masks.

``shapes`` draws its objects; these scenes paste *real* drawings (an icon set of
:mod:`vfm_lab.data.icons`: Noto emoji, OpenMoji or OpenClipart) on *real* photographs of texture
(scikit-image's ``grass``, ``gravel`` and ``brick`` sample images, shipped inside the package). Every
annotation follows from the placement, so it is exact: each icon's box from its visible pixels, its
instance mask from its alpha channel (opacity above one half, later icons over earlier ones), its
name from the icon set's caption, its category from the icon set's category. Chapters 07-09 caption,
ground and segment them.

Scene ``i`` of ``load(split, seed=s)`` depends only on ``(s, split, holdout, i)``: a random crop of a
texture (a side of a quarter to the whole image), tinted with a muted colour; 1 to ``max_objects``
icons of different categories; the first, the **primary** (labels, attributes), is the largest
(``PRIMARY_SCALE`` of the image side; the others ``OTHER_SCALE``), and the others are placed where they
cover at most a little of it. ``split="train"`` pastes the icon set's train icons, ``"test"`` its test
icons of the seen categories; ``holdout=True`` (test only) pastes icons of the held-out categories only,
for the open-vocabulary tests of chapters 08 and 09.

>>> from vfm_lab.data.icons import STORED_SIZE
>>> sorted(TEXTURES), PRIMARY_SCALE[0] > OTHER_SCALE[1]
(['brick', 'grass', 'gravel'], True)
"""
from __future__ import annotations

import functools
import numbers

import torch
import torch.nn.functional as F

from vfm_lab.data import ImageSet
from vfm_lab.data import icons as icon_sets
from vfm_lab.data.shapes import POSITIONS, mask_boxes

TEXTURES = ("grass", "gravel", "brick")  # skimage.data sample photographs, 512 x 512 grey
PRIMARY_SCALE = (0.42, 0.55)  # side of the primary icon as a share of the image side
OTHER_SCALE = (0.24, 0.34)  # side of every other icon
MAX_OBJECTS = 3
MAX_OVERLAP = 0.15  # a later icon may cover at most this share of an earlier icon's box
IMAGE_SIZES = (32, 256)


@functools.lru_cache(maxsize=1)
def textures() -> torch.Tensor:
    """The texture photographs, (T, 512, 512) float in [0, 1]."""
    import skimage.data

    return torch.stack([torch.from_numpy(getattr(skimage.data, name)()).float() / 255 for name in TEXTURES])


def load(split: str = "train", n: int = 2000, image_size: int = 64, seed: int = 0, source: str = "emoji",
         holdout: bool = False, max_objects: int = MAX_OBJECTS, root: str | None = None) -> ImageSet:
    """``n`` scenes of ``source``'s icons (one of ``icons.ICON_SETS``) at ``image_size`` pixels.

    ``labels`` index ``classes`` (the icon set's seen categories, or its held-out ones with ``holdout``) by the
    primary icon's category; attributes ``texture`` (TEXTURES), ``position`` (the primary's 3x3 cell, as in
    ``shapes``) and ``count``; one caption per scene ("a grinning face and a red apple on grass"); extras as in
    ``shapes``: ``boxes`` (N, max_objects, 4) xyxy, ``num_objects``, ``phrases`` (the icons' names),
    ``object_categories`` (N, max_objects) indices into ``classes``, -1 where absent, ``instance_masks``
    (N, H, W) uint8 (k = icon k), ``qa`` (question, answer) pairs, and ``heldout_classes``.
    ``root`` is the icon set's data folder (as for ``icons.load``)."""
    for name, value, lo, hi in (("n", n, 1, None), ("image_size", image_size, *IMAGE_SIZES), ("seed", seed, 0, None),
                                ("max_objects", max_objects, 1, MAX_OBJECTS)):
        if (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < lo
                or (hi is not None and value > hi)):
            raise ValueError(f"{name}={value!r} must be an integer from {lo}" + (f" to {hi}" if hi else " up"))
    pool = icon_sets.load(source, split, holdout=holdout, root=root)  # refuses holdout with split="train"
    if len(pool.labels.unique()) < max_objects:
        raise ValueError(f"{source} {split} holdout={holdout} has icons of {len(pool.labels.unique())} categories; a scene of "
                         f"max_objects={max_objects} icons of different categories needs as many")
    g = torch.Generator().manual_seed(((seed * 1_000_003 + ("train", "test").index(split)) * 2 + holdout) * 7919)
    return _compose(pool, n, image_size, max_objects, g, f"icon-scenes-{source}")


def _compose(pool: ImageSet, n: int, size: int, k_max: int, g: torch.Generator, name: str) -> ImageSet:
    """Draw and render ``n`` scenes from the icons of ``pool``."""
    rgb, alpha = pool.images.float() / 255, pool.extras["alpha"].float()[:, None] / 255  # (P, 3, S, S), (P, 1, S, S)
    rgb = ((rgb - (1 - alpha)) / alpha.clamp_min(0.05)).clamp(0, 1)  # undo the stored compositing on white
    images, masks = torch.empty(n, 3, size, size), torch.zeros(n, size, size, dtype=torch.uint8)
    count = torch.randint(1, k_max + 1, (n,), generator=g)
    texture = torch.randint(len(TEXTURES), (n,), generator=g)
    chosen = torch.full((n, k_max), -1)  # icon index in the pool per slot
    cells, absent = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
    stocked = pool.labels.unique()  # the categories with icons in this split (a test split may lack some)
    for i in range(n):
        images[i] = _background(texture[i], size, g)
        order = stocked[torch.randperm(len(stocked), generator=g)[:k_max + 1]]  # every category when all are stocked
        categories = order[:count[i]]
        absent[i] = order[k_max] if len(order) > k_max else -1  # asked about, never shown (when one is left)
        boxes = []
        for k, c in enumerate(categories.tolist()):
            members = (pool.labels == c).nonzero()[:, 0]
            icon = members[torch.randint(len(members), (1,), generator=g)].item()
            lo, hi = PRIMARY_SCALE if k == 0 else OTHER_SCALE
            side = max(4, round(size * (lo + (hi - lo) * torch.rand(1, generator=g).item())))
            box = _place(boxes, side, size, g)
            if box is None:  # no room left: the scene has fewer icons
                break
            x, y = box
            a = F.interpolate(alpha[icon:icon + 1], size=(side, side), mode="bilinear", antialias=True)[0]  # (1, s, s)
            c_rgb = F.interpolate(rgb[icon:icon + 1], size=(side, side), mode="bilinear", antialias=True)[0]
            region = images[i, :, y:y + side, x:x + side]
            region.mul_(1 - a).add_(a * c_rgb)
            masks[i, y:y + side, x:x + side][a[0] > 0.5] = k + 1
            chosen[i, k] = icon
            boxes.append((x, y, side))
        x, y, side = boxes[0]
        cx, cy = (x + side / 2) / size, (y + side / 2) / size
        cells[i] = min(2, int(cy * 3)) * 3 + min(2, int(cx * 3))
    return _annotate(pool, images, masks, chosen, texture, cells, absent, k_max, name)


def _background(texture: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A random square crop of a texture photograph, resized to ``size`` and tinted: (3, size, size)."""
    photo = textures()[texture]  # (512, 512)
    side = int(torch.randint(128, 513, (1,), generator=g))
    x, y = (int(torch.randint(513 - side, (1,), generator=g)) for _ in range(2))
    crop = F.interpolate(photo[None, None, y:y + side, x:x + side], size=(size, size), mode="bilinear",
                         antialias=True)[0]  # (1, size, size)
    tint = 0.55 + 0.35 * torch.rand(3, 1, 1, generator=g)  # (3, 1, 1) muted
    return (crop * tint).clamp(0, 1)


def _place(boxes: list[tuple[int, int, int]], side: int, size: int, g: torch.Generator) -> tuple[int, int] | None:
    """The first of 12 random top-left corners where a ``side`` icon covers at most ``MAX_OVERLAP`` of each
    earlier icon's box, or None."""
    for _ in range(12):
        x, y = (int(torch.randint(size - side + 1, (1,), generator=g)) for _ in range(2))
        if all(_overlap(x, y, side, bx, by, bs) <= MAX_OVERLAP * bs * bs for bx, by, bs in boxes):
            return x, y
    return None


def _overlap(x: int, y: int, s: int, bx: int, by: int, bs: int) -> int:
    return max(0, min(x + s, bx + bs) - max(x, bx)) * max(0, min(y + s, by + bs) - max(y, by))


def _a(name: str) -> str:
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def _annotate(pool: ImageSet, images: torch.Tensor, masks: torch.Tensor, chosen: torch.Tensor, texture: torch.Tensor,
              cells: torch.Tensor, absent: torch.Tensor, k_max: int, name: str) -> ImageSet:
    """Labels, attributes, captions, phrases, boxes and questions from the pasted icons."""
    present = chosen >= 0  # (N, K)
    count = present.sum(1)
    categories = torch.where(present, pool.labels[chosen.clamp_min(0)], -1)  # (N, K)
    captions, phrases, qa = [], [], []
    for i in range(len(images)):
        names = [pool.captions[j] for j in chosen[i, :count[i]].tolist()]
        place = TEXTURES[texture[i]]
        captions.append(" and ".join(map(_a, names)) + f" on {place}")
        phrases.append(names)
        pairs = [("how many icons are there?", str(int(count[i]))), ("what is the largest icon?", names[0]),
                 (f"is there {_a(pool.classes[categories[i, 0]])}?", "yes"), ("what is the background?", place)]
        qa.append(pairs + ([(f"is there {_a(pool.classes[absent[i]])}?", "no")] if absent[i] >= 0 else []))
    return ImageSet(
        name=name, images=images.mul_(255).round_().to(torch.uint8), labels=categories[:, 0].clone(),
        classes=list(pool.classes),
        attributes={"texture": texture, "position": cells, "count": count - 1},
        attribute_values={"texture": list(TEXTURES), "position": list(POSITIONS),
                          "count": [str(i) for i in range(1, k_max + 1)]},
        captions=captions,
        extras={"boxes": mask_boxes(masks, k_max), "num_objects": count, "phrases": phrases,
                "object_categories": categories, "instance_masks": masks, "qa": qa,
                "heldout_classes": pool.extras["heldout_classes"]},
    )
