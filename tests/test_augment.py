from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from vfm_lab import augment as A

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LUMA = torch.tensor([0.299, 0.587, 0.114])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 8, c: int = 3, h: int = 32, w: int = 32, seed: int = 0, lo: float = 0.0, hi: float = 1.0):
    return lo + (hi - lo) * torch.rand(b, c, h, w, generator=gen(seed))


def all_distinct(v: torch.Tensor) -> bool:
    return all(not torch.equal(v[i], v[j]) for i in range(len(v)) for j in range(i + 1, len(v)))


OPS = {
    "crop": lambda x, g: A.random_resized_crop(x, 24, generator=g),
    "flip": lambda x, g: A.horizontal_flip(x, p=0.5, generator=g),
    "jitter": lambda x, g: A.color_jitter(x, 0.8, 0.8, 0.8, 0.2, p=0.8, generator=g),
    "grayscale": lambda x, g: A.random_grayscale(x, p=0.5, generator=g),
    "blur": lambda x, g: A.gaussian_blur(x, p=0.5, generator=g),
    "solarize": lambda x, g: A.solarize(x, p=0.5, generator=g),
    "tone": lambda x, g: A.tone_curve(x, p=0.5, generator=g),
    "simclr": lambda x, g: A.simclr(24)(x, g),
    "byol_view2": lambda x, g: A.byol_view2(24)(x, g),
}


# ---------------------------------------------------------------- shapes, dtype, range, device, reproducibility
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("op", OPS)
def test_shape_dtype_range_device(op, c, dtype, device):
    x = images(c=c).to(device, dtype)
    y = OPS[op](x, gen())
    size = 24 if op in ("crop", "simclr", "byol_view2") else 32
    assert y.shape == (8, c, size, size)
    assert y.dtype == dtype and y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("op", OPS)
def test_same_seed_same_views_and_other_seed_other_views(op):
    x = images()
    assert torch.equal(OPS[op](x, gen(1)), OPS[op](x, gen(1)))
    assert not torch.equal(OPS[op](x, gen(1)), OPS[op](x, gen(2)))


def test_global_rng_state_restored_reproduces_the_views():
    x, aug = images(), A.simclr(24)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = aug(x)
    second = aug(x)
    torch.set_rng_state(state)  # what a resumed run does
    assert torch.equal(aug(x), first) and torch.equal(aug(x), second)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("op", ["crop", "jitter", "tone", "blur", "simclr"])
def test_parameters_are_drawn_per_sample(op):
    x = images(b=1).expand(8, -1, -1, -1).contiguous()  # one image, eight times
    if op == "jitter":
        y = A.color_jitter(x, p=1.0, generator=gen())
    elif op == "tone":
        y = A.tone_curve(x, p=1.0, generator=gen())
    elif op == "blur":
        y = A.gaussian_blur(x, p=1.0, generator=gen())
    else:
        y = OPS[op](x, gen())
    assert all_distinct(y)  # a batched torchvision.transforms.v2 op would give eight equal views


@pytest.mark.parametrize("op, p", [("flip", 0.5), ("jitter", 0.8), ("grayscale", 0.2), ("blur", 0.5),
                                   ("solarize", 0.2), ("tone", 0.7)])
def test_each_op_touches_a_fraction_p_of_the_samples(op, p):
    x = images(b=2000, h=4, w=4)
    fn = {"flip": A.horizontal_flip, "jitter": A.color_jitter, "grayscale": A.random_grayscale,
          "blur": A.gaussian_blur, "solarize": A.solarize, "tone": A.tone_curve}[op]
    y = fn(x, p=p, generator=gen())
    touched = (y != x).flatten(1).any(1).float().mean().item()
    assert abs(touched - p) < 0.05  # binomial sd <= 0.011


