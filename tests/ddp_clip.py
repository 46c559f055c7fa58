"""Run under ``torchrun --standalone --nproc_per_node=2`` by tests/test_clip.py.

Checks on two gloo processes that CLIP's negatives cross ranks with their gradients:
(1) for open_clip's ClipLoss (global and ``local_loss``) and SigLipLoss as ClipModel builds them,
the mean of the ranks' losses equals the loss of one process on the concatenated batch, and
the gradient each rank's features receive (through the gather), averaged as DDP averages,
equals the one-process gradient; (2) one epoch of ClipModel through the engine under DDP gives
the weights of one process trained on the global batch (a ViT backbone: no BatchNorm).
"""
import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from vfm_lab import distributed as D
from vfm_lab.backbones import build_backbone
from vfm_lab.data import load
from vfm_lab.engine import fit
from vfm_lab.methods.clip import ClipModel


def features(n: int = 8, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(n, dim, generator=g), dim=1), F.normalize(torch.randn(n, dim, generator=g), dim=1)


def main(out: str) -> None:
    assert D.init_from_env(torch.device("cpu"))
    rank, world = D.rank(), D.world_size()
    report = {"rank": rank, "world": world}
    img, txt = features()
    half = len(img) // world
    mine = slice(rank * half, (rank + 1) * half)
    model = ClipModel(build_backbone("vit-nano", 3, 16), ["a"], embed_dim=6)
    for variant, kw in {"clip": dict(loss="clip", local_loss=False), "clip_local": dict(loss="clip", local_loss=True),
                        "siglip": dict(loss="siglip")}.items():
        model.loss, model.local_loss = kw["loss"], kw.get("local_loss", True)
        scale, bias = torch.tensor(10.0), torch.tensor(-2.0)
        i_loc, t_loc = img[mine].clone().requires_grad_(True), txt[mine].clone().requires_grad_(True)
        args = (i_loc, t_loc, scale) + ((bias,) if variant == "siglip" else ())
        loss = model.criterion()(*args)
        loss.backward()
        mean_loss = D.all_reduce_mean(loss.detach().clone())
        grad = torch.cat([i_loc.grad, t_loc.grad], 1) / world  # DDP divides the summed gradients by world
        # one process, the whole batch: open_clip's loss with world_size=1
        i_all, t_all = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        ref_fn = SigLipLoss() if variant == "siglip" else ClipLoss()
        ref_loss = ref_fn(i_all, t_all, scale, *((bias,) if variant == "siglip" else ()))
        ref_loss.backward()
        ref_grad = torch.cat([i_all.grad, t_all.grad], 1)[mine]
        report[f"{variant}_loss_err"] = abs(float(mean_loss) - float(ref_loss))
        report[f"{variant}_grad_err"] = float((grad - ref_grad).abs().max())

    # (2) the engine under DDP == one process on the global batch
    data = load("shapes", "train", n=64, image_size=16)
    torch.manual_seed(0)
    clip = ClipModel(build_backbone("vit-nano", 3, 16), data.captions, embed_dim=16, local_loss=True)
    fit(clip, data, epochs=1, batch_size=16, lr=1e-3, weight_decay=0.0, device="cpu", precision="fp32",
        progress=False)
    report["image_proj"] = clip.image_proj.weight.detach().flatten().tolist()
    report["logit_scale"] = clip.logit_scale.item()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
