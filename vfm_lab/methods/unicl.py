"""UniCL [0]: labels and captions in one contrastive space (survey section 2.5).

Image-label data and image-text data become one set of triplets (image ``x``, text ``t``, label
``y``, sec. 3.1): a labelled image's text is a prompt with its class name ("a photo of a {}"),
and its label is the class; a captioned image keeps its caption and gets a label of its own that
no other image shares. Within a batch, every pair whose labels agree is a positive (eq. 2-4):

    L_i2t = - 1/B Σ_i 1/|P(i)| Σ_{k ∈ P(i)} log softmax_j(s_ij)_k,    P(i) = {k : y_k = y_i},

``s_ij = exp(t) u_i·v_j`` as in CLIP, and ``L_t2i`` the same with the texts as queries; the loss is
their mean (the official code's ``SoftTargetCrossEntropy`` on the row-normalised target matrix).
With captions only, every ``P(i)`` is ``{i}`` and UniCL *is* CLIP; with labels only, it is a
supervised contrastive loss between images and class prompts.

- [0] UniCL: Yang et al., 2022, "Unified Contrastive Learning in Image-Text-Label Space",
  https://arxiv.org/abs/2204.03610

>>> logits = torch.tensor([[2.0, 2.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
>>> labels = torch.tensor([5, 5, 9])          # two images of one class, one captioned image
>>> unicl_targets(labels)
tensor([[0.5000, 0.5000, 0.0000],
        [0.5000, 0.5000, 0.0000],
        [0.0000, 0.0000, 1.0000]])
>>> round(unicl_loss(logits, labels).item(), 4)   # rows 0, 1: 2 - log(2e² + 1); row 2: 2 - log(e² + 2)
0.5856
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from vfm_lab import distributed as D
from vfm_lab.methods.clip import ClipModel

PROMPT = "a photo of a {}."


def unicl_targets(labels: torch.Tensor) -> torch.Tensor:
    """The target matrix (B, B): row ``i`` spreads 1 evenly over the pairs with ``i``'s label."""
    same = (labels[:, None] == labels[None, :]).float()  # (B, B)
    return same / same.sum(1, keepdim=True)


def unicl_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bidirectional UniCL loss from image-to-text ``logits`` (B, B) and the pairs' ``labels`` (B,)."""
    target = unicl_targets(labels)  # symmetric: the same for both directions
    i2t = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(target * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (i2t + t2i) / 2


def unify(captions: Sequence[str | None], labels: Sequence[int], class_names: Sequence[str],
          prompt: str = PROMPT) -> tuple[list[str], torch.Tensor]:
    """The image-text-label triplets of sec. 3.1 from a mixed set: an image with a caption keeps it and
    gets a label of its own (``num_classes + index``); an image without one (``None``) gets its class's
    prompt and its class label. Returns the texts and the labels (N,)."""
    if len(captions) != len(labels):
        raise ValueError(f"{len(captions)} captions for {len(labels)} labels: give one caption (or None) per image")
    texts, ids = [], []
    for i, (caption, label) in enumerate(zip(captions, labels)):
        texts.append(caption if caption is not None else prompt.format(class_names[int(label)]))
        ids.append(len(class_names) + i if caption is not None else int(label))
    return texts, torch.tensor(ids)


class UniCL(ClipModel):
    """CLIP's towers with UniCL's loss: ``texts`` from :func:`unify`, ``labels`` the triplets' labels
    (N,), looked up by ``batch["index"]``. Under DDP the embeddings (with their gradients) and labels of
    every rank form the batch, as SimCLR's negatives do."""

    def __init__(self, backbone: torch.nn.Module, texts: Sequence[str], labels: torch.Tensor, **kw):
        if kw.get("loss", "clip") != "clip":
            raise ValueError(f"loss={kw['loss']!r}: UniCL has its own loss (a softmax over the batch, as CLIP's)")
        if len(labels) != len(texts):
            raise ValueError(f"{len(labels)} labels for {len(texts)} texts: give one label per training image")
        super().__init__(backbone, texts, **kw)
        self.register_buffer("pair_labels", torch.as_tensor(labels).long(), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]  # (B, C, H, W)
        if self.augment is not None and self.training:
            x = self.augment(x)
        image = self.encode_image(x)  # (B, E)
        index = batch["index"].cpu()
        text = self.encode_text_inputs(self.text_inputs[index].to(x.device))  # (B, E)
        labels = self.pair_labels[index.to(self.pair_labels.device)]  # (B,)
        image, text, labels = D.gather_with_grad(image), D.gather_with_grad(text), D.gather(labels)  # every rank's
        scale = self.logit_scale.exp()
        return {"loss": unicl_loss(scale * image @ text.T, labels), "temperature": 1 / scale.detach()}
