"""Pixel level (survey section 2.6): a promptable segmenter, SAM in miniature.

SAM [0] (fig. 4) splits segmentation in two unequal parts. A heavy **image encoder** runs once per image and
gives an image embedding; a light **mask decoder** turns that embedding and a prompt (points, a box, a previous
mask) into masks, cheaply enough to run at every click. Here:

- **Image encoder**: a vfm_lab backbone, its :class:`~vfm_lab.backbones.FeaturePyramid` (stride 4), then SAM's
  neck (1x1 conv, LayerNorm, 3x3 conv, LayerNorm) to ``dim`` channels: (B, dim, g, g).
- **Prompt encoder** (``segment_anything``'s ``PromptEncoder``, Meta's code): points and box corners as random
  Fourier features of their coordinates [1] plus a learned embedding per kind (foreground point, background point,
  top-left corner, bottom-right corner); a previous mask's logits through a small conv net, added to the image
  embedding.
- **Mask decoder** (``segment_anything``'s ``TwoWayTransformer`` and ``MaskDecoder`` modules): output tokens (one
  for IoU, one per mask) and the prompt tokens attend to the image embedding and it to them (two-way), then the
  embedding is upsampled 4x and each mask token, through an MLP, becomes a per-pixel dot product: 3 masks for
  ambiguity (a click on a ring: the ring, its hole, both?) and a predicted IoU for each. The masks come out at
  4 g pixels: the image size. Every prompt here gets the three masks: SAM's fourth mask token, a single mask for
  prompts that leave no ambiguity, is not trained (its MLP is frozen, so that DDP does not wait for its gradient;
  trained on the follow-up clicks, it halved the first click's mIoU of a short run).
- **Loss** ([0] sec. 3 and appendix A): focal and dice, 20 : 1, on the best of the 3 masks only (the one with the
  lowest loss), plus the mean squared error between each mask's predicted IoU and its IoU with the true mask.
- **Training prompts**, as SAM simulates an annotator: a first prompt, a point inside the object or a box jittered
  by noise of 10 % of its side, with equal chance; then follow-up points drawn from the error region of the previous
  prediction (foreground where it missed the object, background where it spilled), with the previous mask logits
  fed back as a prompt. Every click adds to the loss. (With ``clicks=1`` no mask is fed back: the mask prompt's
  convs are frozen too.)

``decode`` batches one prompt set per image (SAM's decoder repeats an image's embedding for each of its prompts:
the same lines with the repeat left out).

- [0] Segment Anything, Kirillov et al., 2023, https://arxiv.org/abs/2304.02643
- [1] Fourier features, Tancik et al., 2020, https://arxiv.org/abs/2006.10739

>>> from vfm_lab.backbones import build_backbone
>>> _ = torch.manual_seed(0)
>>> masks = torch.zeros(2, 32, 32, dtype=torch.uint8); masks[:, 4:12, 6:20] = 1; masks[1, 20:30, 20:30] = 2
>>> model = PromptableSegmenter(build_backbone("convnet-s"), masks, dim=32)
>>> out = model({"image": torch.rand(2, 3, 32, 32), "index": torch.tensor([0, 1])})
>>> sorted(out), model.grid
(['dice_loss', 'focal_loss', 'iou_loss', 'loss'], 8)
>>> logits, iou = model.decode(model.encode_image(torch.rand(2, 3, 32, 32)), points=torch.tensor([[[8., 8.]], [[25., 25.]]]),
...                            labels=torch.ones(2, 1))
>>> logits.shape, iou.shape                                    # 3 masks per prompt, at the image size
(torch.Size([2, 3, 32, 32]), torch.Size([2, 3]))
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from vfm_lab.backbones import Backbone, FeaturePyramid
from vfm_lab.data.shapes import mask_boxes
from vfm_lab.engine import Method
from vfm_lab.runtime import eval_mode

NUM_MASKS = 3  # SAM's multimask output: whole, part, subpart
FOCAL_WEIGHT, DICE_WEIGHT = 20.0, 1.0  # [0] appendix A: "a linear combination of focal loss and dice loss in a 20:1 ratio"


def sample_points(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One pixel drawn uniformly inside each mask (B, H, W) bool, as (B, 2) (x, y) pixel indices; an empty mask
    gives its image centre."""
    b, h, w = masks.shape
    weights = masks.flatten(1).float()
    empty = weights.sum(1) == 0
    weights[empty] = 1.0
    flat = torch.multinomial(weights, 1, generator=generator)[:, 0]
    points = torch.stack([flat % w, flat // w], 1).float()
    points[empty] = torch.tensor([w / 2, h / 2], device=masks.device)
    return points


def jitter_boxes(boxes: torch.Tensor, size: int, noise: float = 0.1, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """Boxes (B, 4) xyxy with noise of standard deviation ``noise`` times each side (at most 20 pixels, [0] appendix
    A) on every coordinate, kept inside the image and at least a pixel wide."""
    side = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    std = (noise * side).clamp(max=20.0)
    out = boxes + std * torch.randn(boxes.shape, generator=generator, device=boxes.device)
    out = out.clamp(0, size)
    return torch.cat([out[:, :2], torch.maximum(out[:, 2:], out[:, :2] + 1)], 1)


def error_points(predicted: torch.Tensor, truth: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's follow-up click: a pixel drawn uniformly from the error region of each prediction (B, H, W) bool
    against the truth, labelled 1 (foreground) where the prediction missed the object and 0 where it spilled over.
    Returns points (B, 2) and labels (B,); a perfect prediction gets a foreground click inside the object."""
    error = predicted != truth
    perfect = ~error.flatten(1).any(1)
    error[perfect] = truth[perfect]
    points = sample_points(error, generator)
    x, y = points[:, 0].long(), points[:, 1].long()
    labels = truth[torch.arange(len(truth), device=truth.device), y, x].float()
    return points, labels


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Dice of the soft masks, per mask: ``1 - (2 Σ p t + 1) / (Σ p + Σ t + 1)`` over the pixels (..., H, W)."""
    p = logits.sigmoid().flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded masks (logit > 0) with the true ones, per mask (..., H, W) -> (...)."""
    pred = logits > 0
    t = target.bool()
    inter = (pred & t).flatten(-2).sum(-1).float()
    union = (pred | t).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


class PromptableSegmenter(Method):
    """SAM in miniature (the module notes): ``encode_image`` once per image, ``decode`` per prompt.

    backbone: a vfm_lab backbone. masks: (N, H, W) uint8 instance ids of the training images (0: background),
    read per batch: each step segments one random object per image. ``dim``: channels of the image embedding, the
    prompts and the decoder; ``depth``, ``heads``, ``mlp_dim``: the two-way transformer. ``clicks``: prompts per
    object in training (the first a point or a box, the rest error points). ``box_noise``: see :func:`jitter_boxes`.
    """

    def __init__(self, backbone: Backbone, masks: torch.Tensor, *, dim: int = 64, depth: int = 2, heads: int = 4,
                 mlp_dim: int = 256, clicks: int = 2, box_noise: float = 0.1):
        super().__init__()
        if masks.ndim != 3 or masks.shape[1:] != (backbone.image_size, backbone.image_size):
            raise ValueError(f"masks of shape {tuple(masks.shape)} do not fit the backbone's {backbone.image_size}-pixel "
                             f"images: give instance masks (N, {backbone.image_size}, {backbone.image_size})")
        if dim % heads or dim % 8 or clicks < 1:
            raise ValueError(f"need dim divisible by heads and by 8, and clicks >= 1; got dim={dim}, heads={heads}, "
                             f"clicks={clicks}")
        self.backbone, self.clicks, self.box_noise = backbone, clicks, box_noise
        self.masks = masks  # (N, H, W) on the CPU, read per batch
        self.pyramid = FeaturePyramid(backbone, dim)
        self.grid, size = self.pyramid.grid, backbone.image_size
        if 4 * self.grid != size:
            raise ValueError(f"the decoder upsamples the {self.grid} x {self.grid} embedding 4x, to {4 * self.grid} "
                             f"pixels, not the image's {size}: use a backbone whose pyramid has stride 4 (convnet-s, "
                             f"or a ViT with 4-pixel patches)")
        self.neck = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), LayerNorm2d(dim),
                                  nn.Conv2d(dim, dim, 3, padding=1, bias=False), LayerNorm2d(dim))  # SAM's neck
        self.prompt_encoder = PromptEncoder(embed_dim=dim, image_embedding_size=(self.grid, self.grid),
                                            input_image_size=(size, size), mask_in_chans=16)
        self.decoder = MaskDecoder(transformer_dim=dim, transformer=TwoWayTransformer(depth=depth, embedding_dim=dim,
                                                                                      num_heads=heads, mlp_dim=mlp_dim),
                                   num_multimask_outputs=NUM_MASKS, iou_head_depth=3, iou_head_hidden_dim=dim)
        self.decoder.output_hypernetworks_mlps[0].requires_grad_(False)  # the single-mask output: not used
        if clicks == 1:  # one prompt per object: no previous mask to feed back
            self.prompt_encoder.mask_downscaling.requires_grad_(False)

    # ---- the two halves --------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """The image embedding (B, dim, g, g) of images in [0, 1]: the expensive half, once per image."""
        return self.neck(self.pyramid(self.backbone, images)[0])

    def decode(self, embeddings: torch.Tensor, points: torch.Tensor | None = None, labels: torch.Tensor | None = None,
               boxes: torch.Tensor | None = None, mask_logits: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits (B, 3, H, W) and predicted IoUs (B, 3) for one prompt set per embedding: ``points`` (B, n, 2)
        pixels with ``labels`` (B, n) 1 foreground / 0 background, ``boxes`` (B, 4) xyxy, ``mask_logits``
        (B, 1, H, W) a previous prediction. The cheap half: it never touches the image encoder."""
        if points is None and boxes is None:
            raise ValueError("decode needs a prompt: points (with labels), a box, or both")
        sparse, dense = self.prompt_encoder(points=None if points is None else (points, labels), boxes=boxes,
                                            masks=mask_logits)
        dec = self.decoder
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight])[None].expand(len(sparse), -1, -1)
        tokens = torch.cat([tokens, sparse], 1)  # (B, 1 + 4 + n, dim): IoU token, mask tokens, prompt tokens
        src = embeddings + dense  # (B, dim, g, g): SAM repeats an image's embedding per prompt set, here one each
        pos = self.prompt_encoder.get_dense_pe().expand(len(src), -1, -1, -1)
        hs, src = dec.transformer(src, pos, tokens)  # two-way attention: tokens <-> image
        b, c, h, w = embeddings.shape
        up = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))  # (B, dim / 8, 4h, 4w)
        mask_tokens = hs[:, 1:1 + dec.num_mask_tokens]
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps) if i], 1)
        masks = (hyper @ up.flatten(2)).view(b, -1, *up.shape[-2:])  # (B, 3, 4h, 4w) a dot product per pixel
        iou = dec.iou_prediction_head(hs[:, 0])  # (B, 4): the IoU of the single mask (token 0) is not used
        return masks.float(), iou[:, 1:].float()

    # ---- the loss --------------------------------------------------------------------
    def mask_loss(self, logits: torch.Tensor, iou: torch.Tensor, target: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Focal and dice (20 : 1) of the best of the 3 masks (B, 3, H, W) against ``target`` (B, H, W), and the
        MSE of every predicted IoU against the mask's true IoU. Returns the total, focal, dice and IoU parts."""
        t = target.float()[:, None].expand_as(logits)
        focal = sigmoid_focal_loss(logits, t, reduction="none").flatten(2).mean(-1)  # (B, 3)
        dice = dice_loss(logits, t)  # (B, 3)
        per_mask = FOCAL_WEIGHT * focal + DICE_WEIGHT * dice
        best = per_mask.argmin(1)  # only the best mask learns: the others may stay other readings of the prompt
        rows = torch.arange(len(logits), device=logits.device)
        iou_loss = F.mse_loss(iou, mask_iou(logits.detach(), t))
        return per_mask[rows, best].mean() + iou_loss, focal[rows, best].mean(), dice[rows, best].mean(), iou_loss

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        instances = self.masks[batch["index"].cpu()].to(x.device)  # (B, H, W)
        counts = instances.flatten(1).amax(1).clamp_min(1)
        pick = (torch.rand(len(x), device=x.device) * counts).long() + 1  # one object per image
        target = instances == pick[:, None, None]  # (B, H, W)
        embeddings = self.encode_image(x)  # once, for every click
        box = mask_boxes(target.to(torch.uint8).cpu(), 1)[:, 0].to(x.device)  # (B, 4) the object's own box
        boxes = jitter_boxes(box, x.shape[-1], self.box_noise)
        use_box = (torch.rand(len(x), device=x.device) < 0.5)[:, None]  # the first prompt: a box, else a point
        points = sample_points(target)[:, None]  # (B, 1, 2); a padding point (label -1) where the box is the prompt
        labels = torch.where(use_box, -1.0, 1.0)
        previous, parts = None, []
        for click in range(self.clicks):
            if click:  # SAM's follow-up: a point from the error region of the last prediction, and its logits
                new_points, new_labels = error_points(previous[:, 0] > 0, target)
                points, labels = torch.cat([points, new_points[:, None]], 1), torch.cat([labels, new_labels[:, None]], 1)
            with_points = self.decode(embeddings, points, labels, mask_logits=previous)
            with_box = self.decode(embeddings, points, labels, boxes, mask_logits=previous)
            logits, iou = (torch.where(use_box[..., None, None] if a.ndim == 4 else use_box, b, a)
                           for a, b in zip(with_points, with_box))
            parts.append(self.mask_loss(logits, iou, target))
            best = iou.argmax(1)  # the mask the model itself rates best, as at inference
            previous = logits[torch.arange(len(x), device=x.device), best][:, None].detach()  # fed back as a prompt
        loss, focal, dice, iou_loss = (torch.stack(p).mean() for p in zip(*parts))
        return {"loss": loss, "focal_loss": focal.detach(), "dice_loss": dice.detach(), "iou_loss": iou_loss.detach()}


class Predictor:
    """segment_anything's ``SamPredictor`` in miniature: :meth:`set_image` runs the image encoder once, then
    :meth:`predict` decodes any number of prompts on that embedding, as an annotator's clicks are answered."""

    def __init__(self, model: PromptableSegmenter):
        self.model, self.embedding = model, None

    @torch.no_grad()
    def set_image(self, image: torch.Tensor) -> None:
        """``image``: (3, H, W) uint8, or float in [0, 1]."""
        x = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        device = next(self.model.parameters()).device
        with eval_mode(self.model):
            self.embedding = self.model.encode_image(x[None].to(device))

    @torch.no_grad()
    def predict(self, points: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                box: torch.Tensor | None = None, mask_logits: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The 3 masks (3, H, W) bool, their predicted IoUs (3,) and logits (3, H, W) for ``points`` (n, 2) pixels
        (x, y) with ``labels`` (n,) 1 foreground / 0 background, and/or a ``box`` (4,) xyxy, and optionally the
        ``mask_logits`` (H, W) of an earlier prediction."""
        if self.embedding is None:
            raise RuntimeError("call set_image(image) before predict: the embedding is computed once per image")
        emb = self.embedding
        to = dict(device=emb.device, dtype=torch.float32)
        with eval_mode(self.model):
            logits, iou = self.model.decode(
                emb, None if points is None else points.to(**to)[None], None if labels is None else labels.to(**to)[None],
                None if box is None else box.to(**to)[None], None if mask_logits is None else mask_logits.to(**to)[None, None])
        return logits[0] > 0, iou[0], logits[0]