# ---------------------------------------------------------------- each op against its definition
@pytest.mark.parametrize("c", [1, 3])
def test_p_zero_is_the_identity_for_every_op(c):
    x = images(c=c)
    assert torch.equal(A.horizontal_flip(x, p=0.0), x)
    assert torch.equal(A.color_jitter(x, p=0.0), x)
    assert torch.equal(A.random_grayscale(x, p=0.0), x)
    assert torch.equal(A.gaussian_blur(x, p=0.0), x)
    assert torch.equal(A.solarize(x, p=0.0), x)
    assert torch.equal(A.tone_curve(x, p=0.0), x)


def test_flip_p1_mirrors_every_image():
    x = images()
    assert torch.equal(A.horizontal_flip(x, p=1.0), x.flip(-1))


def test_grayscale_p1_gives_the_luma_in_every_channel():
    x = images()
    y = A.random_grayscale(x, p=1.0)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    luma = torch.einsum("c,bchw->bhw", LUMA, x)  # Rec. 601 weights (torchvision rounds 0.299 to 0.2989)
    torch.testing.assert_close(y[:, 0], luma, atol=1e-3, rtol=0)
    grey = images(c=1)
    assert torch.equal(A.random_grayscale(grey, p=1.0), grey)


def test_solarize_reference_formula():
    x = images()
    y = A.solarize(x, threshold=0.3, p=1.0)
    assert torch.equal(y, torch.where(x >= 0.3, 1 - x, x))


@pytest.mark.parametrize("points", [2, 4, 7])
def test_tone_curve_matches_numpy_interp_through_its_control_values(points):
    """Per image and channel: np.interp through the control values the op drew from the same stream."""
    import numpy as np
    x = images(b=4, h=6, w=5)
    y = A.tone_curve(x, points=points, p=1.0, generator=gen(3))
    table = torch.rand(4, 3, points, generator=gen(3))  # the op's first draw
    knots = np.linspace(0.0, 1.0, points)
    for b in range(4):
        for c in range(3):
            want = np.interp(x[b, c].numpy().astype("float64"), knots, table[b, c].numpy().astype("float64"))
            np.testing.assert_allclose(y[b, c].numpy(), want, atol=1e-6)


def test_tone_curve_keeps_which_pixels_share_a_colour_and_breaks_colour_relations():
    """Two flat regions (an object on a background): the outline survives every curve, but whether the
    object is brighter than the background in a channel is a coin flip per view."""
    x = torch.full((4000, 3, 4, 4), 0.3)
    x[:, :, 1:3, 1:3] = 0.6  # the object: brighter than its background in every channel
    y = A.tone_curve(x, p=1.0, generator=gen())
    inside, outside = y[:, :, 1, 1], y[:, :, 0, 0]  # (B, C)
    assert torch.equal(y[:, :, 1:3, 1:3], inside[:, :, None, None].expand(-1, -1, 2, 2))
    assert torch.equal(y[:, :, 0, :], outside[:, :, None].expand(-1, -1, 4))
    brighter = (inside > outside).float().mean().item()
    assert abs(brighter - 0.5) < 0.05  # colour jitter would keep it at 1.0


def test_blur_with_tiny_sigma_is_the_identity():
    x = images()
    torch.testing.assert_close(A.gaussian_blur(x, sigma=(0.1, 0.1), p=1.0, kernel_size=5), x, atol=1e-6, rtol=0)


def test_blur_matches_torchvision_for_a_fixed_sigma():
    x = images(b=4)
    y = A.gaussian_blur(x, sigma=(0.8, 0.8), p=1.0, kernel_size=5)
    torch.testing.assert_close(y, TF.gaussian_blur(x, [5, 5], [0.8, 0.8]), atol=1e-6, rtol=0)


def test_blur_preserves_the_mean_and_stays_within_the_pixel_range():
    x = images(b=16)
    y = A.gaussian_blur(x, sigma=(0.1, 2.0), p=1.0, kernel_size=7)
    torch.testing.assert_close(y.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=5e-3, rtol=0)
    assert (y.amin(dim=(2, 3)) >= x.amin(dim=(2, 3)) - 1e-6).all()
    assert (y.amax(dim=(2, 3)) <= x.amax(dim=(2, 3)) + 1e-6).all()
    assert y.std() < x.std()  # it does smooth


