"""Benchmarks, as ratios measured in one process (``vfm-lab bench engine|shapes|ssl|mim|clip|methods|all``).

- engine: seconds per optimizer step of :func:`vfm_lab.engine.fit` against a minimal
  hand-written PyTorch loop (same model, batch, augmentation, optimizer, precision).
  The engine's extras -- schedules, the non-finite guard, logging, progress bar -- should
  cost at most 10 %. The same loop in timm's default NCHW layout measures what the
  backbone's channels-last layout buys (``channels_last_speedup``).
- shapes: images per second of ``shapes`` generation against images per second of a
  training step on them: generation must be far faster than training, so it never slows it.
- ssl: images per second of a full training step (augmentation included) of SimCLR, BYOL
  and DINO against the same method written with lightly [0] (its heads, losses, momentum
  helpers and transforms, in its documented DataLoader pipeline) on the same backbone,
  batch, view recipes, optimizer and precision; and where the time goes (augmentation
  against the model's forward, backward and update). Needs lightly (``pip install -e ".[test]"``).
- clip: images per second of a CLIP training step through our engine against open_clip's own training loop
  (``open_clip_train.train.train_one_epoch``) on the same model (behind open_clip's model interface), data, batch,
  optimizer and precision.
- methods: for every chapter's methods, as their jobs build them, images per second of a full training step on
  one batch, its FLOPs (``torch.utils.flop_counter``: forward and backward) and its model FLOP utilisation against
  an n x n matrix product on the same CPU in the same precision; the table goes to ``benchmarks/methods.md``.
- mim: images per second of an MAE training step against a SimMIM step on the same ViT,
  and of their encoders alone: MAE's encoder runs on the visible quarter of the patches (17 of
  65 tokens at 32 px with the class token) and a narrow decoder fills in the rest; SimMIM's
  encoder runs every token, mask tokens included, under a linear head.

- [0] lightly, https://github.com/lightly-ai/lightly (``make bench`` installs it)
"""
from __future__ import annotations

import copy
import functools
import time
from typing import Callable

import torch
from torch import nn

from vfm_lab.augment import Augment
from vfm_lab.backbones import build_backbone
from vfm_lab.data import ImageSet, batches, load
from vfm_lab.engine import fit
from vfm_lab.jobs import supervised_augment
from vfm_lab.methods.mae import MAE
from vfm_lab.methods.simmim import SimMIM
from vfm_lab.methods.supervised import Classifier
from vfm_lab.results import REPO
from vfm_lab.runtime import autocast, best_seconds, resolve_precision, train_steps_per_second

BATCH, SIZE, STEPS = 128, 32, 30
METHODS_TABLE = REPO / "benchmarks" / "methods.md"  # what `vfm-lab bench methods` last measured, committed


def _classifier(data) -> Classifier:
    torch.manual_seed(0)
    return Classifier(build_backbone("convnet-s", data.channels, SIZE), data.num_classes,
                      augment=supervised_augment(SIZE))


