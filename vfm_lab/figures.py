"""A figure of each method, drawn where a chapter introduces it: ``method_figure("byol")``.

Every figure is boxes and arrows on one grid, read left to right: grey boxes are data, blue
ones networks that the loss trains, orange ones networks that get no gradient (an EMA copy, a
locked tower, a tokenizer), red the loss. A solid arrow carries gradients back; a dashed one
does not (stop-gradient, no_grad); a dotted one is an update that is not backpropagation (the
EMA, the center, the queue). As every plot of :mod:`vfm_lab.viz`, it returns the figure.

>>> fig = method_figure("mae")
>>> [t.get_text() for t in fig.axes[0].texts][:2]
['image', 'patches']
"""
from __future__ import annotations

import matplotlib.patches
from matplotlib.figure import Figure

from vfm_lab.viz import _subplots

COLOURS = {"data": "#eeeeee", "net": "#cfe2f3", "frozen": "#fde9c9", "loss": "#f4cccc"}
STYLES = {"grad": "-", "nograd": "--", "update": ":"}

# name -> (title, boxes {key: (x, y, text, kind)}, arrows [(from, to, label, style)])
Box = tuple[float, float, str, str]
Arrow = tuple[str, str, str, str]
_TWO_VIEWS: dict[str, Box] = {"x": (0.6, 2.0, "image", "data"), "v1": (2.2, 3.2, "view 1", "data"),
                              "v2": (2.2, 0.8, "view 2", "data")}
