"""Region level (survey section 2.6): detection as phrase grounding, GLIP in miniature.

A detector with a fixed classifier can only name the classes it was trained on. GLIP [0] (fig. 2)
replaces the classifier with the *alignment* of region features and the embeddings of the words of a
prompt, so a detector is a grounding model and a category is just a text: "find: heart. ring.". With

- ``F``: a feature map of the image encoder (here a small feature pyramid on the backbone's last three
  stages, or a ViT's patch grid), one candidate region per cell (``stride`` pixels apart);
- ``O``: the region embeddings (B, HW, E), unit length, one per cell;
- ``P``: the phrase embeddings (Q, E), unit length: a **locked** text encoder's, through a trained linear
  map (the identity at the start) that can stretch the directions that tell phrases apart;

the alignment logits are ``S = s · O Pᵀ + b`` (GLIP's ``S_ground = O Pᵀ``, with a learned scale ``s``
and a bias ``b`` that starts at the focal-loss prior, ``-log((1 - π) / π)``, π = 0.01, as in [3] sec. 4.1).
Proposals are **dense and anchor-free**, CenterNet-style [2]: each cell predicts the box it sits in,
as the offset of the box centre from the cell centre and the log of its width and height, in strides.
The cells within ``radius`` strides of an object's centre are its positives (the nearest cell always),
the rest are background for every phrase.

- **Alignment loss**: the sigmoid focal loss [3] (``torchvision.ops.sigmoid_focal_loss``) over every
  (cell, phrase) pair of the batch, summed and divided by the positive cells: a cell's target is 1 for
  each text that names its object (the phrase "small red star", the category "star", and "object").
- **Box loss**: generalised IoU [4] (``torchvision.ops.generalized_box_iou_loss``) plus L1 on the box
  in image-side units, on the positive cells.
- **Inference**: score = sigmoid(S); the top cells per phrase, then ``torchvision.ops.batched_nms``.

Open vocabulary comes from where the towers start, as in OWL-ViT [1]: both are a contrastive image-text
model's (chapter 02's CLIP), the text tower stays locked, and the region embeddings start as the image
tower's own dense features through its projection (MaskCLIP's reading of a CLIP, [5]), so a category
that no training box was labelled with can still be named by its text (how well, chapter 08 measures).
GLIP's deep fusion (cross-attention between image and text before the alignment) is left out, as in the
paper's GLIP-T (A).

- [0] GLIP, Li et al., 2022, https://arxiv.org/abs/2112.03857
- [1] OWL-ViT, Minderer et al., 2022, https://arxiv.org/abs/2205.06230
- [2] CenterNet (Objects as Points), Zhou et al., 2019, https://arxiv.org/abs/1904.07850
- [3] Focal loss (RetinaNet), Lin et al., 2017, https://arxiv.org/abs/1708.02002
- [4] Generalized IoU, Rezatofighi et al., 2019, https://arxiv.org/abs/1902.09630
- [5] MaskCLIP, Zhou et al., 2022, https://arxiv.org/abs/2112.01071

>>> from vfm_lab.backbones import build_backbone
>>> _ = torch.manual_seed(0)
>>> table = {"a red star": torch.randn(8), "star": torch.randn(8), "object": torch.randn(8)}
>>> model = Grounder(build_backbone("convnet-s"), lambda texts: torch.stack([table[t] for t in texts]),
...                  object_texts=[[["a red star", "star", "object"]]], boxes=torch.tensor([[[4., 6., 20., 22.]]]))
>>> out = model({"image": torch.rand(1, 3, 32, 32), "index": torch.tensor([0])})
>>> sorted(out), model.grid, model.stride
(['align_loss', 'box_loss', 'loss', 'positives'], 8, 4.0)
>>> found = model.detect(torch.rand(2, 3, 32, 32), ["star", "object"])
>>> len(found), found[0]["boxes"].shape[1], bool((found[0]["scores"].diff() <= 0).all())  # best first
(2, 4, True)
"""
from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

from vfm_lab.backbones import Backbone, FeaturePyramid
from vfm_lab.engine import Method

TextEncoder = Callable[[Sequence[str]], torch.Tensor]  # texts -> (Q, E) embeddings, locked (no gradient)
PRIOR = 0.01  # the foreground probability every alignment logit starts at ([3] sec. 4.1)


def parse_prompt(prompt: str) -> list[str]:
    """The phrases of a GLIP-style prompt: "find: heart. ring." -> ["heart", "ring"] (a leading "find:" is
    optional; phrases are separated by full stops or commas).

    >>> parse_prompt("find: heart. ring."), parse_prompt("small red star")
    (['heart', 'ring'], ['small red star'])
    """
    body = re.sub(r"^\s*find\s*:", "", prompt.strip(), flags=re.IGNORECASE)
    phrases = [p.strip() for p in re.split(r"[.,;]", body) if p.strip()]
    if not phrases:
        raise ValueError(f"prompt={prompt!r} names nothing to find; write phrases separated by full stops, "
                         f"e.g. 'find: heart. ring.'")
    return phrases


