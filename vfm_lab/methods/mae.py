"""Masked autoencoders (survey section 2.4): hide most patches, rebuild their pixels.

MAE [0] cuts an image into ``N`` patches, keeps a random ``1 - mask_ratio`` of them
(75 %), runs the ViT encoder on the *visible* patches only, and hands the encoded
tokens, with a shared learnable ``[MASK]`` token in every hidden slot, to a light
decoder that predicts each patch's pixels. The loss is the mean squared error on the
masked patches alone (paper sec. 3, "Reconstruction target"):

    L = 1/|M| Σ_{i ∈ M} ||x̂_i - t_i||² / P,      t_i = (x_i - mean(x_i)) / sqrt(var(x_i) + 1e-6)

with ``t_i`` the patch's pixels normalised by their own mean and variance
(``norm_pix_loss``; the raw pixels otherwise) and ``P`` the values per patch. Because the
encoder sees a quarter of the tokens, a step costs a fraction of one over the whole
image (measured in ``vfm-lab bench mim``).

This file follows the paper's ``models_mae.py``: :func:`patchify`, :func:`unpatchify`,
:func:`random_masking`, ``forward_encoder``, ``forward_decoder``, ``forward_loss``. The
encoder is the course's timm ``VisionTransformer`` (``backbone.model``), run block by block
on the kept tokens, so after pre-training ``method.backbone`` is an ordinary
:class:`~vfm_lab.backbones.Backbone` to probe or fine-tune. SimMIM, MaskFeat and BEiT
(``simmim.py``, ``maskfeat.py``, ``beit.py``) import the patch and masking helpers below.

- [0] MAE: He et al., 2021, "Masked Autoencoders Are Scalable Vision Learners",
  https://arxiv.org/abs/2111.06377

>>> from vfm_lab.backbones import build_backbone
>>> _ = torch.manual_seed(0)
>>> mae = MAE(build_backbone("vit-nano", 3, 32), mask_ratio=0.75)
>>> images = torch.rand(2, 3, 32, 32)                           # (B, C, H, W) in [0, 1]
>>> latent, mask, ids_restore = mae.forward_encoder(images)
>>> latent.shape, mask.sum(1).tolist()                           # 1 class token + 16 of 64 patches
(torch.Size([2, 17, 128]), [48.0, 48.0])
>>> mae.forward_decoder(latent, ids_restore).shape               # 4 x 4 x 3 pixels per patch
torch.Size([2, 64, 48])
>>> loss = mae({"image": images})["loss"]                         # MSE on the 48 masked patches
>>> loss.shape, loss.item() > 0
(torch.Size([]), True)
"""
from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from vfm_lab.backbones import Backbone
from vfm_lab.data import ImageSet, batches
from vfm_lab.engine import Method
from vfm_lab.runtime import eval_mode


# ---- patches and masks (shared by every masked image model) ----------------------------
def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C): patches in raster order, each flattened row by row with
    the channels last (MAE's ``nchpwq -> nhwpqc``)."""
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"images of {H}x{W} pixels do not split into {p}x{p} patches; "
                         f"choose a patch size that divides both sides")
    x = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)  # (B, N, p*p*C)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W) for a square grid of N patches: the inverse of :func:`patchify`."""
    B, N, _ = patches.shape
    h = int(round(N ** 0.5))
    if h * h != N or patches.shape[2] != patch_size ** 2 * channels:
        raise ValueError(f"{N} patches of {patches.shape[2]} values do not form a square grid of "
                         f"{patch_size}x{patch_size}x{channels} patches")
    x = patches.reshape(B, h, h, patch_size, patch_size, channels)  # (B, h, w, p, q, C)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, channels, h * patch_size, h * patch_size)


