"""BEiT (survey section 2.4): masked prediction of discrete visual tokens, like BERT's words.

BEiT [0] first turns every image patch into a *visual token*, an index into a codebook of
``K`` entries, with a tokenizer trained beforehand (DALL-E's discrete VAE [1] in the paper).
Pre-training then masks about 40 % of the patches (mask token in the encoder, as SimMIM),
and a linear head over the patch outputs classifies each masked patch's token with
cross-entropy (paper eq. 1):

    max Σ_{x ∈ D} E_M [ Σ_{i ∈ M} log p_MIM(z_i | x^M) ]

The course trains its tokenizer in the chapter instead of downloading a dVAE: **k-means**
over the training images' patches (the codebook of a VQ-VAE [2] without the encoder and
decoder). :class:`PatchTokenizer` maps a patch to the index of its nearest centroid, and its
centroids, shown as image patches, are the visual vocabulary. The code of a patch depends on
that patch alone, so the tokenizer is stable: the same patch gets the same code in any image,
batch or order.

- [0] BEiT: Bao et al., 2021, "BEiT: BERT Pre-Training of Image Transformers",
  https://arxiv.org/abs/2106.08254
- [1] DALL-E: Ramesh et al., 2021, "Zero-Shot Text-to-Image Generation", https://arxiv.org/abs/2102.12092
- [2] VQ-VAE: van den Oord et al., 2017, "Neural Discrete Representation Learning",
  https://arxiv.org/abs/1711.00937

>>> from vfm_lab.backbones import build_backbone
>>> images = torch.rand(16, 3, 32, 32)                          # (B, C, H, W) in [0, 1]
>>> tokenizer = PatchTokenizer(codebook_size=8, patch_size=4, channels=3).fit(images, iters=5)
>>> codes = tokenizer(images)                                     # (B, N) codes in [0, 8)
>>> codes.shape, bool((codes == tokenizer(images.flip(0)).flip(0)).all())
(torch.Size([16, 64]), True)
>>> _ = torch.manual_seed(0)
>>> beit = BEiT(build_backbone("vit-nano", 3, 32), tokenizer)
>>> beit.predict(images[:2], beit.draw_mask(2, images.device)).shape   # (B, N, K) logits
torch.Size([2, 64, 8])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vfm_lab.backbones import Backbone
from vfm_lab.methods.mae import masked_mean, patchify, unpatchify
from vfm_lab.methods.simmim import MaskedPrediction


class PatchTokenizer(nn.Module):
    """A visual tokenizer: k-means centroids (K, p*p*C) of image patches; a patch's token is its
    nearest centroid (squared Euclidean distance, ties to the lower index).

    :meth:`fit` runs Lloyd's algorithm from a k-means++ start, seeded, batched in torch; the
    codebook is a buffer, saved with the model that holds the tokenizer and never trained by its
    optimiser.
    """

    def __init__(self, codebook_size: int, patch_size: int, channels: int):
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"codebook_size={codebook_size} must be at least 2")
        self.codebook_size, self.patch_size, self.channels = codebook_size, patch_size, channels
        self.register_buffer("codebook", torch.zeros(codebook_size, patch_size ** 2 * channels))  # (K, P)
        self.register_buffer("fitted", torch.tensor(False))

    def assign(self, patches: torch.Tensor) -> torch.Tensor:
        """The nearest centroid of each patch: (..., P) -> (...,) int64."""
        flat = patches.reshape(-1, patches.shape[-1]).float()  # (M, P)
        # pair by pair, not by ||x||² - 2 x.c + ||c||² as a matrix product: its rounding depends on
        # the batch, which could flip a near tie and give one patch two codes
        dist = torch.cdist(flat, self.codebook, compute_mode="donot_use_mm_for_euclid_dist")  # (M, K)
        return dist.argmin(dim=1).view(patches.shape[:-1])

    @torch.no_grad()
    def fit(self, images: torch.Tensor, iters: int = 20, seed: int = 0, max_patches: int = 100_000) -> "PatchTokenizer":
        """k-means on the patches of ``images`` (B, C, H, W) in [0, 1] (at most ``max_patches`` of
        them, drawn at random): k-means++ initialisation, then ``iters`` Lloyd steps; a centroid
        left without patches is moved to the patch farthest from its own centroid."""
        g = torch.Generator(device=images.device).manual_seed(seed)
        x = patchify(images.float(), self.patch_size).reshape(-1, self.codebook.shape[1])  # (M, P)
        if len(x) < self.codebook_size:
            raise ValueError(f"{len(x)} patches cannot fill a codebook of {self.codebook_size}; give more images")
        x = x[torch.randperm(len(x), generator=g, device=x.device)[:max_patches]]
        centroids = x[torch.randint(len(x), (1,), generator=g, device=x.device)]  # (1, P)
        nearest = (x - centroids).pow(2).sum(1)  # (M,): squared distance to the closest centroid so far
        for _ in range(1, self.codebook_size):  # k-means++: draw proportionally to that distance
            pick = torch.multinomial(nearest + 1e-12, 1, generator=g)
            centroids = torch.cat([centroids, x[pick]])
            nearest = torch.minimum(nearest, (x - x[pick]).pow(2).sum(1))
        self.codebook.copy_(centroids)
        for _ in range(iters):
            codes = self.assign(x)  # (M,)
            sums = torch.zeros_like(self.codebook).index_add_(0, codes, x)  # (K, P)
            counts = torch.bincount(codes, minlength=self.codebook_size).unsqueeze(1)  # (K, 1)
            self.codebook.copy_(torch.where(counts > 0, sums / counts.clamp_min(1), self.codebook))
            for k in (counts.squeeze(1) == 0).nonzero().flatten().tolist():  # re-seed empty clusters
                far = (x - self.codebook[self.assign(x)]).pow(2).sum(1).argmax()
                self.codebook[k] = x[far]
        self.fitted.fill_(True)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Visual tokens of images (B, C, H, W) in [0, 1]: (B, N) int64 in [0, K)."""
        if not self.fitted:
            raise RuntimeError("the tokenizer has no codebook yet; call tokenizer.fit(train_images) first")
        return self.assign(patchify(images.float(), self.patch_size))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images made of each code's centroid: (B, N) -> (B, C, H, W), what the tokens keep of an image."""
        return unpatchify(self.codebook[codes], self.patch_size, self.channels).clamp(0, 1)

    def codebook_images(self) -> torch.Tensor:
        """The centroids as (K, C, p, p) image patches, in [0, 1]."""
        return unpatchify(self.codebook.unsqueeze(1), self.patch_size, self.channels).clamp(0, 1)


