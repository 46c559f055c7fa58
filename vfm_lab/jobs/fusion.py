"""Chapter 07's measurements: a CoCa trained on captions and questions, then captioning, question answering
and image-text matching, each against its trivial baseline, and CoCa against plain CLIP on the same towers at
the same budget (``vfm-lab train 07``).

Every figure comes with the baseline the issue names: the captions' attribute accuracy, BLEU-4 and CIDEr
against the most frequent training caption and against the caption of the nearest training image in the
contrastive space; VQA per question type against the majority answer of that type in training; ITM against
the contrastive score alone, both asked to pick the true caption over the closest other one.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any, Sequence

import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from vfm_lab import distributed as D
from vfm_lab.config import FusionConfig
from vfm_lab.data import ImageSet, load
from vfm_lab.evaluate import retrieval_recall, write_results
from vfm_lab.jobs.common import Run, fresh_backbone, train
from vfm_lab.methods.clip import embed_texts
from vfm_lab.methods.coca import QA_PROMPT, CoCa, beam_search, greedy_decode
from vfm_lab.runtime import eval_mode, seed_everything

# question type: the first pattern that matches the question
QUESTION_TYPES = (("background", r"background\?$"), ("count", r"^how many"), ("exists", r"^is there"),
                  ("shape", r"^what shape"), ("colour", r"^what colour"), ("size", r"^what size"),
                  ("position", r"^where is"), ("largest", r"^what is the largest"))
CLIP_ONLY = dict(caption_weight=0.0, qa_weight=0.0, itm_weight=0.0)  # CoCa without its decoder: CLIP
FUSION_KEYS = ("caption_attr_acc", "bleu4", "cider", "vqa_acc", "itm_acc", "t2i_R@1", "i2t_R@1")


def question_type(question: str) -> str:
    """The type of a question of ``shapes`` or the icon scenes (:data:`QUESTION_TYPES`)."""
    for name, pattern in QUESTION_TYPES:
        if re.search(pattern, question):
            return name
    raise ValueError(f"question {question!r} has no type; the types are {', '.join(n for n, _ in QUESTION_TYPES)}")


def fusion_splits(cfg: FusionConfig) -> tuple[ImageSet, ImageSet]:
    """The train and test scenes (captions, questions, boxes) a config names."""
    kw: dict[str, Any] = dict(image_size=cfg.image_size, seed=cfg.seed)
    if cfg.dataset == "icon-scenes":
        kw["source"] = cfg.icon_set
    return load(cfg.dataset, "train", n=cfg.n_train, **kw), load(cfg.dataset, "test", n=cfg.n_test, **kw)


def build_coca(cfg: FusionConfig, data: ImageSet, **overrides: Any) -> CoCa:
    """CoCa on a fresh ``cfg.backbone`` for ``data``'s captions and questions (``overrides``: CoCa's arguments)."""
    return CoCa(fresh_backbone(cfg, data), data.captions, data.extras["qa"], **{**cfg.model_kwargs(), **overrides})


@torch.no_grad()
def encode_images(model: CoCa, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-length embeddings (N, E) and decoder tokens (N, n, width) of uint8 images, on the model's device."""
    device = model.logit_scale.device
    with eval_mode(model):
        parts = [model.encode_image_tokens(images[i:i + batch_size].to(device).float().div(255))
                 for i in range(0, len(images), batch_size)]
    return torch.cat([p[0] for p in parts]).float(), torch.cat([p[1] for p in parts])


@torch.no_grad()
def write_captions(model: CoCa, image_tokens: torch.Tensor, beam_width: int = 1, max_new: int = 24,
                   batch_size: int = 128) -> list[str]:
    """A caption per image: greedy (``beam_width`` 1) or beam search."""
    out = []
    with eval_mode(model):
        for i in range(0, len(image_tokens), batch_size):
            chunk = image_tokens[i:i + batch_size]
            ids = (greedy_decode(model, chunk, max_new=max_new) if beam_width == 1
                   else beam_search(model, chunk, max_new=max_new, width=beam_width)).ids
            out += model.vocab.decode(ids)
    return out


@torch.no_grad()
def answer(model: CoCa, image_tokens: torch.Tensor, questions: Sequence[str], max_new: int = 4) -> list[str]:
    """The decoder's greedy answer after "question: ... answer:" for each (image, question) pair; the pairs that
    share a question are decoded together."""
    by_question: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        by_question[q].append(i)
    answers = [""] * len(questions)
    with eval_mode(model):
        for q, rows in by_question.items():
            out = greedy_decode(model, image_tokens[rows], model.vocab.ids(QA_PROMPT.format(q)), max_new=max_new)
            for row, text in zip(rows, model.vocab.decode(out.ids)):
                answers[row] = text
    return answers