def locations(grid: int, stride: float, device: torch.device | None = None) -> torch.Tensor:
    """Cell centres (grid * grid, 2) as (x, y) pixels, in raster order (row by row).

    >>> locations(2, 4.0).tolist()
    [[2.0, 2.0], [6.0, 2.0], [2.0, 6.0], [6.0, 6.0]]
    """
    c = (torch.arange(grid, device=device, dtype=torch.float32) + 0.5) * stride
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], 1)


def assign(points: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, stride: float,
           radius: float = 0.75) -> torch.Tensor:
    """The object of each cell: (B, HW) index into the K objects, -1 for background.

    points (HW, 2) cell centres; boxes (B, K, 4) xyxy; valid (B, K). A cell is a positive of an object when
    its centre lies inside the box and within ``radius`` strides of the box centre (in x and in y); the cell
    nearest each box centre is always one. A cell claimed by several objects takes the smallest."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # (B, K, 2)
    d = points[None, :, None, :] - centre[:, None]  # (B, HW, K, 2)
    inside = ((points[None, :, None, :] > boxes[:, None, :, :2]) & (points[None, :, None, :] < boxes[:, None, :, 2:])).all(-1)
    near = (d.abs() < radius * stride).all(-1) & inside  # (B, HW, K)
    nearest = d.pow(2).sum(-1).argmin(1)  # (B, K) the cell nearest each centre
    near.scatter_(1, nearest[:, None, :], True)
    near &= valid[:, None, :]
    area = (boxes[..., 2:] - boxes[..., :2]).prod(-1)  # (B, K)
    cost = torch.where(near, area[:, None, :], torch.inf)
    best = cost.argmin(-1)  # (B, HW)
    return torch.where(near.any(-1), best, -1)


def decode(offsets: torch.Tensor, points: torch.Tensor, stride: float) -> torch.Tensor:
    """Boxes xyxy (..., HW, 4) from the cells' predictions (..., HW, 4): the centre's offset from the cell
    centre and log width and height, all in strides.

    >>> decode(torch.tensor([[0.5, 0.0, math.log(2), 0.0]]), torch.tensor([[2.0, 2.0]]), 4.0).tolist()
    [[0.0, 0.0, 8.0, 4.0]]
    """
    centre = points + offsets[..., :2] * stride
    size = offsets[..., 2:].clamp(max=8).exp() * stride  # clamped: a bad step early on cannot overflow
    return torch.cat([centre - size / 2, centre + size / 2], -1)


def flip_boxes(images: torch.Tensor, boxes: torch.Tensor, p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image mirrored left to right with probability ``p``, its boxes (B, K, 4) xyxy with it: the one
    augmentation that keeps every phrase true (the phrases name sizes, colours and shapes, not sides).

    >>> flip_boxes(torch.zeros(1, 3, 8, 8), torch.tensor([[[1., 2., 3., 4.]]]), p=1.0)[1].tolist()
    [[[5.0, 2.0, 7.0, 4.0]]]
    """
    flip = torch.rand(len(images), device=images.device) < p
    side = images.shape[-1]
    mirrored = torch.stack([side - boxes[..., 2], boxes[..., 1], side - boxes[..., 0], boxes[..., 3]], -1)
    return (torch.where(flip[:, None, None, None], images.flip(-1), images),
            torch.where(flip[:, None, None], mirrored, boxes))


def alignment_logits(regions: torch.Tensor, phrases: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
                     ) -> torch.Tensor:
    """GLIP's region-word alignment as logits: ``s · O Pᵀ + b`` for unit-length region embeddings
    (B, HW, E) and phrase embeddings (Q, E): (B, HW, Q)."""
    return scale * regions @ phrases.T + bias


def conv_tower(width: int) -> nn.Sequential:
    """Two 3x3 conv-GroupNorm-ReLU layers of ``width`` channels: the dense head on the feature pyramid (shared with
    chapter 09's :mod:`~vfm_lab.methods.lseg`)."""
    return nn.Sequential(*[m for _ in range(2) for m in (nn.Conv2d(width, width, 3, padding=1),
                                                         nn.GroupNorm(8 if width % 8 == 0 else 1, width), nn.ReLU())])


