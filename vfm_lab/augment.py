"""Batched image augmentation on the training device, with parameters drawn per sample.

Self-supervised methods learn from two (or more) random views of each image, so the
augmentation *is* the pretext task (SimCLR section 3: "composition of data augmentations
plays a critical role"). A view must be random per image: on a batched tensor,
``torchvision.transforms.v2`` draws ONE set of parameters and applies it to the whole
batch (every image gets the same crop box, the same jitter), which makes the two views of
a batch differ by one shared transform. That is the reason this module exists: every op
below draws its parameters per sample, in one vectorised call for the batch (no Python
loop over images), on whatever device the images are on.

Randomness comes from an optional ``torch.Generator`` or, without one, from the global
RNG, so a resumed run that restores ``torch.get_rng_state()`` reproduces its views.
Parameters are drawn on the generator's device (the CPU for the global RNG) and then moved
to the images. Every op draws its numbers for the whole batch whether or not a sample is
selected, so what a later op draws does not depend on earlier coin flips, and picks
its output per sample (never a Python branch on a sample).

From ``torchvision.transforms.v2.functional`` we use the ops that have no parameter to
vary (``rgb_to_grayscale``, ``horizontal_flip``, ``solarize``) and pick their output per
sample; crop boxes, jitter factors and blur sigmas must differ per sample, and its
functions take each as one Python number per call, so we write those ops here.

Ops: :func:`random_resized_crop`, :func:`horizontal_flip`, :func:`color_jitter`,
:func:`random_grayscale`, :func:`tone_curve`, :func:`gaussian_blur`, :func:`solarize`; the recipe
:class:`Augment` composes them, :func:`simclr`, :func:`byol_view1`, :func:`byol_view2`,
:func:`dino_global`, :func:`dino_local`, :func:`weak` and :func:`none` name the published
recipes, and :func:`multi_crop` makes DINO's global and local views.

References
- [0] SimCLR: Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual
  Representations", appendix A (crop, flip, colour distortion of strength s, blur). arXiv:2002.05709
- [1] BYOL: Grill et al., 2020, "Bootstrap Your Own Latent", table 6 (asymmetric blur and
  solarisation of the two views). arXiv:2006.07733
- [2] DINO: Caron et al., 2021, "Emerging Properties in Self-Supervised Vision Transformers",
  section 3.1 and ``main_dino.py`` ``DataAugmentationDINO`` (multi-crop). arXiv:2104.14294

>>> x = torch.rand(4, 3, 32, 32)  # (B, C, H, W) in [0, 1]
>>> g = torch.Generator().manual_seed(0)
>>> v = simclr(24)(x, generator=g)  # (B, C, 24, 24)
>>> v.shape, v.dtype, 0 <= float(v.min()) and float(v.max()) <= 1
(torch.Size([4, 3, 24, 24]), torch.float32, True)
>>> [tuple(t.shape) for t in multi_crop(x, dino_global(32), dino_local(16), n_local=2)]
[(4, 3, 32, 32), (4, 3, 32, 32), (4, 3, 16, 16), (4, 3, 16, 16)]
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

# RGB -> YIQ (NTSC 1953): Y is luma, (I, Q) the chroma plane that a hue shift rotates.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.596, -0.274, -0.322],
                            [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


# ---------------------------------------------------------------- checks and random draws
def _check_images(x: torch.Tensor, colour: bool = False) -> None:
    if not torch.is_tensor(x) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        dtype = x.dtype if torch.is_tensor(x) else ""
        raise ValueError(f"images must be a float tensor (B, C, H, W) in [0, 1], got {shape} {dtype}")
    if colour and x.shape[1] not in (1, 3):
        raise ValueError(f"images have C={x.shape[1]} channels; colour ops take C=1 (grey) or C=3 (RGB)")


def _check_p(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}={p!r} is not a probability; choose a value in [0, 1]")


def _check_range(name: str, r: tuple[float, float], upper: float = math.inf) -> None:
    if not isinstance(r, Sequence) or len(r) != 2 or not 0.0 < r[0] <= r[1] <= upper:
        bound = "" if upper == math.inf else f" <= {upper}"
        raise ValueError(f"{name}={r!r} is not a range; need (low, high) with 0 < low <= high{bound}")


def _check_jitter(brightness: float, contrast: float, saturation: float, hue: float) -> None:
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if not value >= 0.0:
            raise ValueError(f"{name}={value!r} is out of range; choose a value >= 0 (0 turns it off)")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue={hue!r} is out of range; choose a value in [0, 0.5] (a fraction of a turn)")


def _check_points(points: int) -> None:
    if not isinstance(points, int) or isinstance(points, bool) or points < 2:
        raise ValueError(f"tone curve points={points!r} must be an int >= 2 (control values of the curve)")


def _rand(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) float32 on the generator's device (the CPU for the global RNG)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device)


def _uniform(low: float, high: float, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One value per sample of ``x``, uniform in [low, high], on x's device and dtype."""
    u = _rand((x.shape[0],), generator)  # (B,)
    return (low + (high - low) * u).to(x.device, x.dtype)


