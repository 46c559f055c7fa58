"""The ``shapes`` world: procedural scenes with every annotation a course needs.

Each image is a textured background (plain, striped, checkered, noisy or gradient,
in random muted colours) with 1 to ``max_objects`` objects on it. Each object has a
shape, a named colour drawn with jitter, a size, a position, a small rotation and
some shading. Scenes are composed from independent factors, as in dSprites
(Matthey et al., 2017) and CLEVR (Johnson et al., 2017, arXiv:1612.06890), so that
the ground truth for classification, attribute probes, captions, grounding boxes,
instance masks and question answering comes for free.

**The primary object is object 1**: it is drawn first, it is clearly the largest
(every other object has 35-55 % of its radius) and it is never occluded (the others
are placed clear of it). Its shape is the class label; the ``shape``, ``colour``,
``size`` and ``position`` attributes describe it. Later objects may overlap each other
a little and then occlude the earlier ones.

The data set is calibrated so that the class needs learned features: random
positions, sizes, rotations, distractors, textured backgrounds and colour jitter keep
a linear probe on raw pixels, or on a random-init convnet, at 20-30 % (chance is
12.5 %), while a small ResNet trained with labels for 4 epochs on 10k images reaches
about 96 % (measured at 32 px).

Scenes are drawn in resolution-free units (fractions of the image side) from a
random stream fixed by ``(seed, split, holdout, max_objects)``, so the same seed gives
the same scenes at every ``image_size`` (objects too small to cover a pixel are
dropped), and ``load(n=100)`` is the first 100 images of ``load(n=1000)``. Pixels
are rendered for a whole batch at once with coordinate grids and per-shape
inequalities: about 9,000 images of 32 px per second on one CPU thread.

>>> ds = load("train", n=8, image_size=32, seed=0)
>>> ds.images.shape, ds.images.dtype, ds.extras["instance_masks"].shape
(torch.Size([8, 3, 32, 32]), torch.uint8, torch.Size([8, 32, 32]))
>>> ds.classes == list(SHAPES), ds.attribute_values["size"]
(True, ['small', 'medium', 'large'])
>>> primary = ds.classes[ds.labels[0]]
>>> primary in ds.captions[0] and ds.extras["phrases"][0][0].endswith(primary)
True
>>> ("how many objects are there?", str(int(ds.extras["num_objects"][0]))) in ds.extras["qa"][0]
True
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vfm_lab.data import SPLITS, ImageSet

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
SIZES = ("small", "medium", "large")
POSITIONS = ("top left", "top middle", "top right", "middle left", "centre", "middle right",
             "bottom left", "bottom middle", "bottom right")  # 3x3 cells of the primary object's centre
BACKGROUNDS = ("plain", "striped", "checkered", "noisy", "gradient")
# (shape, colour) pairs that never appear as the primary object unless holdout=True: one colour per
# shape and one shape per colour (8 of 64 pairs, 12.5 %), for compositional zero-shot tests (CLIP chapter).
HELDOUT_COMBOS = (("circle", "orange"), ("square", "cyan"), ("triangle", "white"), ("star", "yellow"),
                  ("cross", "blue"), ("ring", "red"), ("diamond", "green"), ("heart", "purple"))
MAX_OBJECTS = 4
IMAGE_SIZES = (16, 512)  # smallest and largest image side in pixels

# RGB in [0, 1] of each named colour, in the order of COLOURS
_RGB = torch.tensor([[0.86, 0.12, 0.12], [0.96, 0.55, 0.08], [0.94, 0.86, 0.15], [0.15, 0.70, 0.22],
                     [0.15, 0.80, 0.85], [0.15, 0.30, 0.92], [0.62, 0.22, 0.82], [0.96, 0.96, 0.96]])
_PRIMARY_RADIUS = torch.tensor([0.19, 0.24, 0.30])  # primary radius per size, as a fraction of the image side
_SIZE_EDGES = torch.tensor([0.215, 0.27])  # radius edges between small | medium | large, for every object
_MIN_RADIUS = 0.07  # smallest distractor radius
_MAX_TILT = math.radians(15)  # rotations stay small, so a square never turns into a diamond
_CHUNK = 512  # scenes per random stream: the scenes of a chunk do not depend on n
_PIXELS_PER_RENDER = 2 ** 19  # pixels rendered at once, bounds memory at large image sizes
# scene entries with one row per object slot, (B, K, ...)
_PER_OBJECT = ("shape", "colour", "radius", "centre", "placed", "angle", "rgb", "shade", "shade_dir", "ask_yes")


def load(split: str = "train", n: int = 2000, image_size: int = 32, seed: int = 0,
         max_objects: int = MAX_OBJECTS, holdout: bool = False) -> ImageSet:
    """``n`` scenes of the ``split`` stream, rendered at ``image_size`` pixels.

    Returns an :class:`ImageSet` with labels = primary shape (``classes`` = SHAPES),
    attributes ``shape``, ``colour``, ``size``, ``position`` (of the primary), ``count``
    (index into "1", "2", ..., i.e. number of objects - 1) and ``background``, one caption
    per image, and extras:

    - ``boxes`` (N, max_objects, 4) float32: xyxy pixel edges of each object's visible
      mask (x1, y1 exclusive), zeros where absent;
    - ``num_objects`` (N,) int64; ``object_shapes``, ``object_colours`` (N, max_objects)
      int64, -1 where absent;
    - ``phrases``: per image one phrase per object ("small red circle");
    - ``instance_masks`` (N, H, W) uint8: 0 = background, k = object k;
    - ``qa``: per image a list of (question, answer) pairs.

    ``holdout=False`` never draws a primary (shape, colour) in HELDOUT_COMBOS,
    ``holdout=True`` draws only those.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split; choose one of {', '.join(SPLITS)}")
    for name, value, lo, hi in (("n", n, 1, None), ("image_size", image_size, *IMAGE_SIZES),
                                ("seed", seed, 0, None), ("max_objects", max_objects, 1, MAX_OBJECTS)):
        if (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < lo
                or (hi is not None and value > hi)):
            raise ValueError(f"{name}={value!r} must be an integer from {lo}" + (f" to {hi}" if hi else " up"))
    if not isinstance(holdout, bool):
        raise ValueError(f"holdout={holdout!r} must be True or False")
    n, size, k_max = int(n), int(image_size), int(max_objects)

    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    masks = torch.empty(n, size, size, dtype=torch.uint8)
    parts = []
    step = max(1, min(_CHUNK, _PIXELS_PER_RENDER // size ** 2))
    for chunk, start in enumerate(range(0, n, _CHUNK)):
        stream = ((seed * 1_000_003 + SPLITS.index(split)) * 2 + holdout) * 1_000_033 + chunk  # one per chunk
        g = torch.Generator().manual_seed(stream)
        scenes = _sample_scenes(g, _CHUNK, k_max, holdout)  # always a full chunk, then cut
        stop = min(n, start + _CHUNK)
        scenes = {k: v[:stop - start] for k, v in scenes.items()}
        for i in range(0, stop - start, step):
            part = {k: v[i:i + step] for k, v in scenes.items()}
            rgb, inst = _render(part, size)
            part = _keep_visible(part, inst)
            images[start + i:start + i + len(rgb)] = rgb.mul_(255).round_().to(torch.uint8)
            masks[start + i:start + i + len(rgb)] = inst
            parts.append(part)
    scenes = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return _annotate(scenes, images, masks, k_max)


def _allowed_combos(holdout: bool) -> torch.Tensor:
    """(C, 2) (shape, colour) index pairs the primary object may take."""
    held = {(SHAPES.index(s), COLOURS.index(c)) for s, c in HELDOUT_COMBOS}
    pairs = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS)) if ((s, c) in held) == holdout]
    return torch.tensor(pairs)