def words(text: str) -> str:
    """Lower-case words, without punctuation: how captions are compared (BLEU, CIDEr, attributes)."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def caption_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """BLEU-4 (Papineni et al. 2002) and CIDEr (Vedantam et al. 2015) from pycocoevalcap, one reference each."""
    gts = {i: [words(r)] for i, r in enumerate(references)}
    res = {i: [words(p) or "empty"] for i, p in enumerate(predictions)}  # the scorers refuse an empty caption
    bleu = Bleu(4).compute_score(gts, res, verbose=0)[0][3]
    return {"bleu4": float(bleu), "cider": float(Cider().compute_score(gts, res)[0])}


def caption_attributes(data: ImageSet, caption: str) -> dict[str, str | None]:
    """What a caption says of the primary object: on ``shapes`` its size, colour and shape (the caption's first
    words, "a small red circle ..."); on the icon scenes its name and the background."""
    text = words(caption)
    if data.name == "shapes":
        w = text.split()[1:4]
        w += [None] * (3 - len(w))
        return {"size": w[0], "colour": w[1], "shape": w[2]}
    head, _, place = text.rpartition(" on ")
    first = re.split(r" and an? ", head)[0]
    return {"largest": re.sub(r"^an? ", "", first) or None, "texture": place or None}


def true_attributes(data: ImageSet, i: int) -> dict[str, str]:
    """The attributes :func:`caption_attributes` reads, as scene ``i`` of ``data`` has them."""
    if data.name == "shapes":
        return {k: data.attribute_values[k][data.attributes[k][i]] for k in ("size", "colour", "shape")}
    return {"largest": words(data.extras["phrases"][i][0]),
            "texture": data.attribute_values["texture"][data.attributes["texture"][i]]}


def attribute_accuracy(data: ImageSet, captions: Sequence[str]) -> dict[str, float]:
    """Per attribute, the share of scenes whose caption names it right, and their mean (``mean``)."""
    truth = [true_attributes(data, i) for i in range(len(data))]
    said = [caption_attributes(data, c) for c in captions]
    acc = {k: sum(s[k] == t[k] for s, t in zip(said, truth)) / len(data) for k in truth[0]}
    return {**acc, "mean": sum(acc.values()) / len(acc)}


def retrieval_metrics(model: CoCa, test: ImageSet, image_emb: torch.Tensor) -> dict[str, float]:
    """Image->text and text->image R@1/5/10 on the test pairs (chance k / N)."""
    text_emb = embed_texts(model, test.captions).to(image_emb)
    out = {f"i2t_{k}": v for k, v in retrieval_recall(image_emb, text_emb).items()}
    out.update({f"t2i_{k}": v for k, v in retrieval_recall(text_emb, image_emb).items()})
    return {**out, "retrieval_chance_R@1": 1 / len(test)}


@torch.no_grad()
def itm_accuracy(model: CoCa, test: ImageSet, image_emb: torch.Tensor, image_tokens: torch.Tensor) -> dict[str, float]:
    """Each test image, its caption and the closest other caption in the contrastive space (a different text):
    the share of images for which the ITM head rates the true pair higher (``itm_acc``), and for which the
    contrastive similarity does (``itm_contrastive_acc``)."""
    device = image_tokens.device
    ids = model.vocab.encode(test.captions, model.context_length).to(device)  # (N, L)
    same_text = torch.tensor([[a == b for b in test.captions] for a in test.captions], device=device)
    rows = torch.arange(len(test), device=device)
    with eval_mode(model):
        text_emb, text_tokens = model.encode_text_ids(ids)
        sim = image_emb.to(text_emb) @ text_emb.T  # (N, N)
        negative = sim.masked_fill(same_text, -torch.inf).argmax(1)  # (N,) the closest other caption
        match = [model.itm_logits(image_tokens, t, i).softmax(1)[:, 1] for t, i in
                 ((text_tokens, ids), (text_tokens[negative], ids[negative]))]  # P(matched) of true, negative pairs
    return {"itm_acc": (match[0] > match[1]).float().mean().item(),
            "itm_contrastive_acc": (sim[rows, rows] > sim[rows, negative]).float().mean().item()}


def vqa_accuracy(model: CoCa, train: ImageSet, test: ImageSet, image_tokens: torch.Tensor) -> dict[str, Any]:
    """Accuracy of the decoder's answers per question type (``vqa``) and overall (``vqa_acc``), next to the
    majority answer of each type in training (``vqa_majority``, ``vqa_majority_acc``)."""
    by_type: dict[str, Counter] = defaultdict(Counter)
    for pairs in train.extras["qa"]:
        for q, a in pairs:
            by_type[question_type(q)][a] += 1
    majority = {t: c.most_common(1)[0][0] for t, c in by_type.items()}
    pairs = [(i, q, a) for i, qa in enumerate(test.extras["qa"]) for q, a in qa]
    said = answer(model, image_tokens[[i for i, _, _ in pairs]], [q for _, q, _ in pairs])
    right, base, count = Counter(), Counter(), Counter()
    for (_, q, a), s in zip(pairs, said):
        t = question_type(q)
        count[t] += 1
        right[t] += words(s) == words(a)
        base[t] += words(majority.get(t, "")) == words(a)
    return {"vqa": {t: right[t] / count[t] for t in count}, "vqa_majority": {t: base[t] / count[t] for t in count},
            "vqa_acc": sum(right.values()) / len(pairs), "vqa_majority_acc": sum(base.values()) / len(pairs)}


def fusion_metrics(model: CoCa, train_set: ImageSet, test: ImageSet, cfg: FusionConfig) -> dict[str, Any]:
    """Every evaluation of the chapter, with its baselines (flat keys, and ``vqa`` / ``vqa_majority`` /
    ``caption_attr`` per type), and a few example captions (``examples``)."""
    image_emb, image_tokens = encode_images(model, test.images)
    train_emb, _ = encode_images(model, train_set.images)
    greedy = write_captions(model, image_tokens, 1, cfg.max_caption_tokens)
    beam = write_captions(model, image_tokens, cfg.beam_width, cfg.max_caption_tokens)
    frequent = [Counter(train_set.captions).most_common(1)[0][0]] * len(test)
    nearest = [train_set.captions[j] for j in (image_emb @ train_emb.T).argmax(1).tolist()]
    out: dict[str, Any] = retrieval_metrics(model, test, image_emb)
    for name, captions in (("greedy", greedy), ("beam", beam), ("frequent", frequent), ("nearest", nearest)):
        acc = attribute_accuracy(test, captions)
        scores = caption_scores(captions, test.captions)
        suffix = "" if name == "beam" else f"_{name}"
        out.update({f"caption_attr_acc{suffix}": acc.pop("mean"), f"bleu4{suffix}": scores["bleu4"],
                    f"cider{suffix}": scores["cider"]})
        if name == "beam":
            out["caption_attr"] = acc
    out.update(itm_accuracy(model, test, image_emb, image_tokens))
    out.update(vqa_accuracy(model, train_set, test, image_tokens))
    out["examples"] = [{"truth": test.captions[i], "greedy": greedy[i], "beam": beam[i], "nearest": nearest[i]}
                       for i in range(min(8, len(test)))]
    return out


def train_coca(cfg: FusionConfig, name: str = "coca", **overrides: Any) -> Run:
    """CoCa (or, with ``overrides`` such as :data:`CLIP_ONLY`, CoCa with some losses off) on the config's train
    scenes into ``cfg.out_dir/name`` (a rerun resumes), then :func:`fusion_metrics` (retrieval alone for a model
    whose decoder did not train); the metrics go to ``results.json`` under ``name``."""
    train_set, test = fusion_splits(cfg)
    seed_everything(cfg.seed)
    model = build_coca(cfg, train_set, **overrides)
    run = train(cfg, model, name, train_set)
    if not D.is_main():
        return Run(model, run.result, {})
    if model.weights["caption_weight"] or model.weights["qa_weight"]:
        run.metrics.update(fusion_metrics(model, train_set, test, cfg))
    else:
        run.metrics.update(retrieval_metrics(model, test, encode_images(model, test.images)[0]))
    write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), name: run.metrics})
    return run


def fusion_job(cfg: FusionConfig) -> dict[str, Any]:
    """``vfm-lab train 07``: CoCa and its evaluations; with ``part=all`` also plain CLIP on the same towers and
    budget (CoCa's claim: does the captioning loss help retrieval?). Returns the metrics per run."""
    runs = {"coca": train_coca(cfg)}
    if cfg.part == "all":
        runs["clip"] = train_coca(cfg, "clip", **CLIP_ONLY)
    return {name: run.metrics for name, run in runs.items()}