class BEiT(MaskedPrediction):
    """ViT with mask tokens + a linear head over the codebook, cross-entropy on the masked patches.

    mask_ratio / block: the share of patches hidden (BEiT: about 40 %, block-wise) and the side of
    the masked squares. The tokenizer must be fitted before training.
    """

    def __init__(self, backbone: Backbone, tokenizer: PatchTokenizer, mask_ratio: float = 0.4, block: int = 2):
        super().__init__(backbone, mask_ratio, block)
        if tokenizer.patch_size != self.patch_size or tokenizer.channels != self.channels:
            raise ValueError(f"the tokenizer cuts {tokenizer.patch_size}-px patches of {tokenizer.channels} channels "
                             f"but the backbone {self.patch_size}-px patches of {self.channels}; build it to match")
        self.tokenizer = tokenizer
        self.head = nn.Linear(backbone.embed_dim, tokenizer.codebook_size)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokenizer(images)  # (B, N) visual tokens

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each masked patch's token, averaged over the masked patches."""
        per_patch = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="none")  # (B*N,)
        return masked_mean(per_patch.view_as(mask), mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]  # (B, C, H, W)
        mask = self.draw_mask(len(images), images.device)  # (B, N)
        pred = self.predict(images, mask).float()  # (B, N, K)
        target = self.targets(images)  # (B, N)
        hit = ((pred.argmax(-1) == target).float() * mask).sum() / mask.sum()
        return {"loss": self.loss(pred, target, mask), "token_acc": hit}