def hand_written_loop(data, steps: int, dtype: torch.dtype, channels_last: bool = True) -> float:
    """The reference: the fewest lines that train the same model the same way (``channels_last=False``:
    in timm's default NCHW layout)."""
    device = torch.device("cpu")
    model = _classifier(data)
    model.backbone.set_channels_last(channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    start = time.perf_counter()
    for batch in batches(data, BATCH, seed=0):
        with autocast(device, dtype):
            loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def engine_loop(data, steps: int) -> float:
    model = _classifier(data)
    result = fit(model, data, epochs=1, batch_size=BATCH, lr=1e-3, device="cpu", precision="auto", progress=True,
                 log_every=10)
    assert result.steps == steps
    return result.seconds / steps


def bench_engine(repeats: int = 2) -> dict[str, float]:
    dtype = resolve_precision("auto", torch.device("cpu"))
    data = load("shapes", "train", n=BATCH * STEPS, image_size=SIZE)
    engine_loop(data, STEPS)  # warm-up: allocator, kernels
    ref, eng, nchw = [], [], []
    for _ in range(repeats):  # interleaved, best of each: the machine's noise hits all three
        ref.append(hand_written_loop(data, STEPS, dtype))
        eng.append(engine_loop(data, STEPS))
        nchw.append(hand_written_loop(data, STEPS, dtype, channels_last=False))
    return {"hand_written_s_per_step": min(ref), "engine_s_per_step": min(eng),
            "engine_overhead": min(eng) / min(ref) - 1, "nchw_s_per_step": min(nchw),
            "channels_last_speedup": min(nchw) / min(ref), "precision": str(dtype), "threads": torch.get_num_threads()}


def bench_shapes(n: int = 4096) -> dict[str, float]:
    load("shapes", "train", n=256, image_size=SIZE)  # warm-up
    start = time.perf_counter()
    data = load("shapes", "train", n=n, image_size=SIZE, seed=1)
    generate = n / (time.perf_counter() - start)
    train = BATCH / engine_loop(data.subset(slice(0, BATCH * 10)), 10)
    return {"shapes_images_per_s": generate, "train_images_per_s": train, "generation_over_training": generate / train}


# ---- SSL against lightly -----------------------------------------------------------------
SSL_BATCH, SSL_STEPS = 128, 8


def _ours(name: str, backbone: nn.Module) -> nn.Module:
    """Our method with heads sized as the lightly counterpart below."""
    from vfm_lab.methods.byol import BYOL
    from vfm_lab.methods.dino import DINO
    from vfm_lab.methods.simclr import SimCLR

    if name == "simclr":
        return SimCLR(backbone, proj_dim=128, hidden_dim=backbone.embed_dim, temperature=0.5)
    if name == "byol":
        return BYOL(backbone, proj_dim=256, hidden_dim=1024)
    return DINO(backbone, out_dim=4096, hidden_dim=1024, bottleneck_dim=256, n_local=6)


def _views(method: nn.Module) -> list[Augment]:
    if hasattr(method, "global_views"):  # DINO: globals, then the local recipe once per local view
        return [*method.global_views, *[method.local_view] * method.n_local]
    return [method.view1, method.view2]


def _lightly_view(aug: Augment):
    """lightly's per-image (PIL) transform with the parameters of one of our view recipes."""
    from lightly.transforms.dino_transform import DINOViewTransform

    return DINOViewTransform(crop_size=aug.size, crop_scale=aug.crop_scale, hf_prob=aug.flip_p, cj_prob=aug.jitter_p,
                             cj_strength=1.0, cj_bright=aug.brightness, cj_contrast=aug.contrast,
                             cj_sat=aug.saturation, cj_hue=aug.hue, random_gray_scale=aug.grayscale_p,
                             gaussian_blur=aug.blur_p, sigmas=aug.blur_sigma, solarization_prob=aug.solarize_p,
                             normalize=None)


class _LightlyMethod(nn.Module):
    """The method as lightly's examples write it (examples/pytorch/simclr.py, byol.py, dino.py)."""

    def __init__(self, name: str, backbone: nn.Module):
        super().__init__()
        from lightly import loss, models

        m, D = models.modules, backbone.embed_dim
        self.name, self.backbone = name, backbone
        if name == "simclr":
            self.head = m.SimCLRProjectionHead(D, D, 128)
            self.criterion = loss.NTXentLoss(temperature=0.5)
        elif name == "byol":
            self.head = m.BYOLProjectionHead(D, 1024, 256)
            self.predictor = m.BYOLPredictionHead(256, 1024, 256)
            self.criterion = loss.NegativeCosineSimilarity()
        else:
            self.head = m.DINOProjectionHead(D, 1024, 256, 4096)
            self.criterion = loss.DINOLoss(output_dim=4096, warmup_teacher_temp_epochs=0)
        if name != "simclr":  # lightly's DINO head holds a weight_norm, which deepcopy refuses: build it anew
            self.teacher_backbone = copy.deepcopy(backbone)
            self.teacher_head = m.DINOProjectionHead(D, 1024, 256, 4096) if name == "dino" else copy.deepcopy(self.head)
            models.utils.deactivate_requires_grad(self.teacher_backbone)
            models.utils.deactivate_requires_grad(self.teacher_head)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        if self.name == "simclr":
            z0, z1 = (self.head(self.backbone(v)) for v in views)
            return self.criterion(z0, z1)
        with torch.no_grad():
            targets = [self.teacher_head(self.teacher_backbone(v)) for v in views[:2]]
        if self.name == "byol":
            p0, p1 = (self.predictor(self.head(self.backbone(v))) for v in views)
            return 0.5 * (self.criterion(p0, targets[1]) + self.criterion(p1, targets[0]))
        return self.criterion(targets, [self.head(self.backbone(v)) for v in views], epoch=0)

    def after_step(self) -> None:
        if self.name != "simclr":
            from lightly.models.utils import update_momentum

            update_momentum(self.backbone, self.teacher_backbone, m=0.99)
            update_momentum(self.head, self.teacher_head, m=0.99)


class _PILViews(torch.utils.data.Dataset):
    def __init__(self, data: ImageSet, views: list):
        from torchvision.transforms.functional import to_pil_image

        self.images = [to_pil_image(img) for img in data.images]  # decoded once, as a dataset would hold them
        self.views = views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        return [view(self.images[i]) for view in self.views]


def lightly_loop(name: str, data: ImageSet, dtype: torch.dtype, steps: int) -> tuple[float, float]:
    """lightly's pipeline: per-image PIL transforms in a DataLoader (no workers: this process has the
    cores), then the step. Returns (seconds per step, seconds per step of the augmentation alone)."""
    torch.manual_seed(0)
    model = _LightlyMethod(name, build_backbone("convnet-s", data.channels, SIZE))
    views = [_lightly_view(a) for a in _views(_ours(name, build_backbone("convnet-s", data.channels, SIZE)))]
    loader = torch.utils.data.DataLoader(_PILViews(data, views), batch_size=SSL_BATCH, shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    device = torch.device("cpu")
    start = time.perf_counter()
    for views_batch in loader:
        with autocast(device, dtype):
            loss = model(views_batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.after_step()
    total = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    for _ in loader:
        pass
    return total, (time.perf_counter() - start) / steps


def our_loop(name: str, data: ImageSet, steps: int) -> tuple[float, float]:
    """Our method through the engine (batched augmentation on the training device). Returns
    (seconds per step, seconds per step of the augmentation alone)."""
    torch.manual_seed(0)
    method = _ours(name, build_backbone("convnet-s", data.channels, SIZE))
    result = fit(method, data, epochs=1, batch_size=SSL_BATCH, lr=1e-3, device="cpu", precision="auto",
                 progress=False)
    assert result.steps == steps
    views = _views(method)
    start = time.perf_counter()
    for batch in batches(data, SSL_BATCH, seed=0):
        [view(batch["image"]) for view in views]
    return result.seconds / steps, (time.perf_counter() - start) / steps


def bench_ssl(methods: tuple[str, ...] = ("simclr", "byol", "dino"), repeats: int = 2) -> dict[str, float]:
    try:
        import lightly  # noqa: F401
    except ImportError:
        raise SystemExit('the ssl benchmark compares against lightly: pip install -c constraints.txt -e ".[test]" '
                         '(make setup does it)') from None
    dtype = resolve_precision("auto", torch.device("cpu"))
    data = load("shapes", "train", n=SSL_BATCH * SSL_STEPS, image_size=SIZE)
    out: dict[str, float] = {}
    for name in methods:
        our_loop(name, data.subset(slice(0, SSL_BATCH * 2)), 2)  # warm-up: allocator, kernels
        ours, theirs = [], []
        for _ in range(repeats):  # interleaved, best of each: the machine's noise hits both
            ours.append(our_loop(name, data, SSL_STEPS))
            theirs.append(lightly_loop(name, data, dtype, SSL_STEPS))
        (step, aug), (l_step, l_aug) = min(ours), min(theirs)
        out.update({f"{name}/ours_images_per_s": SSL_BATCH / step, f"{name}/lightly_images_per_s": SSL_BATCH / l_step,
                    f"{name}/ratio": l_step / step, f"{name}/ours_augment_share": aug / step,
                    f"{name}/lightly_augment_share": l_aug / l_step})
    out["threads"] = torch.get_num_threads()
    return out


# ---- MAE against SimMIM ----------------------------------------------------------------------
@torch.no_grad()
def _mim_encoder_per_second(method: nn.Module, images: torch.Tensor, steps: int, dtype: torch.dtype) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        with autocast(torch.device("cpu"), dtype):
            if isinstance(method, MAE):
                method.forward_encoder(images)
            else:
                method.predict(images, method.draw_mask(len(images), images.device))
    return steps / (time.perf_counter() - start)


def bench_mim(backbone: str = "vit-nano", batch_size: int = 128, steps: int = 10, repeats: int = 3,
              precision: str = "auto") -> dict[str, float]:
    """Images per second of an MAE and a SimMIM training step (and of their encoders alone) on
    ``backbone`` at 32 px, and MAE's speed-up over SimMIM."""
    dtype = resolve_precision(precision, torch.device("cpu"))
    data = load("shapes", "train", n=batch_size, image_size=32)
    batch = {"image": data.images.float() / 255}
    torch.manual_seed(0)
    methods = {"mae": MAE(build_backbone(backbone, 3, 32)), "simmim": SimMIM(build_backbone(backbone, 3, 32))}
    step = {name: 0.0 for name in methods}
    encoder = {name: 0.0 for name in methods}
    for name, method in methods.items():  # warm-up: allocator, kernels
        train_steps_per_second(method, batch, 2, dtype)
    for _ in range(repeats):
        for name, method in methods.items():
            step[name] = max(step[name], batch_size * train_steps_per_second(method, batch, steps, dtype))
            encoder[name] = max(encoder[name],
                                batch_size * _mim_encoder_per_second(method, batch["image"], steps, dtype))
    return {"mae_train_images_per_s": step["mae"], "simmim_train_images_per_s": step["simmim"],
            "mae_over_simmim_train": step["mae"] / step["simmim"],
            "mae_over_simmim_encoder": encoder["mae"] / encoder["simmim"],
            "backbone": backbone, "precision": str(dtype), "threads": torch.get_num_threads()}


class _OpenClipInterface(nn.Module):
    """Our :class:`~vfm_lab.methods.clip.ClipModel` behind open_clip's model interface, as ``open_clip_train`` calls
    it: ``model(images, texts)`` -> the unit-length features and the scale (the same augmentation, towers and
    projections as our step)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip, self.logit_scale = clip, clip.logit_scale

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.clip.augment(images) if self.clip.augment is not None and self.training else images
        return {"image_features": self.clip.encode_image(x), "text_features": self.clip.encode_text_inputs(texts),
                "logit_scale": self.logit_scale.exp()}


def open_clip_loop(data: ImageSet, steps: int, precision: str) -> float:
    """Seconds per step of ``open_clip_train.train.train_one_epoch`` (open_clip's own training loop: autocast,
    ClipLoss, AdamW, the logit-scale clamp, its meters and logging) on our CLIP, its batches prepared in memory."""
    import argparse
    import logging

    from open_clip.loss import ClipLoss
    from open_clip_train.train import train_one_epoch

    from vfm_lab import jobs
    from vfm_lab.config import ClipConfig

    cfg = ClipConfig.from_params(batch_size=BATCH)
    torch.manual_seed(0)
    clip = jobs.build_clip(cfg, data)
    model = _OpenClipInterface(clip)
    pairs = [(b["image"].float() / 255, clip.text_inputs[b["index"]]) for b in batches(data, BATCH, seed=0)]

    class Loader(list):
        num_batches, num_samples = len(pairs), len(pairs) * BATCH

    loader = Loader(pairs)
    train = argparse.Namespace(dataloader=loader, set_epoch=lambda epoch: None)
    args = argparse.Namespace(device="cpu", precision="amp_bf16" if precision == "bf16" else "fp32", accum_freq=1,
                              distill=False, skip_scheduler=True, grad_clip_norm=None, horovod=False,
                              log_every_n_steps=10 ** 9, batch_size=BATCH, world_size=1, rank=0, local_rank=0,
                              wandb=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)  # its per-log-step info lines
    try:
        start = time.perf_counter()
        train_one_epoch(model, {"train": train}, ClipLoss(), 0, optimizer, None, None, None, args)
        seconds = time.perf_counter() - start
    finally:
        logging.getLogger().setLevel(level)
    assert len(pairs) == steps
    return seconds / steps


def our_clip_loop(data: ImageSet, steps: int) -> float:
    """Seconds per step of the same CLIP through our engine."""
    from vfm_lab import jobs
    from vfm_lab.config import ClipConfig

    cfg = ClipConfig.from_params(batch_size=BATCH)
    torch.manual_seed(0)
    result = fit(jobs.build_clip(cfg, data), data, epochs=1, batch_size=BATCH, lr=1e-3, weight_decay=0.1,
                 device="cpu", precision="auto", progress=False)
    assert result.steps == steps
    return result.seconds / steps


def bench_clip(steps: int = 10, repeats: int = 2) -> dict[str, float]:
    """Images per second of a CLIP training step through our engine against open_clip's own training loop
    (``open_clip_train``) on the same model, data, batch, optimizer and precision; interleaved, the best of each."""
    dtype = resolve_precision("auto", torch.device("cpu"))
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    data = load("shapes", "train", n=BATCH * steps, image_size=SIZE)
    our_clip_loop(data.subset(slice(0, BATCH * 2)), 2)  # warm-up: allocator, kernels
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(our_clip_loop(data, steps))
        theirs.append(open_clip_loop(data, steps, precision))
    return {"clip/ours_images_per_s": BATCH / min(ours), "clip/open_clip_train_images_per_s": BATCH / min(theirs),
            "clip/ratio": min(theirs) / min(ours), "precision": str(dtype), "threads": torch.get_num_threads()}


def _chapter_methods(size: int = 32) -> dict[str, Callable[[], tuple[nn.Module, ImageSet]]]:
    """Every chapter's methods as its job builds them (the ``smoke`` configs' hyper-parameters), each with the scenes
    its batches come from (chapters 08 and 09 on CLIP towers built fresh: the cost does not depend on their weights)."""
    from vfm_lab import jobs
    from vfm_lab.config import (ClipConfig, ContrastiveConfig, FusionConfig, MIMConfig, NonContrastiveConfig,
                                PixelConfig, RegionConfig, SupervisedConfig, SynergyConfig)

    shapes = load("shapes", "train", n=256, image_size=size)
    sup, clip, syn, fus = (c.from_params() for c in (SupervisedConfig, ClipConfig, SynergyConfig, FusionConfig))
    con, non, mim = ContrastiveConfig.from_params(), NonContrastiveConfig.from_params(), MIMConfig.from_params()
    reg, pix = RegionConfig.from_params(n_train=256), PixelConfig.from_params(n_train=256)
    scenes = functools.cache(lambda chapter: jobs.region_splits(reg if chapter == "08" else pix))
    out: dict[str, Callable[[], tuple[nn.Module, ImageSet]]] = {
        "supervised (01)": lambda: (jobs.build_supervised(sup, shapes), shapes),
        "CLIP (02)": lambda: (jobs.build_clip(clip, shapes), shapes)}
    for name in ("simclr", "moco_v2", "moco_v3"):
        out[f"{name} (03)"] = lambda name=name: (jobs.build_contrastive(con, jobs.fresh_backbone(con, shapes), name),
                                                 shapes)
    for name in ("byol", "simsiam", "dino"):
        backbone = non.dino_backbone if name == "dino" else None
        out[f"{name} (04)"] = lambda name=name, backbone=backbone: (
            jobs.build_non_contrastive(non, jobs.fresh_backbone(non, shapes, backbone), name), shapes)
    for name in jobs.MIM_METHODS:
        out[f"{name} (05)"] = lambda name=name: (jobs.build_mim(mim, name, shapes), shapes)
    for name in ("slip", "unicl"):
        out[f"{name} (06)"] = lambda name=name: (jobs.build_pair_model(syn, shapes, name), shapes)
    out["coca (07)"] = lambda: (jobs.build_coca(fus, fusion := jobs.fusion_splits(fus)[0]), fusion)
    out["glip (08)"] = lambda: (jobs.build_grounder(reg, scenes("08"), jobs.build_clip(reg, scenes("08").captions)),
                                scenes("08").train)
    out["sam (09)"] = lambda: (jobs.build_segmenter(pix, scenes("09").captions), scenes("09").captions)
    out["lseg (09)"] = lambda: (jobs.build_text_segmenter(pix, scenes("09"), jobs.build_clip(pix, scenes("09").captions)),
                                scenes("09").train)
    return out


def step_flops(method: nn.Module, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> float:
    """Floating-point operations of one training step's forward and backward, counted by
    ``torch.utils.flop_counter`` (matrix products and convolutions; the optimizer's elementwise update is left out)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with autocast(torch.device("cpu"), dtype):
            loss = method(batch)["loss"]
        loss.backward()
    method.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def top_costs(method: nn.Module, batch: dict[str, torch.Tensor], dtype: torch.dtype, k: int = 5
              ) -> list[tuple[str, float]]:
    """Where one training step's time goes: the ``k`` operators with the most self CPU time (``torch.profiler``), each
    with its share of the step."""
    from torch.profiler import ProfilerActivity, profile

    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with autocast(torch.device("cpu"), dtype):
            loss = method(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    return [(e.key, e.self_cpu_time_total / total) for e in ops[:k]]


def matmul_peak(dtype: torch.dtype, n: int = 1024) -> float:
    """FLOP/s of an n x n matrix product on this CPU in ``dtype``: the peak a training step's MFU is measured
    against (the best of five)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / best_seconds(lambda: a @ b)


def bench_methods(batch_size: int = 64, steps: int = 5, precision: str = "auto",
                  names: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
    """Per method of every chapter (or of ``names``): images per second of a full training step (forward, backward,
    AdamW) on one batch of ``batch_size``, the step's FLOPs, the model FLOP utilisation (achieved FLOP/s over
    :func:`matmul_peak` in the same precision) and :func:`top_costs`. Peak memory is left out on the CPU (PyTorch has no CPU allocator
    statistics)."""
    dtype = resolve_precision(precision, torch.device("cpu"))
    peak = matmul_peak(dtype)
    table = {}
    for name, build in _chapter_methods().items():
        if names is not None and name not in names:
            continue
        torch.manual_seed(0)
        method, data = build()
        method.train()
        batch = next(batches(data, batch_size, seed=0))
        flops = step_flops(method, batch, dtype)
        train_steps_per_second(method, batch, 1, dtype)  # warm-up: allocator, kernels
        per_s = train_steps_per_second(method, batch, steps, dtype)
        table[name] = {"images_per_s": batch_size * per_s, "gflop_per_step": flops / 1e9, "mfu": flops * per_s / peak,
                       "top_costs": top_costs(method, batch, dtype)}
    return table


def methods_markdown(table: dict[str, dict[str, float]], precision: str = "auto", batch_size: int = 64) -> str:
    """:func:`bench_methods`' table in Markdown, with the machine, precision and threads it ran with."""
    from vfm_lab.reference import machine

    dtype = resolve_precision(precision, torch.device("cpu"))
    lines = [f"Training step per method (`vfm-lab bench methods`): batch {batch_size} at 32 px, {dtype}, "
             f"{torch.get_num_threads()} thread(s), {machine()}; MFU against an n x n matrix product in the same "
             f"precision; the top 5 operators by self CPU time of one step (torch.profiler)", "",
             "| method (chapter) | images/s | GFLOP per step | MFU | where the time goes |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['images_per_s']:.0f} | {v['gflop_per_step']:.2f} | {100 * v['mfu']:.1f} % | "
              + ", ".join(f"{op.removeprefix('aten::')} {100 * share:.0f} %" for op, share in v["top_costs"]) + " |"
              for k, v in table.items()]
    return "\n".join(lines)


def main(what: str = "all") -> int:
    results = {}
    if what in ("engine", "all"):
        results.update(bench_engine())
    if what in ("shapes", "all"):
        results.update(bench_shapes())
    if what in ("ssl", "all"):
        results.update(bench_ssl())
    if what in ("mim", "all"):
        results.update(bench_mim())
    if what in ("clip", "all"):
        results.update(bench_clip())
    if what in ("methods", "all"):
        table = bench_methods()
        print(methods_markdown(table))
        METHODS_TABLE.parent.mkdir(exist_ok=True)
        METHODS_TABLE.write_text(methods_markdown(table) + "\n")
        print(f"(written to {METHODS_TABLE})")
    for k, v in results.items():
        print(f"{k:>28}: {v:.4g}" if isinstance(v, float) else f"{k:>28}: {v}")
    return 0
