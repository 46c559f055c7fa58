"""CoCa [0] with ALBEF's image-text matching [1]: a contrastive model that also writes (survey section 2.6).

Two towers align an image with a caption but cannot produce text. CoCa (fig. 2) splits a text
decoder in two: the first half (a causal *unimodal* text transformer, no image) yields the caption's
embedding for the contrastive loss from a class token appended at the end; the second half (the
*multimodal* decoder) adds cross-attention from every text position to the image tokens and predicts
the next token. One forward pass gives both losses (eq. 4):

    L_CoCa = λ_Con · L_Con + λ_Cap · L_Cap,     L_Cap = - Σ_t log P(y_t | y_<t, x)

with ``L_Con`` CLIP's symmetric InfoNCE and ``L_Cap`` the cross-entropy of teacher forcing (the
paper: λ_Cap = 2, λ_Con = 1). The same decoder answers questions: trained on "question: … answer: …"
with the loss on the answer tokens only (a prefix language model, SimVLM/BLIP style), it generates an
answer after the prompt. ALBEF's **image-text matching** (sec. 3.2) reads the fused state at the
caption's last token with a 2-way head, trained on the true pairs and on *hard* negatives: for each
image a caption drawn with probability ``softmax(s_i·)`` over the batch's other captions, and for each
caption an image drawn likewise, so the negatives are the ones the contrastive space confuses.

The towers and the decoder are open_clip's (``TextTransformer`` with ``embed_cls``, CoCa's
``MultimodalTransformer``), their text open_clip's byte-pair tokens renumbered to the ones the
corpus uses (:class:`Vocabulary`): the course's captions use a few dozen tokens, and an output layer
over all 49,408 would dominate a CPU step. The image tower is a vfm_lab backbone: its token features,
projected to the decoder's width, are what the decoder attends to; their mean, projected, is the
image embedding (CoCa uses attentional pooling, here plain mean pooling).

- [0] CoCa: Yu et al., 2022, "CoCa: Contrastive Captioners are Image-Text Foundation Models",
  https://arxiv.org/abs/2205.01917
- [1] ALBEF: Li et al., 2021, "Align before Fuse", https://arxiv.org/abs/2107.07651

>>> from vfm_lab.backbones import build_backbone
>>> _ = torch.manual_seed(0)
>>> coca = CoCa(build_backbone("vit-nano"), ["a red circle", "a blue square"],
...             [[("is there a circle?", "yes")], [("is there a circle?", "no")]], embed_dim=16, width=32)
>>> out = coca({"image": torch.rand(2, 3, 32, 32), "index": torch.tensor([0, 1])})
>>> sorted(out)
['caption_loss', 'contrastive_loss', 'itm_loss', 'loss', 'qa_loss', 'temperature']
>>> coca.vocab.decode(coca.vocab.encode(["a red circle"], 8))
['a red circle']
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import MultimodalTransformer, TextTransformer
from torch import nn

from vfm_lab import distributed as D
from vfm_lab.backbones import Backbone
from vfm_lab.engine import Method
from vfm_lab.methods.clip import MAX_LOGIT_SCALE

SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
PAD, SOT, EOT, UNK = range(len(SPECIALS))
QA_PROMPT = "question: {} answer:"


@functools.lru_cache(maxsize=1)
def _bpe() -> SimpleTokenizer:
    return SimpleTokenizer()


class Vocabulary:
    """open_clip's byte-pair tokens of a corpus, renumbered: id ``len(SPECIALS) + i`` is the corpus's
    ``i``-th distinct BPE token; a token the corpus never used becomes ``<unk>``."""

    def __init__(self, texts: Sequence[str]):
        self.bpe = sorted({t for text in texts for t in _bpe().encode(text)})
        self.index = {b: i + len(SPECIALS) for i, b in enumerate(self.bpe)}

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.bpe)

    def ids(self, text: str) -> list[int]:
        """``<start>`` and the text's ids, no ``<end>``: a prefix to continue."""
        return [SOT] + [self.index.get(t, UNK) for t in _bpe().encode(text)]

    def encode(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        """(N, context_length) ids: ``<start>``, the text, ``<end>``, padding; a long text is cut and still ends."""
        out = torch.full((len(texts), context_length), PAD, dtype=torch.long)
        for row, text in zip(out, texts):
            ids = self.ids(text)[:context_length - 1] + [EOT]
            row[:len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Texts of id rows: what lies between ``<start>`` and the first ``<end>``; ``<unk>`` is dropped."""
        texts = []
        for row in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            row = row[1:] if row and row[0] == SOT else row
            row = row[:row.index(EOT)] if EOT in row else row
            texts.append(_bpe().decode([self.bpe[i - len(SPECIALS)] for i in row if i >= len(SPECIALS)]).strip())
        return texts


def trim(ids: torch.Tensor) -> torch.Tensor:
    """Token rows (B, L) cut after the longest text's ``<end>``: the padding every row shares costs
    attention and an output layer and changes no token's state (causal attention, padded keys masked).
    Not for a text's embedding: the class token after the padding would move."""
    return ids[:, :int((ids != PAD).sum(1).max())]


def hard_negatives(sim: torch.Tensor) -> torch.Tensor:
    """ALBEF's negative for each row of a similarity matrix (B, B): a column drawn with probability
    ``softmax`` of the row over the other columns (never the row's own pair). (B,) column indices."""
    if len(sim) < 2:
        raise ValueError("hard negatives need a batch of at least 2 pairs")
    weights = sim.float().softmax(1).fill_diagonal_(0)  # (B, B)
    return torch.multinomial(weights, 1).squeeze(1)


class CoCa(Method):
    """An image tower, a unimodal text tower and a multimodal decoder, trained on CoCa's contrastive and
    captioning losses, the captioning loss on question-answer texts, and ALBEF's image-text matching.

    ``captions`` hold one text per training image, ``qa`` (optional) a list of (question, answer) pairs
    per image, of which each step takes one at random; ``vocab`` defaults to the corpus's own tokens.
    ``forward`` returns the weighted ``loss`` and each part."""

    def __init__(self, backbone: Backbone, captions: Sequence[str], qa: Sequence[Sequence[tuple[str, str]]] | None = None,
                 *, vocab: Vocabulary | None = None, embed_dim: int = 128, width: int = 128, heads: int = 4,
                 text_layers: int = 2, decoder_layers: int = 2, context_length: int = 32, contrastive_weight: float = 1.0,
                 caption_weight: float = 2.0, qa_weight: float = 1.0, itm_weight: float = 1.0,
                 init_temperature: float = 0.07):
        super().__init__()
        if not captions:
            raise ValueError("captions is empty or None: CoCa trains on image-text pairs (shapes, icon-scenes)")
        if qa is not None and len(qa) != len(captions):
            raise ValueError(f"{len(qa)} question lists for {len(captions)} captions: give one list per image")
        weights = dict(contrastive_weight=contrastive_weight, caption_weight=caption_weight, qa_weight=qa_weight,
                       itm_weight=itm_weight)
        if any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
            raise ValueError(f"loss weights must be >= 0 and one of them above 0; got {weights}")
        qa = qa or [[] for _ in captions]
        qa_texts = [QA_PROMPT.format(q) + " " + a for pairs in qa for q, a in pairs]
        self.vocab = vocab or Vocabulary(list(captions) + qa_texts)
        self.backbone, self.context_length, self.weights = backbone, context_length, weights
        self.image_proj = nn.Linear(backbone.embed_dim, embed_dim, bias=False)  # pooled tokens -> contrastive space
        self.image_to_text = nn.Linear(backbone.embed_dim, width)  # image tokens -> what cross-attention reads
        self.text = TextTransformer(context_length=context_length, vocab_size=len(self.vocab), width=width,
                                    heads=heads, layers=text_layers, output_dim=embed_dim, embed_cls=True,
                                    correct_cls_mask=True, pool_type="last", output_tokens=True, pad_id=PAD)
        self.decoder = MultimodalTransformer(width=width, layers=decoder_layers, heads=heads,
                                             context_length=context_length, output_dim=width)
        self.decoder.text_projection = None  # the decoder returns its fused states; the two heads read them
        self.lm_head = nn.Linear(width, len(self.vocab), bias=False)  # next-token logits
        self.itm_head = nn.Linear(width, 2)  # ALBEF's matched / not matched
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.freeze_unused()
        self.captions = self.vocab.encode(captions, context_length)  # (N, L)
        self.qa_texts = self.vocab.encode(qa_texts, context_length) if qa_texts else None  # (M, L)
        self.qa_answer_start = torch.tensor([len(self.vocab.ids(QA_PROMPT.format(q))) for pairs in qa for q, _ in pairs],
                                            dtype=torch.long)  # (M,) position of each answer's first token
        counts = torch.tensor([len(pairs) for pairs in qa])
        self.qa_first, self.qa_count = counts.cumsum(0) - counts, counts  # (N,), (N,) each image's rows in qa_texts

    def freeze_unused(self) -> None:
        """Freeze the parts that no loss of weight above 0 reads (CoCa with only the contrastive loss is CLIP, and
        its decoder gets no gradient): under DDP every trainable parameter must get one in every step."""
        w, text = self.weights, self.text
        parts = {"contrastive": [*self.image_proj.parameters(), text.cls_emb, *text.ln_final.parameters(),
                                 text.text_projection, self.logit_scale],
                 "decoder": [*self.image_to_text.parameters(), *self.decoder.parameters()],
                 "lm": list(self.lm_head.parameters()), "itm": list(self.itm_head.parameters())}
        used = {"contrastive": w["contrastive_weight"] > 0, "lm": w["caption_weight"] + w["qa_weight"] > 0,
                "itm": w["itm_weight"] > 0}
        used["decoder"] = used["lm"] or used["itm"]
        for name, params in parts.items():
            for p in params:
                p.requires_grad_(used[name])

    # ---- the towers ------------------------------------------------------------------------------------
    def encode_image_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-length image embeddings (B, E) and the tokens the decoder attends to (B, N, width)."""
        tokens = self.backbone.forward_tokens(images)  # (B, N, D)
        return F.normalize(self.image_proj(tokens.mean(1)).float(), dim=-1), self.image_to_text(tokens)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image_tokens(images)[0]

    def encode_text_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-length text embeddings (B, E), from the class token after the text, and the unimodal
        token states (B, L, width)."""
        pooled, tokens = self.text(ids)
        return F.normalize(pooled.float(), dim=-1), tokens

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode_text_ids(self.vocab.encode(texts, self.context_length).to(self.logit_scale.device))[0]

    def fuse(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """The multimodal decoder: causal self-attention over the text, cross-attention to the image. (B, T, width)"""
        return self.decoder(image_tokens, text_tokens)

    def next_token_logprobs(self, image_tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """log P(next token | ids, image) (B, V) for prefixes ``ids`` (B, T); ``<pad>``, ``<start>`` and
        ``<unk>``, never a training target, get -inf (a decoder never writes them)."""
        logits = self.lm_head(self.fuse(image_tokens, self.encode_text_ids(ids)[1])[:, -1]).float()  # (B, V)
        return F.log_softmax(logits, -1).index_fill_(1, torch.tensor([PAD, SOT, UNK], device=logits.device), -math.inf)

    # ---- the losses ------------------------------------------------------------------------------------
    def lm_loss(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the fused state at position t (text tokens 0..t) predicts ``labels[:, t]``, the
        token t + 1; PAD labels are not counted. ``text_tokens`` (B, L, width) from :meth:`encode_text_ids`."""
        logits = self.lm_head(self.fuse(image_tokens, text_tokens[:, :-1]))  # (B, L-1, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=PAD)

    def itm_logits(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Matched / not-matched logits (B, 2) from the fused state at each text's ``<end>``; ``text_tokens``
        (B, L, width) the unimodal states of ``ids`` (B, L)."""
        fused = self.fuse(image_tokens, text_tokens)  # (B, L, width)
        return self.itm_head(fused[torch.arange(len(ids)), (ids == EOT).int().argmax(1)])

    def itm_loss(self, image_emb: torch.Tensor, text_emb: torch.Tensor, image_tokens: torch.Tensor,
                 text_tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """ALBEF's ITM: the B true pairs, each image with a hard negative caption and each caption with
        a hard negative image, a 2-way cross-entropy over the 3B."""
        with torch.no_grad():
            sim = image_emb @ text_emb.T  # (B, B)
            neg_text, neg_image = hard_negatives(sim), hard_negatives(sim.T)
        images = torch.cat([image_tokens, image_tokens, image_tokens[neg_image]])  # (3B, N, width)
        texts = torch.cat([text_tokens, text_tokens[neg_text], text_tokens])  # (3B, L, width)
        target = torch.cat([torch.ones(len(ids)), torch.zeros(2 * len(ids))]).long().to(ids.device)
        return F.cross_entropy(self.itm_logits(images, texts, torch.cat([ids, ids[neg_text], ids])).float(), target)

    def sample_qa(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One question-answer text per image of ``index`` that has any (ids (b, L) and answer-only labels
        (b, L-1)), or None."""
        has = self.qa_count[index] > 0
        if self.qa_texts is None or not has.any():
            return None
        index = index[has]
        rows = self.qa_first[index] + (torch.rand(len(index)) * self.qa_count[index]).long()  # (b,)
        ids = trim(self.qa_texts[rows])  # (b, T)
        labels = ids[:, 1:].clone()
        prompt = torch.arange(labels.shape[1])[None] < (self.qa_answer_start[rows, None] - 1)  # (b, L-1)
        return ids, labels.masked_fill_(prompt, PAD)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weighted sum of the losses whose weight is above 0 (each returned on its own, detached)."""
        index, w = batch["index"].cpu(), self.weights
        device = batch["image"].device
        image_emb, image_tokens = self.encode_image_tokens(batch["image"])  # (B, E), (B, N, width)
        ids = self.captions[index].to(device)  # (B, L): the class token's position is L, as at test time
        text_emb, text_tokens = self.encode_text_ids(ids)  # (B, E), (B, L, width)
        scale = self.logit_scale.exp()
        parts = {}
        if w["contrastive_weight"]:
            clip = ClipLoss(local_loss=True, gather_with_grad=True, rank=D.rank(), world_size=D.world_size())
            parts["contrastive_loss"] = clip(image_emb, text_emb, scale)
        if w["caption_weight"]:
            parts["caption_loss"] = self.lm_loss(image_tokens, text_tokens, ids[:, 1:])
        qa = self.sample_qa(index) if w["qa_weight"] else None
        if qa is not None:
            qa_ids, qa_labels = (t.to(device) for t in qa)
            asked = image_tokens[(self.qa_count[index] > 0).to(device)]
            parts["qa_loss"] = self.lm_loss(asked, self.encode_text_ids(qa_ids)[1], qa_labels)
        if w["itm_weight"]:
            parts["itm_loss"] = self.itm_loss(image_emb, text_emb, image_tokens, text_tokens, ids)
        loss = sum(w[name.replace("_loss", "_weight")] * value for name, value in parts.items())
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}, "temperature": 1 / scale.detach()}

    def after_step(self, step: int, total_steps: int) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


# ---- decoding --------------------------------------------------------------------------------------------
class Decoded(NamedTuple):
    """Generated continuations: ``ids`` (B, T) the new tokens (``<end>``, then ``<pad>``), ``score`` (B,)
    their log-probability, ``trace`` (B, T) the running log-probability after each token."""

    ids: torch.Tensor
    score: torch.Tensor
    trace: torch.Tensor


def _check_decoding(model: CoCa, prefix: Sequence[int], max_new: int) -> None:
    if max_new < 1 or len(prefix) + max_new > model.context_length:
        raise ValueError(f"max_new={max_new} tokens after a prefix of {len(prefix)} must be from 1 to "
                         f"context_length - {len(prefix)} = {model.context_length - len(prefix)}")


def _no_end_before(logp: torch.Tensor, step: int, min_new: int) -> torch.Tensor:
    return logp.index_fill(1, torch.tensor([EOT], device=logp.device), -math.inf) if step < min_new else logp


@torch.no_grad()
def greedy_decode(model: CoCa, image_tokens: torch.Tensor, prefix: Sequence[int] = (SOT,), max_new: int = 16,
                  min_new: int = 1) -> Decoded:
    """The most likely next token, one at a time, after ``prefix`` (ids from :meth:`Vocabulary.ids`) for
    every image of ``image_tokens`` (B, N, width), until ``<end>`` or ``max_new`` tokens; ``<end>`` is
    not allowed before ``min_new`` tokens (open_clip's ``MinLengthLogitsProcessor``: no empty caption)."""
    _check_decoding(model, prefix, max_new)
    b, device = len(image_tokens), image_tokens.device
    seqs = torch.tensor(prefix, device=device).repeat(b, 1)  # (B, T0)
    score, done, trace = torch.zeros(b, device=device), torch.zeros(b, dtype=torch.bool, device=device), []
    for step in range(max_new):
        logp = _no_end_before(model.next_token_logprobs(image_tokens, seqs), step, min_new)  # (B, V)
        token = torch.where(done, PAD, logp.argmax(1))  # (B,) a finished text goes on with <pad>
        score = score + torch.where(done, 0.0, logp.gather(1, token[:, None])[:, 0])
        seqs, trace = torch.cat([seqs, token[:, None]], 1), trace + [score]
        done |= token == EOT
        if done.all():
            break
    return Decoded(seqs[:, len(prefix):], score, torch.stack(trace, 1))


@torch.no_grad()
def beam_search(model: CoCa, image_tokens: torch.Tensor, prefix: Sequence[int] = (SOT,), max_new: int = 16,
                width: int = 3, min_new: int = 1) -> Decoded:
    """Beam search: keep the ``width`` continuations of highest log-probability per image, extend each by
    every token, keep the best ``width`` again. A finished beam (``<end>``) extends only by ``<pad>`` at no
    cost, so it competes with the open ones as it is (no length normalisation); ``min_new`` as in
    :func:`greedy_decode`. Returns the best beam."""
    _check_decoding(model, prefix, max_new)
    if width < 1:
        raise ValueError(f"width={width} must be at least 1")
    b, v = len(image_tokens), len(model.vocab)
    seqs = torch.tensor(prefix, device=image_tokens.device).repeat(b, 1, 1)  # (B, K=1, T0)
    scores = image_tokens.new_zeros(b, 1).float()  # (B, K)
    done = torch.zeros(b, 1, dtype=torch.bool, device=image_tokens.device)  # (B, K)
    trace = scores.new_zeros(b, 1, 0)  # (B, K, steps)
    only_pad = torch.full((v,), -math.inf, device=image_tokens.device).index_fill_(0, torch.tensor([PAD]), 0.0)
    for step in range(max_new):
        k = seqs.shape[1]
        logp = model.next_token_logprobs(image_tokens.repeat_interleave(k, 0), seqs.flatten(0, 1))  # (B K, V)
        logp = _no_end_before(logp, step, min_new).view(b, k, v)
        logp = torch.where(done[..., None], only_pad, logp)  # (B, K, V)
        scores, top = (scores[..., None] + logp).flatten(1).topk(min(width, k * v), dim=1)  # (B, W)
        beam, token = top // v, top % v  # (B, W) which beam each candidate extends, by which token
        seqs = torch.cat([seqs.gather(1, beam[..., None].expand(-1, -1, seqs.shape[2])), token[..., None]], 2)
        trace = torch.cat([trace.gather(1, beam[..., None].expand(-1, -1, trace.shape[2])), scores[..., None]], 2)
        done = done.gather(1, beam) | (token == EOT)
        if done.all():
            break
    return Decoded(seqs[:, 0, len(prefix):], scores[:, 0], trace[:, 0])