_VIEW_ARROWS: list[Arrow] = [("x", "v1", "augment", "grad"), ("x", "v2", "augment", "grad")]
FIGURES: dict[str, tuple[str, dict[str, Box], list[Arrow]]] = {
    "supervised": (
        "Label supervision: a backbone and a head, cross-entropy against the label",
        {"x": (0.6, 3.0, "image", "data"), "f": (2.8, 3.0, "backbone", "net"),
         "h": (5.2, 3.0, "head: linear,\nCosFace or\nsampled softmax", "net"), "y": (5.2, 1.0, "label", "data"),
         "loss": (8.0, 2.0, "cross-entropy\nover the classes", "loss")},
        [("x", "f", "", "grad"), ("f", "h", "features", "grad"), ("h", "loss", "logits", "grad"),
         ("y", "loss", "", "nograd")]),
    "clip": (
        "CLIP: two towers and one B x B similarity matrix (SigLIP: a sigmoid per pair)",
        {"x": (0.6, 3.2, "B images", "data"), "t": (0.6, 0.8, "B captions", "data"),
         "fi": (3.0, 3.2, "image tower\n(backbone +\nprojection)", "net"),
         "ft": (3.0, 0.8, "text tower\n(scratch, or a\nlocked MiniLM)", "net"),
         "ei": (5.6, 3.2, "image\nembeddings x_i", "data"), "et": (5.6, 0.8, "text\nembeddings y_j", "data"),
         "loss": (8.4, 2.0, "logits t x_i . y_j\nmatches on the\ndiagonal", "loss")},
        [("x", "fi", "", "grad"), ("t", "ft", "", "grad"), ("fi", "ei", "normalise", "grad"),
         ("ft", "et", "normalise", "grad"), ("ei", "loss", "", "grad"), ("et", "loss", "", "grad")]),
    "simclr": (
        "SimCLR: one encoder on two views; each view must find its partner among the batch's 2B - 1 others",
        {**_TWO_VIEWS, "f1": (4.4, 3.2, "encoder f\n+ projector g", "net"),
         "f2": (4.4, 0.8, "encoder f\n+ projector g", "net"), "loss": (8.0, 2.0, "NT-Xent\nz1 against z2\nand the batch", "loss")},
        [*_VIEW_ARROWS, ("v1", "f1", "", "grad"), ("v2", "f2", "", "grad"), ("f1", "loss", "z1", "grad"),
         ("f2", "loss", "z2", "grad"), ("f1", "f2", "same weights", "update")]),
    "moco": (
        "MoCo v2: queries against their keys and a queue of older keys from a momentum encoder",
        {**_TWO_VIEWS, "fq": (4.4, 3.2, "query encoder\n+ projector", "net"),
         "fk": (4.4, 0.8, "key encoder\n(EMA copy)", "frozen"), "queue": (6.9, 0.8, "queue of\nolder keys", "data"),
         "loss": (8.6, 2.6, "InfoNCE\nq vs k+ and\nthe queue", "loss")},
        [*_VIEW_ARROWS, ("v1", "fq", "", "grad"), ("v2", "fk", "", "nograd"), ("fq", "loss", "q", "grad"),
         ("fk", "loss", "k+", "nograd"), ("fk", "queue", "enqueue", "update"), ("queue", "loss", "", "nograd"),
         ("fq", "fk", "EMA", "update")]),
    "byol": (
        "BYOL: an online network with a predictor chases an EMA target; no negatives",
        {**_TWO_VIEWS, "fo": (4.2, 3.2, "online encoder\n+ projector", "net"), "p": (6.3, 3.2, "predictor", "net"),
         "ft": (4.2, 0.8, "target encoder\n+ projector\n(EMA copy)", "frozen"),
         "loss": (8.6, 2.0, "|| p - z' ||^2\n(normalised,\nboth ways)", "loss")},
        [*_VIEW_ARROWS, ("v1", "fo", "", "grad"), ("v2", "ft", "", "nograd"), ("fo", "p", "", "grad"),
         ("p", "loss", "p", "grad"), ("ft", "loss", "z' (stop-grad)", "nograd"), ("fo", "ft", "EMA", "update")]),
    "simsiam": (
        "SimSiam: BYOL without the EMA: the same encoder on both sides, a stop-gradient on one",
        {**_TWO_VIEWS, "fo": (4.2, 3.2, "encoder\n+ projector", "net"), "p": (6.3, 3.2, "predictor", "net"),
         "ft": (4.2, 0.8, "encoder\n+ projector", "net"), "loss": (8.6, 2.0, "- cos(p, z')\n(both ways)", "loss")},
        [*_VIEW_ARROWS, ("v1", "fo", "", "grad"), ("v2", "ft", "", "grad"), ("fo", "p", "", "grad"),
         ("p", "loss", "p", "grad"), ("ft", "loss", "z' (stop-grad)", "nograd"), ("fo", "ft", "same weights", "update")]),
    "dino": (
        "DINO: a student on every crop matches a momentum teacher's centred, sharpened output on the global crops",
        {"x": (0.6, 2.0, "image", "data"), "g": (2.3, 3.2, "2 global\ncrops", "data"),
         "l": (2.3, 0.8, "n local\ncrops", "data"), "s": (4.5, 0.8, "student\n(backbone + head)", "net"),
         "t": (4.5, 3.2, "teacher\n(EMA copy)", "frozen"), "c": (6.6, 3.2, "- center c\nsoftmax(. / tau_t)", "frozen"),
         "ps": (6.6, 0.8, "softmax(. / tau_s)", "net"),
         "loss": (8.8, 2.0, "H(P_t, P_s)\nevery pair but\na view with itself", "loss")},
        [("x", "g", "", "grad"), ("x", "l", "", "grad"), ("g", "t", "", "nograd"), ("g", "s", "", "grad"),
         ("l", "s", "", "grad"), ("t", "c", "", "nograd"), ("s", "ps", "", "grad"), ("c", "loss", "P_t", "nograd"),
         ("ps", "loss", "P_s", "grad"), ("s", "t", "EMA", "update")]),
    "mae": (
        "MAE: the encoder reads only the visible quarter of the patches; a light decoder fills in the rest",
        {"x": (0.5, 2.0, "image", "data"), "p": (2.4, 2.0, "patches", "data"),
         "vis": (4.1, 3.2, "visible 25 %\n(random)", "data"), "enc": (5.9, 3.2, "encoder (ViT)\nvisible only", "net"),
         "dec": (7.7, 3.2, "+ mask tokens\ndecoder", "net"), "tgt": (5.9, 0.8, "hidden 75 %:\nnormalised pixels", "data"),
         "loss": (9.3, 1.4, "MSE on the\nhidden patches", "loss")},
        [("x", "p", "", "grad"), ("p", "vis", "mask", "grad"), ("vis", "enc", "", "grad"), ("enc", "dec", "", "grad"),
         ("dec", "loss", "pixels", "grad"), ("p", "tgt", "", "nograd"), ("tgt", "loss", "target", "nograd")]),
    "simmim": (
        "SimMIM, MaskFeat, BEiT: the encoder reads every patch, mask tokens in the hidden blocks; a linear head predicts",
        {"x": (0.6, 2.0, "image", "data"), "p": (2.3, 3.2, "patches, hidden\nblocks -> mask\ntoken", "data"),
         "enc": (4.6, 3.2, "encoder (ViT)\nall patches", "net"), "h": (6.7, 3.2, "linear head", "net"),
         "tgt": (4.6, 0.8, "target: pixels,\nHOG (MaskFeat) or\na token (BEiT)", "frozen"),
         "loss": (8.8, 2.0, "L1 / MSE / CE\non the hidden\npatches", "loss")},
        [("x", "p", "mask", "grad"), ("p", "enc", "", "grad"), ("enc", "h", "", "grad"), ("h", "loss", "", "grad"),
         ("x", "tgt", "", "nograd"), ("tgt", "loss", "", "nograd")]),
    "unicl": (
        "UniCL: captions and class prompts in one batch; every pair with the same label is a positive",
        {"x": (0.6, 3.2, "B images", "data"), "t": (0.6, 0.8, "B texts: captions,\nor 'a photo of\na {class}.'", "data"),
         "fi": (3.0, 3.2, "image tower", "net"), "ft": (3.0, 0.8, "text tower", "net"),
         "y": (5.6, 2.0, "B labels: a class,\nor one of its own\nper caption", "data"),
         "loss": (8.4, 2.0, "softmax over the\nbatch against the\nlabel-match targets", "loss")},
        [("x", "fi", "", "grad"), ("t", "ft", "", "grad"), ("fi", "loss", "x_i", "grad"), ("ft", "loss", "y_j", "grad"),
         ("y", "loss", "targets", "nograd")]),
    "slip": (
        "SLIP: CLIP's loss on the image tower, plus SimCLR's on two more views through the same tower",
        {"x": (0.6, 2.0, "image", "data"), "t": (0.6, 0.3, "caption", "data"),
         "fi": (3.4, 2.0, "image tower\n(one backbone,\nthree passes)", "net"), "ft": (3.4, 0.3, "text tower", "net"),
         "v": (0.6, 3.7, "two strong\nviews", "data"), "clip": (6.6, 0.9, "CLIP loss", "loss"),
         "ssl": (6.6, 3.3, "SimCLR head +\nNT-Xent", "loss"), "sum": (9.0, 2.0, "CLIP\n+ scale x SimCLR", "loss")},
        [("x", "fi", "mild crop", "grad"), ("v", "fi", "", "grad"), ("t", "ft", "", "grad"), ("fi", "clip", "", "grad"),
         ("ft", "clip", "", "grad"), ("fi", "ssl", "", "grad"), ("clip", "sum", "", "grad"), ("ssl", "sum", "", "grad")]),
    "lit": (
        "LiT: a locked pre-trained image tower; only the text tower learns to read its embeddings",
        {"x": (0.6, 3.2, "B images", "data"), "t": (0.6, 0.8, "B captions", "data"),
         "fi": (3.0, 3.2, "image tower\n(pre-trained on\nlabels, locked)", "frozen"),
         "ft": (3.0, 0.8, "text tower\n(from scratch)", "net"),
         "ei": (5.6, 3.2, "its own features,\nno projection", "data"), "et": (5.6, 0.8, "text\nembeddings", "data"),
         "loss": (8.4, 2.0, "CLIP loss", "loss")},
        [("x", "fi", "", "nograd"), ("t", "ft", "", "grad"), ("fi", "ei", "normalise", "nograd"),
         ("ft", "et", "normalise", "grad"), ("ei", "loss", "", "nograd"), ("et", "loss", "", "grad")]),
    "flip": (
        "FLIP: CLIP whose ViT image tower reads a random share of the patches; every patch at test time",
        {"x": (0.5, 3.2, "image", "data"), "p": (2.2, 3.2, "patches", "data"),
         "vis": (3.9, 3.2, "kept share\n(random)", "data"), "fi": (5.8, 3.2, "ViT image tower\nkept patches only", "net"),
         "t": (2.2, 0.8, "caption", "data"), "ft": (5.8, 0.8, "text tower", "net"),
         "loss": (8.6, 2.0, "CLIP loss", "loss")},
        [("x", "p", "", "grad"), ("p", "vis", "drop", "grad"), ("vis", "fi", "", "grad"), ("t", "ft", "", "grad"),
         ("fi", "loss", "", "grad"), ("ft", "loss", "", "grad")]),
    "clip_mim": (
        "MIM with CLIP targets: the student fills hidden blocks with the features a CLIP image tower sees there",
        {"x": (0.6, 2.0, "image", "data"), "p": (2.4, 3.2, "patches, hidden\nblocks -> mask\ntoken", "data"),
         "enc": (4.6, 3.2, "student (ViT)\nall patches", "net"), "h": (6.7, 3.2, "linear head", "net"),
         "tgt": (4.6, 0.8, "teacher: CLIP\nimage tower,\nfeature per patch", "frozen"),
         "loss": (8.8, 2.0, "1 - cosine on\nthe hidden\npatches", "loss")},
        [("x", "p", "mask", "grad"), ("p", "enc", "", "grad"), ("enc", "h", "", "grad"), ("h", "loss", "", "grad"),
         ("x", "tgt", "whole image", "nograd"), ("tgt", "loss", "", "nograd")]),
    "coca": (
        "CoCa + ITM: one text decoder split in two; the second half cross-attends to the image tokens",
        {"x": (0.6, 3.3, "image", "data"), "fi": (2.5, 3.3, "image tower\n-> tokens", "net"),
         "t": (0.6, 0.7, "caption, or\n'question: ...\nanswer: ...'", "data"),
         "ft": (2.5, 0.7, "unimodal text\ntower (causal)\n+ class token", "net"),
         "con": (5.0, 2.0, "contrastive loss\n(pooled image,\nclass token)", "loss"),
         "dec": (5.0, 3.6, "multimodal decoder:\ncausal self-attn,\ncross-attn", "net"),
         "cap": (7.6, 3.6, "next-token loss\n(captions, answers)", "loss"),
         "itm": (7.6, 2.0, "ITM head on the\nfused <end> state", "net"),
         "neg": (7.6, 0.5, "hard negatives\n~ softmax of the\nsimilarities", "data"),
         "litm": (9.6, 2.0, "matched?\ncross-entropy", "loss")},
        [("x", "fi", "", "grad"), ("t", "ft", "", "grad"), ("fi", "con", "mean", "grad"), ("ft", "con", "", "grad"),
         ("fi", "dec", "tokens", "grad"), ("ft", "dec", "token states", "grad"), ("dec", "cap", "LM head", "grad"),
         ("dec", "itm", "", "grad"), ("con", "neg", "", "nograd"), ("neg", "itm", "", "nograd"),
         ("itm", "litm", "", "grad")]),
    "glip": (
        "GLIP: every cell of the feature map is a region; the alignment with the prompt's phrases is the classifier",
        {"x": (0.6, 3.3, "image", "data"), "fi": (2.6, 3.3, "image tower\n+ feature\npyramid", "net"),
         "t": (0.6, 0.7, "prompt:\n'find: heart.\nsmall red star.'", "data"),
         "ft": (2.6, 0.7, "text tower\n(locked)", "frozen"), "p": (5.0, 0.7, "phrase\nembeddings P", "data"),
         "o": (5.0, 3.3, "region\nembeddings O\n(one per cell)", "net"),
         "box": (5.0, 2.0, "box head:\ncentre offset,\nlog size", "net"),
         "align": (7.6, 3.0, "S = s O.P + b\nfocal loss per\n(region, phrase)", "loss"),
         "lbox": (7.6, 1.0, "GIoU + L1\non positive\ncells", "loss")},
        [("x", "fi", "", "grad"), ("t", "ft", "", "nograd"), ("ft", "p", "", "nograd"), ("fi", "o", "", "grad"),
         ("fi", "box", "", "grad"), ("o", "align", "", "grad"), ("p", "align", "", "nograd"),
         ("box", "lbox", "", "grad")]),
    "sam": (
        "SAM: the image encoder runs once per image; the light decoder answers every prompt with 3 masks and their IoU",
        {"x": (0.6, 3.3, "image", "data"), "enc": (2.6, 3.3, "image encoder\n+ neck\n(once per image)", "net"),
         "emb": (4.9, 3.3, "image\nembedding", "data"),
         "pr": (0.6, 0.8, "prompt: a click or\na box; next clicks\nfrom the error", "data"),
         "pe": (2.6, 0.8, "prompt encoder:\nFourier features\n+ type embeddings", "net"),
         "dec": (4.9, 1.6, "mask decoder:\ntwo-way attention,\nupsampling x4", "net"),
         "out": (7.2, 1.6, "3 masks\n+ predicted IoU", "data"),
         "loss": (9.3, 3.2, "focal + dice\non the best mask", "loss"),
         "liou": (9.3, 0.6, "MSE on the\npredicted IoU", "loss")},
        [("x", "enc", "", "grad"), ("enc", "emb", "", "grad"), ("emb", "dec", "", "grad"), ("pr", "pe", "", "grad"),
         ("pe", "dec", "", "grad"), ("dec", "out", "", "grad"), ("out", "loss", "", "grad"),
         ("out", "liou", "", "grad")]),
    "lseg": (
        "LSeg: every pixel's embedding against the text embeddings of the category names; the best match is its label",
        {"x": (0.6, 3.3, "image", "data"), "fi": (2.8, 3.3, "image tower\n+ feature\npyramid", "net"),
         "px": (5.6, 3.3, "pixel embeddings\n(upsampled\nto the image)", "net"),
         "t": (0.6, 0.8, "'background',\n'star', 'heart', ...", "data"),
         "ft": (2.8, 0.8, "text tower\n(locked)", "frozen"), "te": (5.6, 0.8, "text\nembeddings", "net"),
         "loss": (8.4, 2.0, "s f.t per pixel\ncross-entropy over\nthe texts", "loss")},
        [("x", "fi", "", "grad"), ("fi", "px", "", "grad"), ("t", "ft", "", "nograd"), ("ft", "te", "linear map", "nograd"),
         ("px", "loss", "", "grad"), ("te", "loss", "", "grad")]),
}


