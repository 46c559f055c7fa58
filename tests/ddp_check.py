"""Run under ``torchrun --standalone --nproc_per_node=2`` by tests/test_distributed.py.

Checks, on two gloo processes, that (1) ``gather_with_grad`` gives the gradients of one
process holding the concatenated batch, (2) each rank reads its own shard, (3) DDP
training through the engine keeps the ranks' parameters identical and equal to a
one-process run on the global batch.
"""
import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tests.toy import BNToy, LinearToy, toy_data
from vfm_lab import distributed as D
from vfm_lab.data import batches
from vfm_lab.engine import fit


def contrastive(z: torch.Tensor, all_z: torch.Tensor, offset: int) -> torch.Tensor:
    """A loss whose negatives are every row of all_z (like SimCLR/CLIP), positives on the diagonal."""
    logits = z @ all_z.T  # (b, B)
    return F.cross_entropy(logits, torch.arange(len(z)) + offset)


def main(out: str) -> None:
    assert D.init_from_env(torch.device("cpu"))
    rank, world = D.rank(), D.world_size()
    report = {"rank": rank, "world": world}

    # (1) gather with gradient == one process on the concatenated batch
    torch.manual_seed(0)
    full = torch.randn(8, 5)  # the global batch, the same on every rank
    local = full[rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
    gathered = D.gather_with_grad(local)  # (8, 5)
    loss = contrastive(local, gathered, rank * 4)
    dist.all_reduce(loss.detach().clone())
    loss.backward()  # gradient of this rank's loss; DDP would average, here we sum by hand
    grad = local.grad.clone()
    ref_in = full.clone().requires_grad_(True)
    ref_loss = sum(contrastive(ref_in[r * 4:(r + 1) * 4], ref_in, r * 4) for r in range(world))
    ref_loss.backward()
    # d(sum of rank losses)/d(local) = local grad from own loss + what the gather sent back from others
    report["gather_grad_max_err"] = float((grad - ref_in.grad[rank * 4:(rank + 1) * 4]).abs().max())

    # (2) shards: the ranks' batches are disjoint and together form the global batch
    data = toy_data(64)
    mine = torch.cat([b["index"] for b in batches(data, 8, seed=3, rank=rank, world_size=world)])
    everyone = D.gather(mine)
    report["shard_overlap"] = len(everyone) - len(everyone.unique())
    report["shard_covers"] = len(everyone.unique())

    # (3) DDP through the engine == one process with the global batch
    m = LinearToy()
    fit(m, toy_data(), epochs=1, batch_size=16, lr=0.05, weight_decay=0.0, device="cpu", precision="fp32",
        progress=False)
    w = m.fc.weight.detach().clone()
    report["ranks_equal"] = bool(torch.equal(D.gather(w[None])[0], D.gather(w[None])[-1]))
    report["weights"] = w.flatten().tolist()
    # (4) BatchNorm under DDP: per-rank statistics (each rank sees its own shard); SyncBatchNorm is
    # refused on CPU with a message (PyTorch runs it on CUDA only)
    torch.manual_seed(0)
    bn = BNToy()
    fit(bn, toy_data(), epochs=1, batch_size=16, lr=0.05, device="cpu", precision="fp32", progress=False)
    stats = bn.net[1].running_mean.detach()
    report["bn_stats_equal"] = bool(torch.allclose(D.gather(stats[None])[0], D.gather(stats[None])[-1]))
    try:
        fit(BNToy(), toy_data(), epochs=1, batch_size=16, lr=0.05, device="cpu", progress=False, sync_batchnorm=True)
        report["sync_bn_error"] = ""
    except ValueError as e:
        report["sync_bn_error"] = str(e)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
