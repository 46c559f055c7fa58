"""The per-method benchmark (`vfm-lab bench methods`): its FLOP count against the formula, and its table."""
import torch
from torch import nn

from vfm_lab.benchmarks import bench_methods, methods_markdown, step_flops
from vfm_lab.engine import Method


class Linear(Method):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(10, 5, bias=False)

    def forward(self, batch):
        return {"loss": self.layer(batch["image"]).square().sum()}


def test_a_steps_flops_are_the_matrix_products_of_forward_and_backward():
    """x (8, 10) @ W^T (10, 5): 2 * 8 * 10 * 5 forward, as much again backward for the weight's gradient (an image
    needs none), and once more when the input needs a gradient too."""
    model = Linear()
    assert step_flops(model, {"image": torch.randn(8, 10)}, torch.float32) == 2 * 2 * 8 * 10 * 5
    assert step_flops(model, {"image": torch.randn(8, 10, requires_grad=True)}, torch.float32) == 3 * 2 * 8 * 10 * 5
    assert model.layer.weight.grad is None  # the count leaves no gradient behind


def test_the_method_table_measures_every_chapters_methods():
    table = bench_methods(batch_size=16, steps=1, precision="fp32", names=("supervised (01)", "sam (09)", "lseg (09)"))
    assert list(table) == ["supervised (01)", "sam (09)", "lseg (09)"]
    for row in table.values():
        assert row["images_per_s"] > 0 and row["gflop_per_step"] > 0 and 0 < row["mfu"] < 2
        shares = [share for _, share in row["top_costs"]]
        assert len(shares) == 5 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
    text = methods_markdown(table, "fp32", 16)
    assert "| sam (09) |" in text and "torch.float32" in text and "batch 16" in text and " % |" in text


def test_open_clips_own_loop_trains_our_clip_through_open_clips_model_interface():
    from vfm_lab import jobs
    from vfm_lab.benchmarks import BATCH, _OpenClipInterface, open_clip_loop, our_clip_loop
    from vfm_lab.config import ClipConfig
    from vfm_lab.data import load

    data = load("shapes", "train", n=BATCH * 2, image_size=32)
    clip = jobs.build_clip(ClipConfig.from_params(batch_size=BATCH), data)
    out = _OpenClipInterface(clip).eval()(data.images[:4].float() / 255, clip.text_inputs[:4])
    assert torch.allclose(out["image_features"].norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(out["text_features"], clip.encode_text([data.captions[i] for i in range(4)]), atol=1e-5)
    assert open_clip_loop(data, 2, "fp32") > 0 and our_clip_loop(data, 2) > 0