def _coin(p: float, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, 1, 1, 1) of 1.0 and 0.0 in x's dtype: which samples an op with probability ``p`` touches."""
    return (_rand((x.shape[0],), generator) < p).to(x.device, x.dtype).view(-1, 1, 1, 1)


def _select(coin: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` where ``coin`` is 1, ``x`` where it is 0, exactly: ``torch.lerp`` returns its
    end points bit for bit at weights 0 and 1, and on the CPU it is about 4x faster than
    ``torch.where`` with a broadcast (B, 1, 1, 1) condition."""
    return torch.lerp(x, y, coin)


# ---------------------------------------------------------------- the ops
def random_resized_crop(x: torch.Tensor, size: int, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """A random box per image, resized to ``size`` x ``size`` (SimCLR appendix A, "Inception-style").

    Each box covers a fraction ``scale`` of the image area with aspect ratio (width /
    height) log-uniform in ``ratio``; like ``torchvision.transforms.RandomResizedCrop`` we
    try 10 draws per image, keep the first that fits, and fall back to the largest centred
    box with a ratio clamped into ``ratio``. Boxes are continuous, not rounded to pixels.
    All boxes are cut in one ``F.grid_sample`` call (bilinear, border padding) from
    per-sample affine grids; unlike torchvision there is no antialiasing when a box shrinks.

    x: (B, C, H, W) float; returns (B, C, size, size).

    >>> x = torch.rand(2, 3, 8, 8)
    >>> torch.allclose(random_resized_crop(x, 8, scale=(1, 1), ratio=(1, 1)), x, atol=1e-5)
    True
    """
    _check_images(x)
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size={size!r} must be a positive int (the output side in pixels)")
    _check_range("scale", scale, upper=1.0)
    _check_range("ratio", ratio)
    B, _, H, W = x.shape
    tries = 10
    area = H * W * (scale[0] + (scale[1] - scale[0]) * _rand((B, tries), generator))  # (B, T)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * _rand((B, tries), generator))  # (B, T)
    w, h = torch.sqrt(area * aspect), torch.sqrt(area / aspect)  # (B, T) box sides in pixels
    fits = (w <= W) & (h <= H)  # (B, T)
    first = fits.int().argmax(dim=1, keepdim=True)  # (B, 1) first try that fits (0 if none)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)  # (B,)
    fw, fh = min(W, H * ratio[1]), min(H, W / ratio[0])  # fallback: the whole image, cut to an allowed ratio
    ok = fits.any(dim=1)  # (B,)
    w = torch.where(ok, w, torch.full_like(w, fw))  # (B,)
    h = torch.where(ok, h, torch.full_like(h, fh))  # (B,)
    offset = _rand((B, 2), generator)  # (B, 2) position of the box, uniform where it fits
    left = torch.where(ok, (W - w) * offset[:, 0], (W - w) / 2)  # (B,)
    top = torch.where(ok, (H - h) * offset[:, 1], (H - h) / 2)  # (B,)
    # The affine map from output to input coordinates, both in [-1, 1] with -1 and 1 the
    # outer edges of the image (align_corners=False): input = scale * output + shift, per
    # axis. With no rotation it is separable, so we build the grid from two outer
    # broadcasts, which is cheaper than F.affine_grid's batched matmul.
    box = torch.stack([w / W, (2 * left + w) / W - 1, h / H, (2 * top + h) / H - 1], 1).to(x.device, x.dtype)
    u = (torch.arange(size, device=x.device, dtype=x.dtype) * 2 + 1) / size - 1  # (S,) output pixel centres
    gx = box[:, 0, None] * u + box[:, 1, None]  # (B, S) input x of each output column
    gy = box[:, 2, None] * u + box[:, 3, None]  # (B, S) input y of each output row
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (B, S, S, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def horizontal_flip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``p`` (SimCLR appendix A, BYOL table 6).

    >>> x = torch.rand(2, 1, 4, 4)
    >>> torch.equal(horizontal_flip(x, p=1.0), x.flip(-1))
    True
    """
    _check_images(x)
    _check_p("p", p)
    return _select(_coin(p, x, generator), TF.horizontal_flip(x), x)


def color_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2,
                 hue: float = 0.1, p: float = 0.8, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue, per image, with probability ``p``.

    Defaults are BYOL's (table 6); SimCLR's colour distortion of strength s is
    ``(0.8 s, 0.8 s, 0.8 s, 0.2 s)`` with ``p=0.8`` (appendix A). Factors are uniform in
    ``[max(0, 1 - b), 1 + b]`` (``[-hue, hue]`` of a turn for hue), as in torchvision's ColorJitter,
    and each step clamps to [0, 1] like torchvision. Unlike torchvision the order is fixed
    (brightness, contrast, saturation, hue), not shuffled per image.

    Hue is a rotation of the chroma plane (I, Q) of YIQ about the grey axis, one 3 x 3
    matrix per image (as NVIDIA DALI's ``Hue`` does), not the exact HSV shift of
    ``torchvision``: it keeps luma and chroma where the result stays in gamut, and a turn
    of -2 pi h is close to torchvision's ``adjust_hue(x, h)``. Grey images (C=1) get
    brightness and contrast only.

    x: (B, C, H, W) with C = 1 or 3.

    >>> x = torch.rand(3, 3, 8, 8)
    >>> torch.equal(color_jitter(x, p=0.0), x)
    True
    """
    _check_images(x, colour=True)
    _check_p("p", p)
    _check_jitter(brightness, contrast, saturation, hue)
    apply = _coin(p, x, generator)  # (B, 1, 1, 1)
    fb = _uniform(max(0.0, 1 - brightness), 1 + brightness, x, generator).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    fc = _uniform(max(0.0, 1 - contrast), 1 + contrast, x, generator).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    fs = _uniform(max(0.0, 1 - saturation), 1 + saturation, x, generator).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    fh = _uniform(-hue, hue, x, generator)  # (B,)
    # Each step blends with a grey image, f x + (1 - f) grey (torch.lerp(grey, x, f)), and clamps.
    y = (x * fb).clamp_(0, 1)  # brightness: blend with black
    mean = TF.rgb_to_grayscale(y).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    y = (fc * y).add_((1 - fc) * mean).clamp_(0, 1)  # contrast: blend with the mean grey level
    if x.shape[1] == 3:
        y = torch.lerp(TF.rgb_to_grayscale(y), y, fs).clamp_(0, 1)  # saturation: blend with grey
        angle = -2 * math.pi * fh  # (B,) minus: close to HSV's shift by +fh (red towards yellow)
        cos, sin, zero, one = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
        rotate = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], 1).view(-1, 3, 3)  # (B, 3, 3)
        to_yiq, to_rgb = _RGB_TO_YIQ.to(x.device, x.dtype), _YIQ_TO_RGB.to(x.device, x.dtype)
        m = to_rgb @ rotate @ to_yiq  # (B, 3, 3)
        y = torch.einsum("bij,bjhw->bihw", m, y).clamp_(0, 1)  # (B, 3, H, W)
    return _select(apply, y, x)


def random_grayscale(x: torch.Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace an RGB image by its luma (0.2989 R + 0.587 G + 0.114 B, torchvision's
    ``rgb_to_grayscale``) in all three channels with probability ``p`` (SimCLR appendix A,
    BYOL table 6). Grey images pass through.

    >>> y = random_grayscale(torch.rand(2, 3, 4, 4), p=1.0)
    >>> torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    True
    """
    _check_images(x, colour=True)
    _check_p("p", p)
    coin = _coin(p, x, generator)  # (B, 1, 1, 1)
    if x.shape[1] == 1:
        return x
    return _select(coin, TF.rgb_to_grayscale(x, num_output_channels=3), x)


def blur_kernel_size(side: int) -> int:
    """The odd kernel side about 10% of the image side, at least 3 (SimCLR appendix A;
    BYOL's 23 pixels at 224)."""
    k = int(0.1 * side)
    return max(3, k + 1 - k % 2)


def gaussian_blur(x: torch.Tensor, sigma: tuple[float, float] = (0.1, 2.0), p: float = 0.5,
                  kernel_size: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian blur with a per-image sigma uniform in ``sigma`` (pixels), with probability ``p``
    (SimCLR appendix A: sigma in [0.1, 2.0], kernel 10% of the side; BYOL table 6).

    Separable: a horizontal then a vertical 1-D kernel, applied as one grouped
    (depthwise) convolution over the batch folded into channels, so each image gets its
    own kernel. Reflect padding, like ``torchvision``'s ``gaussian_blur``; ``kernel_size``
    (odd) defaults to :func:`blur_kernel_size` of the shorter side.

    >>> x = torch.rand(2, 3, 16, 16)
    >>> torch.allclose(gaussian_blur(x, sigma=(0.1, 0.1), p=1.0), x, atol=1e-6)
    True
    """
    _check_images(x)
    _check_p("p", p)
    _check_range("sigma", sigma)
    B, C, H, W = x.shape
    k = blur_kernel_size(min(H, W)) if kernel_size is None else kernel_size
    if not isinstance(k, int) or k < 1 or k % 2 == 0 or k // 2 >= min(H, W):
        raise ValueError(f"kernel_size={k!r} must be an odd positive int smaller than twice the image side "
                         f"{min(H, W)}")
    apply = _coin(p, x, generator)  # (B, 1, 1, 1)
    s = _uniform(sigma[0], sigma[1], x, generator)  # (B,)
    t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2  # (K,)
    kernel = torch.exp(-0.5 * (t / s[:, None]) ** 2)  # (B, K)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(C, dim=0)  # (B*C, K)
    r = k // 2
    y = F.pad(x, (r, r, r, r), mode="reflect").reshape(1, B * C, H + 2 * r, W + 2 * r)  # (1, B*C, H+2r, W+2r)
    y = F.conv2d(y, kernel[:, None, None, :], groups=B * C)  # (1, B*C, H+2r, W) along the width
    y = F.conv2d(y, kernel[:, None, :, None], groups=B * C)  # (1, B*C, H, W) along the height
    return _select(apply, y.view(B, C, H, W), x)


def tone_curve(x: torch.Tensor, points: int = 4, p: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """A random tone curve per image and channel, with probability ``p``: each channel value
    v in [0, 1] goes through the piecewise-linear curve with ``points`` control values drawn
    uniform in [0, 1] at v = 0, 1/(points - 1), ..., 1.

    Colour jitter moves every colour of an image together (a brightness factor, a rotation of
    the hue), so the relation between colours survives it: a red object on a blue background
    stays "warmer than its background" in both views, and that is enough to tell a scene from
    the others in a batch. A contrastive loss then learns the colours and suppresses the
    harder shape features (feature suppression: Chen et al., 2021, "Intriguing Properties of
    Contrastive Losses", section 4, arXiv:2011.02803). A random curve can invert, fold or flatten
    each channel on its own, so the colours of the two views, and their relations, are
    unrelated; what survives is which pixels share a colour: the outlines. Solarisation is one
    fixed curve of this family (identity below 0.5, inverted above).

    >>> x = torch.rand(2, 3, 8, 8)
    >>> torch.equal(tone_curve(x, p=0.0), x), tone_curve(x, points=2, p=1.0).shape
    (True, torch.Size([2, 3, 8, 8]))
    """
    _check_images(x)
    _check_p("p", p)
    _check_points(points)
    B, C, H, W = x.shape
    table = _rand((B, C, points), generator).to(x.device, x.dtype)  # (B, C, P) curve values at the control points
    position = x.clamp(0, 1).flatten(2) * (points - 1)  # (B, C, HW) where each value falls on the curve
    left = position.floor().clamp_(max=points - 2)  # (B, C, HW) index of the control point to its left
    frac = position - left  # (B, C, HW) in [0, 1]
    lo = table.gather(2, left.long())  # (B, C, HW)
    hi = table.gather(2, left.long() + 1)  # (B, C, HW)
    return _select(_coin(p, x, generator), torch.lerp(lo, hi, frac).view(B, C, H, W), x)


def solarize(x: torch.Tensor, threshold: float = 0.5, p: float = 0.2,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Invert the pixels at or above ``threshold`` (x -> 1 - x), with probability ``p``
    (BYOL table 6: p = 0.2 on the second view only).

    >>> solarize(torch.tensor([0.25, 0.5, 0.875]).view(1, 1, 1, 3), p=1.0).flatten().tolist()
    [0.25, 0.5, 0.125]
    """
    _check_images(x)
    _check_p("p", p)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold!r} is out of range; choose a value in [0, 1]")
    return _select(_coin(p, x, generator), TF.solarize(x, threshold), x)


# ---------------------------------------------------------------- recipes
@dataclass
class Augment:
    """A view recipe: crop, flip, colour jitter, greyscale, tone curve, blur, solarise, in that
    order (SimCLR appendix A, BYOL table 6; the tone curve is ours, for synthetic scenes). Ops
    with probability 0 are skipped and draw nothing.

    >>> aug = Augment(size=16, blur_p=1.0)
    >>> aug(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 3, 16, 16])
    """

    size: int = 32  # output side in pixels
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the crop; DINO global (0.4, 1), local (0.05, 0.4)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio (width / height) of the crop
    flip_p: float = 0.5  # probability of a horizontal flip
    brightness: float = 0.4  # factor uniform in [1 - b, 1 + b]; SimCLR 0.8 s for strength s
    contrast: float = 0.4  # factor uniform in [1 - c, 1 + c]; SimCLR 0.8 s
    saturation: float = 0.2  # factor uniform in [1 - s, 1 + s]; SimCLR 0.8 s, BYOL 0.2
    hue: float = 0.1  # shift uniform in [-h, h] of a turn, at most 0.5; SimCLR 0.2 s
    jitter_p: float = 0.8  # probability of the colour jitter
    grayscale_p: float = 0.2  # probability of turning grey
    tone_p: float = 0.0  # probability of a random tone curve per channel (:func:`tone_curve`)
    tone_points: int = 4  # control values of the tone curve
    blur_p: float = 0.0  # probability of a Gaussian blur; BYOL 1.0 / 0.1 for the two views
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # blur sigma range in pixels
    solarize_p: float = 0.0  # probability of solarising; BYOL 0.0 / 0.2 for the two views

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size={self.size!r} must be a positive int (the output side in pixels)")
        _check_range("crop_scale", self.crop_scale, upper=1.0)
        _check_range("crop_ratio", self.crop_ratio)
        _check_range("blur_sigma", self.blur_sigma)
        for name in ("flip_p", "jitter_p", "grayscale_p", "tone_p", "blur_p", "solarize_p"):
            _check_p(name, getattr(self, name))
        _check_points(self.tone_points)
        _check_jitter(self.brightness, self.contrast, self.saturation, self.hue)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x: (B, C, H, W) float in [0, 1]; returns one view (B, C, size, size) in the dtype of x, even
        inside a method's autocast region (views are inputs, not activations)."""
        with torch.autocast(x.device.type, enabled=False):
            return self._apply(x, generator)

    def _apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = random_resized_crop(x, self.size, self.crop_scale, self.crop_ratio, generator)
        if self.flip_p > 0:
            x = horizontal_flip(x, self.flip_p, generator)
        if self.jitter_p > 0:
            x = color_jitter(x, self.brightness, self.contrast, self.saturation, self.hue, self.jitter_p, generator)
        if self.grayscale_p > 0:
            x = random_grayscale(x, self.grayscale_p, generator)
        if self.tone_p > 0:
            x = tone_curve(x, self.tone_points, self.tone_p, generator)
        if self.blur_p > 0:
            x = gaussian_blur(x, self.blur_sigma, self.blur_p, generator=generator)
        if self.solarize_p > 0:
            x = solarize(x, 0.5, self.solarize_p, generator)
        return x


def simclr(size: int, strength: float = 1.0, blur_p: float = 0.5) -> Augment:
    """SimCLR appendix A: crop (0.08-1), flip, colour distortion of strength s (jitter
    (0.8 s, 0.8 s, 0.8 s, 0.2 s) with p = 0.8, greyscale p = 0.2), blur p = 0.5.
    The paper's CIFAR-10 runs use ``strength=0.5, blur_p=0.0`` (appendix B.9)."""
    s = strength
    return Augment(size, brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=min(0.2 * s, 0.5),
                   jitter_p=0.8, grayscale_p=0.2, blur_p=blur_p)


def byol_view1(size: int) -> Augment:
    """BYOL table 6, first view: jitter (0.4, 0.4, 0.2, 0.1) p = 0.8, greyscale 0.2, blur always."""
    return Augment(size, blur_p=1.0, solarize_p=0.0)


def byol_view2(size: int) -> Augment:
    """BYOL table 6, second view: as the first, but blur p = 0.1 and solarise p = 0.2."""
    return Augment(size, blur_p=0.1, solarize_p=0.2)


def dino_global(size: int) -> tuple[Augment, Augment]:
    """DINO's two global views: BYOL's asymmetric pair with crops of 40-100% of the image
    (``main_dino.py``: ``global_crops_scale=(0.4, 1.)``)."""
    return (Augment(size, crop_scale=(0.4, 1.0), blur_p=1.0),
            Augment(size, crop_scale=(0.4, 1.0), blur_p=0.1, solarize_p=0.2))


def dino_local(size: int) -> Augment:
    """DINO's local views: small crops (5-40% of the image, ``local_crops_scale``) at a
    smaller size (96 px against 224), BYOL jitter, blur p = 0.5."""
    return Augment(size, crop_scale=(0.05, 0.4), blur_p=0.5)


def weak(size: int) -> Augment:
    """Crop and flip only, for supervised training (the standard ImageNet recipe)."""
    return Augment(size, jitter_p=0.0, grayscale_p=0.0)


def none(size: int) -> Augment:
    """No augmentation: the largest centred square, resized to ``size`` (the identity on
    square images of side ``size``)."""
    return Augment(size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def multi_crop(x: torch.Tensor, global_augs: Sequence[Augment], local_aug: Augment, n_local: int,
               generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """DINO multi-crop (section 3.1): one view per recipe in ``global_augs`` (DINO: two, at
    full size), then ``n_local`` views from ``local_aug`` (small crops at a smaller size).
    The teacher sees only the global views, the student all of them.

    x: (B, C, H, W); returns a list of (B, C, size, size) tensors, globals first.
    """
    if not isinstance(n_local, int) or n_local < 0:
        raise ValueError(f"n_local={n_local!r} must be an int >= 0 (the number of small views)")
    if isinstance(global_augs, Augment) or len(global_augs) == 0:
        raise ValueError(f"global_augs={global_augs!r} must be a non-empty sequence of recipes, one per "
                         f"global view, e.g. dino_global(size) or [aug, aug]")
    return [aug(x, generator) for aug in global_augs] + [local_aug(x, generator) for _ in range(n_local)]