def _sample_scenes(g: torch.Generator, b: int, k_max: int, holdout: bool) -> dict[str, torch.Tensor]:
    """Every random choice of ``b`` scenes, in units of the image side; slot 0 is the primary object."""
    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    combos = _allowed_combos(holdout)
    combos = combos[torch.randint(len(combos), (b,), generator=g)]  # (B, 2) primary (shape, colour)
    shape = torch.randint(len(SHAPES), (b, k_max), generator=g)  # (B, K)
    colour = torch.randint(len(COLOURS), (b, k_max), generator=g)  # (B, K)
    shape[:, 0], colour[:, 0] = combos[:, 0], combos[:, 1]
    size = torch.randint(len(SIZES), (b,), generator=g)  # (B,) primary size class
    r0 = _PRIMARY_RADIUS[size] * uniform(0.93, 1.07, b)  # (B,)
    radius = (r0[:, None] * uniform(0.35, 0.55, b, k_max)).clamp_min(_MIN_RADIUS)  # (B, K)
    radius[:, 0] = r0

    # primary: a uniform 3x3 cell, then a uniform centre inside the cell that keeps the object in the image
    cell = torch.randint(9, (b,), generator=g)  # (B,)
    lo = torch.stack([cell % 3, cell // 3], 1) / 3  # (B, 2) x, y of the cell's corner
    lo, hi = torch.maximum(lo, r0[:, None]), torch.minimum(lo + 1 / 3, 1 - r0[:, None])
    centre = torch.empty(b, k_max, 2)
    centre[:, 0] = lo + (hi - lo) * torch.rand(b, 2, generator=g)

    # distractors: the first of 8 candidate centres that clears the primary and overlaps the others little
    wanted = torch.randint(1, k_max + 1, (b,), generator=g)  # (B,) objects asked for; some may not fit
    placed = torch.zeros(b, k_max, dtype=torch.bool)
    placed[:, 0] = True
    for k in range(1, k_max):
        cand = radius[:, k, None, None] + (1 - 2 * radius[:, k, None, None]) * torch.rand(b, 8, 2, generator=g)
        dist = (cand[:, :, None] - centre[:, None, :k]).norm(dim=-1)  # (B, 8, k)
        gap = 0.8 * (radius[:, :k] + radius[:, k, None])  # (B, k)
        gap[:, 0] = radius[:, 0] + radius[:, k] + 0.02
        ok = ((dist >= gap[:, None]) | ~placed[:, None, :k]).all(-1) & (k < wanted)[:, None]  # (B, 8)
        centre[:, k] = cand[torch.arange(b), ok.int().argmax(1)]
        placed[:, k] = ok.any(1)

    rgb = (_RGB[colour] + uniform(-0.06, 0.06, b, k_max, 3)) * uniform(0.85, 1.1, b, k_max, 1)  # (B, K, 3)
    grey = uniform(0.15, 0.5, b, 1)  # (B, 1) grey level of the first background colour
    grey = torch.stack([grey, grey + uniform(-0.2, 0.2, b, 1)], 1)  # (B, 2, 1) the second differs by <= 0.2
    bg = grey + uniform(-0.06, 0.06, b, 2, 3)  # (B, 2, 3) two muted, tinted colours
    return dict(
        shape=shape, colour=colour, size=size, cell=cell, radius=radius, centre=centre, placed=placed,
        angle=uniform(-_MAX_TILT, _MAX_TILT, b, k_max), rgb=rgb.clamp(0, 1),
        shade=uniform(0.0, 0.3, b, k_max), shade_dir=uniform(0, 2 * math.pi, b, k_max),
        background=torch.randint(len(BACKGROUNDS), (b,), generator=g),
        bg_rgb=bg.clamp(0, 1),
        bg_freq=uniform(2.5, 6.0, b), bg_angle=uniform(0, math.pi, b), bg_phase=uniform(0, 1, b, 2),
        bg_noise=torch.rand(b, 1, 6, 6, generator=g),
        ask_yes=torch.rand(b, k_max, generator=g), ask_no=torch.rand(b, len(SHAPES), generator=g),
    )


# Inside tests of each shape in local units: u right, v up, the shape within the unit circle.
def _star(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Five points: fold the angle into [0, pi/5] from the nearest tip, then test the edge tip -> valley."""
    sector = 2 * math.pi / 5
    a = torch.remainder(torch.atan2(v, u) - math.pi / 2, sector)
    a = torch.minimum(a, sector - a)
    rho = torch.sqrt(u * u + v * v)
    px, py = rho * torch.cos(a), rho * torch.sin(a)
    vx, vy = 0.42 * math.cos(sector / 2) - 1.0, 0.42 * math.sin(sector / 2)  # valley - tip
    return vx * py - vy * (px - 1.0) >= 0


def _heart(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Two round lobes (a deep notch between them) on top of a V that ends in a point at the bottom."""
    lobes = (u.abs() - 0.4) ** 2 + (v - 0.3) ** 2 <= 0.45 ** 2
    return lobes | ((v <= 0.3) & (u.abs() <= 0.68 * (v + 0.95)))


_INSIDE = {
    "circle": lambda u, v: u * u + v * v <= 0.85 ** 2,
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.70,
    "triangle": lambda u, v: (v >= -0.5) & (0.866 * u.abs() + 0.5 * v <= 0.5),
    "star": _star,
    "cross": lambda u, v: (torch.minimum(u.abs(), v.abs()) <= 0.28) & (torch.maximum(u.abs(), v.abs()) <= 0.9),
    "ring": lambda u, v: (u * u + v * v - 0.52).abs() <= 0.3,  # 0.47 <= radius <= 0.91
    "diamond": lambda u, v: u.abs() / 0.6 + v.abs() / 0.98 <= 1,
    "heart": _heart,
}


def _by_kind(kind: torch.Tensor, n_kinds: int, fn: Callable[[int, torch.Tensor], torch.Tensor],
             out: torch.Tensor) -> torch.Tensor:
    """Fill ``out[idx] = fn(j, idx)`` with ``idx`` the images whose ``kind`` is ``j``: one pass per kind."""
    for j in range(n_kinds):
        idx = (kind == j).nonzero().squeeze(1)
        if len(idx):
            out[idx] = fn(j, idx)
    return out


def _render(s: dict[str, torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels (B, 3, H, W) float in [0, 1] and the instance-id map (B, H, W) uint8 of the scenes ``s``."""
    b, k_max = s["shape"].shape
    grid = (torch.arange(size) + 0.5) / size  # (W,) pixel centres
    x, y = grid.view(1, 1, size), grid.view(1, size, 1)

    def background(kind: int, idx: torch.Tensor) -> torch.Tensor:  # (b, H, W) mixing weight of the 2 colours
        if BACKGROUNDS[kind] == "plain":
            return torch.zeros(len(idx), size, size)
        if BACKGROUNDS[kind] == "noisy":
            return F.interpolate(s["bg_noise"][idx], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        a, f, ph = s["bg_angle"][idx, None, None], s["bg_freq"][idx, None, None], s["bg_phase"][idx, :, None, None]
        along, across = x * torch.cos(a) + y * torch.sin(a), y * torch.cos(a) - x * torch.sin(a)  # (b, H, W)
        if BACKGROUNDS[kind] == "striped":
            return (0.5 + 2 * torch.sin(2 * math.pi * (f * along + ph[:, 0]))).clamp(0, 1)
        if BACKGROUNDS[kind] == "checkered":
            return torch.remainder(torch.floor(f * along + ph[:, 0]) + torch.floor(f * across + ph[:, 1]), 2)
        return (0.5 + along - (torch.cos(a) + torch.sin(a)) / 2).clamp(0, 1)  # gradient through the centre

    t = _by_kind(s["background"], len(BACKGROUNDS), background, torch.empty(b, size, size))  # (B, H, W)
    c0, c1 = s["bg_rgb"][:, 0, :, None, None], s["bg_rgb"][:, 1, :, None, None]  # (B, 3, 1, 1)
    img = c0 + (c1 - c0) * t[:, None]  # (B, 3, H, W)
    inst = torch.zeros(b, size, size, dtype=torch.uint8)

    for k in range(k_max):
        idx = s["placed"][:, k].nonzero().squeeze(1)
        cx, cy = s["centre"][idx, k, 0, None, None], s["centre"][idx, k, 1, None, None]  # (b, 1, 1)
        angle, r = s["angle"][idx, k, None, None], s["radius"][idx, k, None, None]  # (b, 1, 1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        dx, dy = (x - cx) / r, (y - cy) / r  # (b, 1, W), (b, H, 1)
        u = cos * dx + sin * dy  # (b, H, W) local coordinates, v pointing up
        v = sin * dx - cos * dy
        inside = _by_kind(s["shape"][idx, k], len(SHAPES), lambda j, i: _INSIDE[SHAPES[j]](u[i], v[i]),
                          torch.empty(len(idx), size, size, dtype=torch.bool))  # (b, H, W)
        d = s["shade_dir"][idx, k, None, None]
        light = 1 - s["shade"][idx, k, None, None] * (0.5 - 0.5 * (u * torch.cos(d) + v * torch.sin(d)))
        colour = s["rgb"][idx, k, :, None, None] * light[:, None]  # (b, 3, H, W)
        img[idx] = torch.where(inside[:, None], colour, img[idx])
        inst[idx] = torch.where(inside, k + 1, inst[idx]).to(torch.uint8)
    return img.clamp_(0, 1), inst


def _keep_visible(s: dict[str, torch.Tensor], inst: torch.Tensor) -> dict[str, torch.Tensor]:
    """Drop objects with no visible pixel (too small for the resolution, or not placed), move the
    rest to the first slots in drawing order and renumber ``inst`` in place to match."""
    b, k_max = s["placed"].shape
    ids = torch.arange(1, k_max + 1, dtype=torch.uint8)
    visible = (inst.view(b, 1, -1) == ids.view(1, -1, 1)).any(-1)  # (B, K)
    order = torch.argsort((~visible).int() * k_max + torch.arange(k_max), dim=1)  # visible first, stable
    lut = torch.cat([torch.zeros(b, 1, dtype=torch.uint8), (visible.cumsum(1) * visible).to(torch.uint8)], 1)
    inst.copy_(lut.gather(1, inst.view(b, -1).long()).view_as(inst))
    out = dict(s, placed=visible)
    for key in _PER_OBJECT:
        v = out[key]
        out[key] = v.gather(1, order.view(b, k_max, *[1] * (v.ndim - 2)).expand_as(v))
    return out


def mask_boxes(inst: torch.Tensor, k_max: int) -> torch.Tensor:
    """(N, K, 4) xyxy pixel edges of each instance's mask, zeros where it has no pixel."""
    n, h, w = inst.shape
    boxes = torch.zeros(n, k_max, 4)
    for k in range(k_max):
        m = inst == k + 1  # (N, H, W)
        rows, cols = m.any(2), m.any(1)  # (N, H), (N, W)
        boxes[:, k] = torch.stack([cols.int().argmax(1), rows.int().argmax(1),
                                   w - cols.flip(1).int().argmax(1), h - rows.flip(1).int().argmax(1)], 1).float()
        boxes[:, k] *= rows.any(1, keepdim=True)
    return boxes


def _annotate(s: dict[str, torch.Tensor], images: torch.Tensor, masks: torch.Tensor, k_max: int) -> ImageSet:
    """Labels, attributes, captions, phrases and question-answer pairs from the scene parameters."""
    present = s["placed"]  # (N, K)
    count = present.sum(1)  # (N,)
    obj_size = torch.bucketize(s["radius"], _SIZE_EDGES)  # (N, K) size name of every object
    shapes = torch.where(present, s["shape"], -1)
    colours = torch.where(present, s["colour"], -1)
    delta = s["centre"][:, min(1, k_max - 1)] - s["centre"][:, 0]  # (N, 2) object 2 relative to the primary
    horizontal = delta[:, 0].abs() >= delta[:, 1].abs()
    relation = torch.where(horizontal, torch.where(delta[:, 0] > 0, 0, 1), torch.where(delta[:, 1] > 0, 2, 3))
    ask_yes = torch.where(present, s["ask_yes"], -1).argmax(1)  # (N,) a random present object
    seen = torch.where(present, s["shape"], s["shape"][:, :1])  # (N, K) shapes in the image
    ask_no = s["ask_no"].scatter(1, seen, -1.0).argmax(1)  # (N,) a random absent shape

    captions, phrases, qa = [], [], []
    rows = zip(count.tolist(), shapes.tolist(), colours.tolist(), obj_size.tolist(), relation.tolist(),
               s["cell"].tolist(), s["background"].tolist(), ask_yes.tolist(), ask_no.tolist())
    for c, shp, col, sz, rel, cell, bg, yes, no in rows:
        words = [f"{SIZES[sz[k]]} {COLOURS[col[k]]} {SHAPES[shp[k]]}" for k in range(c)]
        text = "a " + words[0]
        if c > 1:
            text += " " + ("left of", "right of", "above", "below")[rel] + " a " + words[1]
        if c > 2:
            text += ", with " + " and ".join("a " + w for w in words[2:]) + ","
        captions.append(f"{text} on a {BACKGROUNDS[bg]} background")
        phrases.append(words)
        name = SHAPES[shp[0]]
        pairs = [("how many objects are there?", str(c)), ("what shape is the largest object?", name),
                 (f"is there a {SHAPES[shp[yes]]}?", "yes"), (f"is there a {SHAPES[no]}?", "no")]
        if shp[:c].count(shp[0]) == 1:  # the primary is the only object of its shape
            pairs += [(f"what colour is the {name}?", COLOURS[col[0]]), (f"what size is the {name}?", SIZES[sz[0]]),
                      (f"where is the {name}?", POSITIONS[cell])]
        qa.append(pairs + [("what is the background?", BACKGROUNDS[bg])])

    return ImageSet(
        name="shapes", images=images, labels=s["shape"][:, 0].clone(),
        classes=list(SHAPES),
        attributes={"shape": s["shape"][:, 0].clone(), "colour": s["colour"][:, 0].clone(), "size": s["size"],
                    "position": s["cell"], "count": count - 1, "background": s["background"]},
        attribute_values={"shape": list(SHAPES), "colour": list(COLOURS), "size": list(SIZES),
                          "position": list(POSITIONS), "count": [str(i) for i in range(1, k_max + 1)],
                          "background": list(BACKGROUNDS)},
        captions=captions,
        extras={"boxes": mask_boxes(masks, k_max), "num_objects": count, "phrases": phrases,
                "instance_masks": masks, "object_shapes": shapes, "object_colours": colours, "qa": qa},
    )