def test_default_blur_kernel_is_a_tenth_of_the_side():
    assert [A.blur_kernel_size(s) for s in (8, 32, 64, 96, 224)] == [3, 3, 7, 9, 23]  # BYOL: 23 at 224


def test_crop_of_the_whole_square_image_is_the_input():
    x = images()
    y = A.random_resized_crop(x, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=gen())
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(A.none(32)(x), x, atol=1e-5, rtol=0)


def test_crop_falls_back_to_the_centred_box_when_no_draw_fits():
    x = images(h=32, w=40)  # a 32 x 32 box of 100% area cannot fit: fall back to the centre square
    y = A.random_resized_crop(x, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=gen())
    torch.testing.assert_close(y, x[..., 4:36], atol=1e-5, rtol=0)


def crop_boxes(y: torch.Tensor, h: int, w: int, size: int) -> torch.Tensor:
    """Recover each crop box (left, top, width, height) in input pixels from a crop of the
    coordinate image: bilinear sampling of a linear ramp is exact away from the border."""
    step_x = y[:, 0].diff(dim=2).flatten(1).median(dim=1).values * w  # input pixels per output pixel
    step_y = y[:, 1].diff(dim=1).flatten(1).median(dim=1).values * h
    cx = y[:, 0, :, size // 2 - 1: size // 2 + 1].mean(dim=(1, 2)) * w  # box centre
    cy = y[:, 1, size // 2 - 1: size // 2 + 1, :].mean(dim=(1, 2)) * h
    bw, bh = step_x * size, step_y * size
    return torch.stack([cx - bw / 2, cy - bh / 2, bw, bh], 1)


def test_crop_boxes_have_the_requested_area_and_aspect_and_lie_inside():
    B, H, W, S = 512, 32, 32, 32
    i, j = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    coords = torch.stack([(j + 0.5) / W, (i + 0.5) / H, torch.zeros(H, W)]).expand(B, -1, -1, -1)  # (B, 3, H, W)
    y = A.random_resized_crop(coords, S, scale=(0.2, 0.9), ratio=(0.5, 2.0), generator=gen())
    left, top, bw, bh = crop_boxes(y, H, W, S).unbind(1)
    area, aspect = bw * bh / (H * W), bw / bh
    assert (area > 0.2 - 1e-3).all() and (area < 0.9 + 1e-3).all()
    assert (aspect > 0.5 - 1e-3).all() and (aspect < 2.0 + 1e-3).all()
    assert (left > -1e-3).all() and (top > -1e-3).all()
    assert (left + bw < W + 1e-3).all() and (top + bh < H + 1e-3).all()
    # spread over the whole ranges, and log-uniform aspect: about half the boxes are wider than tall
    assert area.min() < 0.25 and area.max() > 0.85 and aspect.min() < 0.6 and aspect.max() > 1.7
    assert 0.4 < (aspect > 1).float().mean() < 0.6
    room = (bw < W - 4) & (bh < H - 4)
    pos_x, pos_y = left[room] / (W - bw[room]), top[room] / (H - bh[room])  # uniform in [0, 1] per sample
    assert pos_x.min() < 0.1 and pos_x.max() > 0.9 and pos_y.min() < 0.1 and pos_y.max() > 0.9


def in_gamut_images(b: int = 16) -> torch.Tensor:
    return images(b=b, lo=0.35, hi=0.65)  # no step of a mild jitter leaves [0, 1] on these


def least_squares_factor(y: torch.Tensor, x: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """f per image in y - anchor = f (x - anchor)."""
    dx, dy = (x - anchor).flatten(1), (y - anchor).flatten(1)
    return (dx * dy).sum(1) / (dx * dx).sum(1)


# per jitter: the point each image is scaled about (y - anchor = f (x - anchor)), and torchvision's function of f
JITTERS = {
    "brightness": (torch.zeros_like, TF.adjust_brightness),
    "contrast": (lambda x: TF.rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), TF.adjust_contrast),
    "saturation": (lambda x: TF.rgb_to_grayscale(x, num_output_channels=3), TF.adjust_saturation),
}


@pytest.mark.parametrize("name", JITTERS)
def test_jitter_alone_matches_torchvision_per_sample(name):
    """Each of brightness, contrast and saturation, alone at strength 0.4: every image is torchvision's
    adjustment of it by its own factor f, and the factors spread over [0.6, 1.4]."""
    anchor, adjust = JITTERS[name]
    x = in_gamut_images()
    strengths = {k: (0.4 if k == name else 0) for k in JITTERS}
    y = A.color_jitter(x, **strengths, hue=0, p=1.0, generator=gen())
    f = least_squares_factor(y, x, anchor(x))
    assert ((f >= 0.6 - 1e-5) & (f <= 1.4 + 1e-5)).all() and f.std() > 0.1
    for i in range(len(x)):
        torch.testing.assert_close(y[i], adjust(x[i], float(f[i])), atol=1e-5, rtol=0)


def yiq(x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    return torch.einsum("ij,bjhw->bihw", m, x)


def test_jitter_hue_rotates_chroma_keeps_luma_and_approximates_the_hsv_shift():
    x = images(b=16, lo=0.4, hi=0.6)
    y = A.color_jitter(x, brightness=0, contrast=0, saturation=0, hue=0.05, p=1.0, generator=gen())
    (y0, i0, q0), (y1, i1, q1) = yiq(x).unbind(1), yiq(y).unbind(1)
    torch.testing.assert_close(y1, y0, atol=1e-5, rtol=0)  # luma kept
    torch.testing.assert_close(i1.hypot(q1), i0.hypot(q0), atol=1e-5, rtol=0)  # chroma kept
    turn = torch.atan2(i0 * q1 - q0 * i1, i0 * i1 + q0 * q1)  # (B, H, W) angle from (I, Q) before to after
    angle = turn.flatten(1).median(1).values  # (B,)
    torch.testing.assert_close(turn, angle[:, None, None].expand_as(turn), atol=1e-3, rtol=0)  # one angle per image
    h = -angle / (2 * math.pi)  # the hue factor of each image
    assert (h.abs() <= 0.05 + 1e-5).all() and h.std() > 0.01
    for i in range(len(x)):  # a turn by -2 pi h in (I, Q) is close to torchvision's HSV shift by h, not by -h
        same = (y[i] - TF.adjust_hue(x[i], float(h[i]))).abs().mean()
        opposite = (y[i] - TF.adjust_hue(x[i], -float(h[i]))).abs().mean()
        assert same < opposite


def test_jitter_on_grey_images_changes_brightness_and_contrast_only():
    x = images(c=1)
    assert torch.equal(A.color_jitter(x, brightness=0, contrast=0, saturation=0.9, hue=0.5, p=1.0), x)
    assert not torch.equal(A.color_jitter(x, brightness=0.4, contrast=0, saturation=0, hue=0, p=1.0), x)


# ---------------------------------------------------------------- recipes and multi-crop
def test_named_recipes_follow_the_papers():
    s = A.simclr(32, strength=0.5)
    assert (s.brightness, s.contrast, s.saturation, s.hue) == pytest.approx((0.4, 0.4, 0.4, 0.1))
    v1, v2 = A.byol_view1(32), A.byol_view2(32)
    assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    assert (v1.brightness, v1.contrast, v1.saturation, v1.hue) == (0.4, 0.4, 0.2, 0.1)
    w = A.weak(32)
    assert (w.jitter_p, w.grayscale_p, w.blur_p, w.solarize_p) == (0, 0, 0, 0) and w.flip_p == 0.5
    g1, g2 = A.dino_global(32)
    assert g1.crop_scale == g2.crop_scale == (0.4, 1.0) and A.dino_local(16).crop_scale == (0.05, 0.4)


def test_weak_recipe_keeps_colours():
    x = images()
    y = A.weak(32)(x, gen())
    assert not torch.equal(y, x)
    assert y.std(dim=1).mean() > 0.1  # never turned grey


def test_multi_crop_gives_global_then_local_views():
    x = images()
    views = A.multi_crop(x, A.dino_global(32), A.dino_local(16), n_local=4, generator=gen())
    assert [tuple(v.shape) for v in views] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 4
    assert all_distinct(torch.stack(views[2:]))  # each local view is its own draw
    assert not torch.equal(views[0], views[1])
    assert len(A.multi_crop(x, [A.weak(32)], A.dino_local(16), n_local=0)) == 1


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("call, match", [
    (lambda: A.horizontal_flip(torch.rand(3, 8, 8)), r"\(3, 8, 8\)"),
    (lambda: A.horizontal_flip(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)), "uint8"),
    (lambda: A.horizontal_flip(torch.rand(2, 3, 8, 8), p=1.5), "p=1.5"),
    (lambda: A.solarize(torch.rand(2, 3, 8, 8), p=-0.1), "p=-0.1"),
    (lambda: A.color_jitter(torch.rand(2, 2, 8, 8)), "C=2"),
    (lambda: A.color_jitter(torch.rand(2, 3, 8, 8), hue=0.7), "hue=0.7"),
    (lambda: A.color_jitter(torch.rand(2, 3, 8, 8), brightness=-1), "brightness=-1"),
    (lambda: A.random_resized_crop(torch.rand(2, 3, 8, 8), 8, scale=(0.5, 0.2)), r"scale=\(0.5, 0.2\)"),
    (lambda: A.random_resized_crop(torch.rand(2, 3, 8, 8), 8, scale=(0.0, 1.0)), r"scale=\(0.0, 1.0\)"),
    (lambda: A.random_resized_crop(torch.rand(2, 3, 8, 8), 8, scale=(0.5, 1.5)), r"scale=\(0.5, 1.5\)"),
    (lambda: A.random_resized_crop(torch.rand(2, 3, 8, 8), 8, ratio=(2.0, 1.0)), r"ratio=\(2.0, 1.0\)"),
    (lambda: A.random_resized_crop(torch.rand(2, 3, 8, 8), 0), "size=0"),
    (lambda: A.gaussian_blur(torch.rand(2, 3, 8, 8), kernel_size=4), "kernel_size=4"),
    (lambda: A.gaussian_blur(torch.rand(2, 3, 8, 8), sigma=(2.0, 1.0)), r"sigma=\(2.0, 1.0\)"),
    (lambda: A.Augment(size=16, blur_p=2.0), "blur_p=2.0"),
    (lambda: A.Augment(size=16, crop_scale=(0.9, 0.1)), r"crop_scale=\(0.9, 0.1\)"),
    (lambda: A.Augment(size=16, hue=0.6), "hue=0.6"),
    (lambda: A.Augment(size=16, tone_p=1.2), "tone_p=1.2"),
    (lambda: A.Augment(size=16, tone_points=1), "points=1"),
    (lambda: A.tone_curve(torch.rand(2, 3, 8, 8), points=2.5), "points=2.5"),
    (lambda: A.multi_crop(torch.rand(2, 3, 8, 8), [A.weak(8)], A.weak(4), n_local=-1), "n_local=-1"),
    (lambda: A.multi_crop(torch.rand(2, 3, 8, 8), A.weak(8), A.weak(4), n_local=2), "global_augs=Augment"),
])
def test_bad_inputs_raise_value_errors_that_name_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("recipe", [A.simclr(24), A.byol_view1(24), A.byol_view2(24)])
def test_views_inside_an_autocast_region_are_the_float32_views(recipe):
    """Methods build their views inside the engine's autocast: the views must not turn bf16."""
    x = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = recipe(x, gen())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, recipe(x, gen()))