def random_masking(x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random ``int(N * (1 - mask_ratio))`` tokens of every sample (MAE's per-sample shuffle).

    Returns ``x_visible`` (B, N_keep, D), ``mask`` (B, N) with 1 on removed tokens and 0 on kept
    ones, and ``ids_restore`` (B, N): ``torch.gather(shuffled, 1, ids_restore)`` puts tokens
    listed kept-first back in their original order. Every sample hides exactly the same number
    of tokens, each its own random set.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1): the share of patches hidden")
    B, N, D = x.shape
    len_keep = int(N * (1 - mask_ratio))
    noise = torch.rand(B, N, generator=generator, device=generator.device if generator else x.device)
    ids_shuffle = noise.argsort(dim=1).to(x.device)  # (B, N): ascending noise, the first len_keep are kept
    ids_restore = ids_shuffle.argsort(dim=1)  # (B, N)
    ids_keep = ids_shuffle[:, :len_keep]  # (B, N_keep)
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))  # (B, N_keep, D)
    mask = torch.ones(B, N, device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # (B, N): back in the original order
    return x_visible, mask, ids_restore


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each patch (last dim) minus its mean, over its standard deviation (MAE's ``norm_pix_loss``)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def masked_mean(per_patch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of a per-patch loss (B, N) over the masked patches only (mask 1 = masked)."""
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


# ---- the ViT encoder on a subset of tokens -------------------------------------------
def patch_tokens(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """Patch embeddings (B, N, D) of images in [0, 1], before position embeddings, normalised as
    the backbone normalises its input."""
    return backbone.model.patch_embed(backbone.normalise(images))  # (B, N, D)


def add_positions(backbone: Backbone, tokens: torch.Tensor) -> torch.Tensor:
    """Add the ViT's position embedding of every patch (timm stores the class token's first)."""
    vit = backbone.model
    return tokens + vit.pos_embed[:, vit.num_prefix_tokens:]  # (B, N, D)


def encode_tokens(backbone: Backbone, tokens: torch.Tensor) -> torch.Tensor:
    """Prepend the class token (with its position) and run the ViT's blocks and final norm:
    (B, n, D) -> (B, 1 + n, D). Any subset of positioned patch tokens works (timm's
    ``forward_features`` after the patch embedding)."""
    vit = backbone.model
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(len(tokens), -1, -1)  # (B, 1, D)
    x = vit.norm_pre(torch.cat([cls, tokens], dim=1))  # (B, 1 + n, D)
    return vit.norm(vit.blocks(x))


class MAE(Method):
    """ViT encoder on the visible patches + light Transformer decoder predicting every patch.

    mask_ratio: share of patches hidden (0.75 in the paper).
    decoder_dim / decoder_depth / decoder_heads: the decoder's width, blocks and heads (the
    paper's is 512-d, 8 blocks for ViT-L; a narrow, shallow one suffices and keeps the encoder
    doing the work). norm_pix_loss: predict each patch normalised by its own statistics.
    """

    def __init__(self, backbone: Backbone, mask_ratio: float = 0.75, decoder_dim: int = 64,
                 decoder_depth: int = 2, decoder_heads: int = 4, norm_pix_loss: bool = True):
        super().__init__()
        if backbone.patch_size is None:
            raise ValueError(f"MAE needs a ViT backbone (vit-nano, vit-tiny), got {backbone.name!r}")
        random_masking(torch.zeros(1, 1, 1), mask_ratio)  # validates the ratio
        self.backbone, self.mask_ratio, self.norm_pix_loss = backbone, mask_ratio, norm_pix_loss
        self.patch_size, self.channels = backbone.patch_size, backbone.in_chans
        grid = backbone.image_size // backbone.patch_size
        self.decoder_embed = nn.Linear(backbone.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed",  # fixed 2-D sin-cos positions, as in the paper
                             build_sincos2d_pos_embed([grid, grid], decoder_dim).unsqueeze(0), persistent=False)
        self.decoder_blocks = nn.Sequential(*[Block(decoder_dim, decoder_heads, qkv_bias=True)
                                              for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size ** 2 * self.channels)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_encoder(self, images: torch.Tensor, mask_ratio: float | None = None,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches: latent (B, 1 + N_keep, D), mask (B, N), ids_restore (B, N)."""
        x = add_positions(self.backbone, patch_tokens(self.backbone, images))  # (B, N, D)
        x, mask, ids_restore = random_masking(x, self.mask_ratio if mask_ratio is None else mask_ratio, generator)
        return encode_tokens(self.backbone, x), mask, ids_restore  # (B, 1 + N_keep, D)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch (B, N, p*p*C) from the encoded visible tokens and mask tokens.
        (The paper's decoder also carries the class token; this one reads the patches only.)"""
        x = self.decoder_embed(latent[:, 1:])  # (B, N_keep, D_dec): drop the class token
        B, N = ids_restore.shape
        x = torch.cat([x, self.mask_token.expand(B, N - x.shape[1], -1).to(x.dtype)], dim=1)  # (B, N, D_dec)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = self.decoder_norm(self.decoder_blocks(x + self.decoder_pos_embed))  # (B, N, D_dec)
        return self.decoder_pred(x)  # (B, N, p*p*C)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """What the decoder predicts: the patches (B, N, p*p*C), normalised with ``norm_pix_loss``."""
        patches = patchify(images, self.patch_size)
        return normalize_patches(patches) if self.norm_pix_loss else patches

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over the masked patches only."""
        per_patch = (pred.float() - self.targets(images)).pow(2).mean(dim=-1)  # (B, N)
        return masked_mean(per_patch, mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]  # (B, C, H, W): no augmentation beyond the masking (paper: crops and flips)
        latent, mask, ids_restore = self.forward_encoder(images)
        pred = self.forward_decoder(latent, ids_restore)  # (B, N, p*p*C)
        return {"loss": self.forward_loss(images, pred, mask)}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask_ratio: float | None = None,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Images for looking: ``masked`` (hidden patches grey), ``reconstruction`` (predicted patches
        pasted into the visible ones) and the raw ``prediction``, all (B, C, H, W) in [0, 1], and
        ``mask`` (B, N). With ``norm_pix_loss`` the predictions are mapped back to pixels with each
        true patch's mean and standard deviation, as the paper's figures do."""
        latent, mask, ids_restore = self.forward_encoder(images, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore).float()  # (B, N, p*p*C)
        patches = patchify(images, self.patch_size)  # (B, N, p*p*C)
        if self.norm_pix_loss:
            pred = pred * (patches.var(-1, keepdim=True) + 1e-6) ** 0.5 + patches.mean(-1, keepdim=True)
        m = mask.unsqueeze(-1)  # (B, N, 1)
        show = lambda p: unpatchify(p, self.patch_size, self.channels).clamp(0, 1)
        return {"masked": show(patches * (1 - m) + 0.5 * m), "reconstruction": show(patches * (1 - m) + pred * m),
                "prediction": show(pred), "mask": mask}


@torch.no_grad()
def reconstruction_vs_mean_patch(mae: MAE, train: ImageSet, test: ImageSet, batch_size: int = 256,
                                 seed: int = 0) -> dict[str, float]:
    """MAE's loss on held-out images against predicting the training set's mean target patch for
    every masked patch (the best constant guess), on the same masks: ``{"mae_loss", "mean_patch_loss"}``."""
    device = next(mae.parameters()).device
    with eval_mode(mae):
        mean_patch = sum(mae.targets(b["image"]).sum(dim=(0, 1)) for b in
                         batches(train, batch_size, shuffle=False, drop_last=False, device=device))
        mean_patch = mean_patch / (len(train) * (train.image_size // mae.patch_size) ** 2)  # (p*p*C,)
        generator = torch.Generator(device=device).manual_seed(seed)
        sums = torch.zeros(2)
        for b in batches(test, batch_size, shuffle=False, drop_last=False, device=device):
            latent, mask, ids_restore = mae.forward_encoder(b["image"], generator=generator)
            pred = mae.forward_decoder(latent, ids_restore)
            constant = mean_patch.expand_as(pred)
            sums += torch.stack([mae.forward_loss(b["image"], p, mask).cpu() * len(mask) for p in (pred, constant)])
    mae_loss, mean_loss = (sums / len(test)).tolist()
    return {"mae_loss": mae_loss, "mean_patch_loss": mean_loss}