def method_figure(name: str) -> Figure:
    """The schematic of method ``name`` (one of :data:`FIGURES`; MoCo v3 is ``moco`` without the queue)."""
    if name not in FIGURES:
        raise ValueError(f"no figure for method={name!r}; choose one of {', '.join(FIGURES)}")
    title, boxes, arrows = FIGURES[name]
    fig, ax = _subplots(figsize=(11, 3.6))
    ax.set_xlim(-0.3, 10.3)
    ax.set_ylim(-0.1, 4.2)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    patches = {}
    for key, (x, y, text, kind) in boxes.items():
        ax.text(x, y, text, ha="center", va="center", fontsize=8, zorder=3)
        width, height = 1.55, 0.45 + 0.28 * text.count("\n")
        patches[key] = matplotlib.patches.FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                                         boxstyle="round,pad=0.08", fc=COLOURS[kind], ec="#555555",
                                                         zorder=2)
        ax.add_patch(patches[key])
    for src, dst, label, style in arrows:
        ax.annotate("", xy=boxes[dst][:2], xytext=boxes[src][:2], zorder=1,
                    arrowprops=dict(arrowstyle="-|>", linestyle=STYLES[style], color="#333333", shrinkA=0, shrinkB=0,
                                    patchA=patches[src], patchB=patches[dst], connectionstyle="arc3,rad=0.0"))
        if label:
            (x0, y0), (x1, y1) = boxes[src][:2], boxes[dst][:2]
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, label, ha="center", va="bottom", fontsize=7, style="italic",
                    color="#333333", zorder=4, bbox=dict(fc="white", ec="none", alpha=0.8, pad=0.5))
    legend = [matplotlib.patches.Patch(fc=c, ec="#555555", label=k) for k, c in
              {"data": COLOURS["data"], "trained": COLOURS["net"], "no gradient": COLOURS["frozen"],
               "loss": COLOURS["loss"]}.items()]
    ax.legend(handles=legend, loc="lower left", fontsize=7, ncol=4, frameon=False, bbox_to_anchor=(0.0, -0.08))
    return fig