def text_projections(dim: int, text_dim: int, image_proj: nn.Linear | None = None) -> tuple[nn.Linear, nn.Linear]:
    """The image tower's projection ``image_proj`` from its ``dim`` channels into the ``text_dim``-dimensional space of
    a locked text encoder (a new one when None), and ``text_proj``, a trained linear map on the locked text
    embeddings, the identity at the start (shared with :mod:`~vfm_lab.methods.lseg`)."""
    image_proj = image_proj if image_proj is not None else nn.Linear(dim, text_dim, bias=False)
    if image_proj.out_features != text_dim:
        raise ValueError(f"image_proj maps to {image_proj.out_features} dimensions, the text encoder gives "
                         f"{text_dim}: take both towers from the same model")
    text_proj = nn.Linear(text_dim, text_dim, bias=False)
    nn.init.eye_(text_proj.weight)
    return image_proj, text_proj


def embed_locked(text_encoder: TextEncoder, texts: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
    """Unit-length embeddings (Q, E) of ``texts`` from a locked text encoder, without gradient, on ``device``."""
    with torch.no_grad():
        emb = F.normalize(text_encoder(list(texts)).float(), dim=-1)
    return emb if device is None else emb.to(device)


class Grounder(Method):
    """An image encoder with a feature map, dense box regression, and region-phrase alignment in place of a
    classifier (the module notes).

    backbone: a vfm_lab backbone (convnets: a feature pyramid on the last three stages; ViTs: the patch grid).
    text_encoder: texts -> embeddings (Q, E); called once per new text, without gradient (the tower is locked).
    object_texts: per training image, per object, the texts that name it (its phrase, its category, ...).
    boxes: (N, K, 4) xyxy pixels of those objects (rows past an image's objects are ignored).
    image_proj: the projection of the pretrained image tower into the text space (trained further); None:
    a fresh one. ``width``: channels of the pyramid and the box head. ``radius``: see :func:`assign`.
    ``box_weight``: the weight of the box loss against the alignment loss.
    """

    def __init__(self, backbone: Backbone, text_encoder: TextEncoder, object_texts: Sequence[Sequence[Sequence[str]]],
                 boxes: torch.Tensor, *, image_proj: nn.Linear | None = None, width: int = 128, radius: float = 0.75,
                 box_weight: float = 2.0, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        if len(object_texts) != len(boxes) or boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"object_texts has {len(object_texts)} images and boxes the shape {tuple(boxes.shape)}; "
                             f"give one list of objects per image and boxes (N, K, 4) xyxy")
        if width < 1 or radius <= 0 or box_weight < 0:
            raise ValueError(f"need width >= 1, radius > 0, box_weight >= 0; got width={width}, radius={radius}, "
                             f"box_weight={box_weight}")
        self.backbone, self.augment = backbone, augment
        self.text_encoder = text_encoder  # not a module: it stays out of the optimizer, DDP and checkpoints
        self.radius, self.box_weight, self.focal_alpha, self.focal_gamma = radius, box_weight, focal_alpha, focal_gamma
        self.texts: list[str] = sorted({t for image in object_texts for obj in image for t in obj})
        table = self.embed_texts(self.texts)  # (T, E), computed once: the tower is locked
        self.register_buffer("text_table", table, persistent=False)
        ids = {t: i for i, t in enumerate(self.texts)}
        k, j = boxes.shape[1], max(len(obj) for image in object_texts for obj in image)
        self.object_text_ids = torch.full((len(boxes), k, j), -1)  # (N, K, J) on the CPU
        for n, image in enumerate(object_texts):
            for o, obj in enumerate(image[:k]):
                self.object_text_ids[n, o, :len(obj)] = torch.tensor([ids[t] for t in obj])
        self.boxes = boxes.float()  # (N, K, 4) on the CPU, read per batch

        dim, text_dim = backbone.embed_dim, table.shape[1]
        self.pyramid = FeaturePyramid(backbone, width)
        self.grid, self.stride = self.pyramid.grid, self.pyramid.stride
        self.tower = conv_tower(width)
        self.box_head = nn.Conv2d(width, 4, 3, padding=1)
        self.refine = nn.Conv2d(width, dim, 1)  # what the pyramid adds to the dense features, zero at the start
        nn.init.zeros_(self.refine.weight)
        nn.init.zeros_(self.refine.bias)
        self.image_proj, self.text_proj = text_projections(dim, text_dim, image_proj)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # s = exp(.) = 10 at the start
        self.logit_bias = nn.Parameter(torch.tensor(-math.log((1 - PRIOR) / PRIOR)))
        self.register_buffer("points", locations(self.grid, self.stride), persistent=False)

    # ---- the towers ------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length embeddings (Q, E) of ``texts`` from the locked text encoder, on this model's device."""
        table = getattr(self, "text_table", None)
        return embed_locked(self.text_encoder, texts, None if table is None else table.device)

    def regions(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-length region embeddings (B, HW, E) and box predictions (B, HW, 4) (see :func:`decode`)."""
        pyramid, dense = self.pyramid(self.backbone, images)
        h = self.tower(pyramid)
        feats = (dense + self.refine(h)).flatten(2).transpose(1, 2)  # (B, HW, D)
        emb = F.normalize(self.image_proj(feats).float(), dim=-1)
        return emb, self.box_head(h).flatten(2).transpose(1, 2).float()

    def logits(self, regions: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
        """:func:`alignment_logits` of the region embeddings and the phrases' locked embeddings after the trained
        linear map ``text_proj``, with this model's scale and bias, in float32 (also under autocast)."""
        phrases = F.normalize(self.text_proj(phrases).float(), dim=-1)
        return alignment_logits(regions, phrases, self.logit_scale.exp(), self.logit_bias).float()

    # ---- the loss --------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        index = batch["index"].cpu()
        boxes, text_ids = self.boxes[index].to(x.device), self.object_text_ids[index].to(x.device)  # (B, K, 4), (B, K, J)
        valid = (text_ids >= 0).any(-1)  # (B, K)
        if self.augment is not None and self.training:
            x, boxes = self.augment(x, boxes)
        regions, offsets = self.regions(x)
        owner = assign(self.points, boxes, valid, self.stride, self.radius)  # (B, HW)
        batch_ids = text_ids[text_ids >= 0].unique()  # (Q,) the batch's texts: each other's negatives
        logits = self.logits(regions, self.text_table[batch_ids])  # (B, HW, Q)
        names = (text_ids[..., None] == batch_ids).any(2)  # (B, K, Q): which of the batch's texts name object k
        pos = owner >= 0
        target = torch.zeros_like(logits)
        b, cell = pos.nonzero(as_tuple=True)
        target[b, cell] = names[b, owner[b, cell]].float()
        n_pos = max(1, int(pos.sum()))
        align = sigmoid_focal_loss(logits, target, self.focal_alpha, self.focal_gamma, reduction="sum") / n_pos
        pred = decode(offsets[b, cell], self.points[cell], self.stride)  # (P, 4)
        truth = boxes[b, owner[b, cell]]
        side = x.shape[-1]
        box = (generalized_box_iou_loss(pred, truth, reduction="mean") + F.l1_loss(pred / side, truth / side)
               if len(b) else offsets.sum() * 0)
        return {"loss": align + self.box_weight * box, "align_loss": align.detach(), "box_loss": box.detach(),
                "positives": torch.tensor(float(n_pos))}

    # ---- inference -------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, images: torch.Tensor, phrases: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell, the probability that it is an instance of each phrase (B, HW, Q), and its box (B, HW, 4)."""
        regions, offsets = self.regions(images)
        probs = self.logits(regions, self.embed_texts(phrases).to(regions)).sigmoid()
        return probs, decode(offsets, self.points, self.stride).clamp(0, images.shape[-1])

    @torch.no_grad()
    def detect(self, images: torch.Tensor, phrases: Sequence[str], *, top_k: int = 100, iou: float = 0.5,
               min_score: float = 0.0) -> list[dict[str, torch.Tensor]]:
        """Detections per image: ``boxes`` (M, 4) xyxy pixels, ``scores`` (M,), ``labels`` (M,) indices into
        ``phrases``. The ``top_k`` best (cell, phrase) pairs above ``min_score``, then NMS per phrase at ``iou``."""
        probs, boxes = self.scores(images, phrases)
        out = []
        for p, bx in zip(probs, boxes):
            s, flat = p.flatten().topk(min(top_k, p.numel()))
            cell, label = flat // p.shape[1], flat % p.shape[1]
            keep = s > min_score
            cell, label, s = cell[keep], label[keep], s[keep]
            kept = batched_nms(bx[cell], s, label, iou)
            out.append({"boxes": bx[cell[kept]], "scores": s[kept], "labels": label[kept]})
        return out

    @torch.no_grad()
    def ground(self, images: torch.Tensor, phrases: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The best box of each image for its own phrase (``phrases[i]`` for ``images[i]``): boxes (B, 4) and
        their scores (B,)."""
        if len(phrases) != len(images):
            raise ValueError(f"{len(phrases)} phrases for {len(images)} images: ground takes one phrase per image")
        unique = sorted(set(phrases))
        probs, boxes = self.scores(images, unique)
        col = torch.tensor([unique.index(p) for p in phrases], device=probs.device)
        own = probs.gather(2, col[:, None, None].expand(-1, probs.shape[1], 1))[..., 0]  # (B, HW)
        score, cell = own.max(1)
        return boxes[torch.arange(len(images)), cell], score
