"""Run under ``torchrun --standalone --nproc_per_node=2`` by tests/test_contrastive.py.

Each rank holds half of a global batch (the same seeded tensors on every rank, sliced by
rank) and reports, for the test to compare with one process on the whole batch:
(1) the positive labels NT-Xent and MoCo v3 use on this rank; (2) NT-Xent's loss and the
gradient that reaches this rank's embeddings through ``gather_with_grad``; (3) the gradients
of a DDP-wrapped linear encoder trained with NT-Xent and with MoCo v3's symmetric loss
(DDP averages them over ranks); (4) MoCo v2's queue after enqueueing both ranks' keys;
(5) DINO's loss and center after one step on this rank's half of the teacher and student scores.
"""
import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from vfm_lab import distributed as D
from vfm_lab.methods.dino import DINOLoss
from vfm_lab.methods.moco import MoCoV3Loss
from vfm_lab.methods.simclr import NTXentLoss

B, K, IN = 4, 5, 6  # per-rank batch, embedding size, encoder input size


def global_batch(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def encoder() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(IN, K)


def main(out: str) -> None:
    assert D.init_from_env(torch.device("cpu"))
    rank, world = D.rank(), D.world_size()
    mine = slice(rank * B, (rank + 1) * B)
    report = {"rank": rank, "world": world, "ntxent_targets": NTXentLoss.targets(B, rank, world).tolist()}

    # (2) NT-Xent on embeddings: the gathered negatives carry gradient back to their rank
    z1, z2 = global_batch(1, world * B, K), global_batch(2, world * B, K)  # (N, K) each
    a, b = z1[mine].clone().requires_grad_(True), z2[mine].clone().requires_grad_(True)
    loss = NTXentLoss(temperature=0.3)(a, b)
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    report["ntxent_loss"] = float(mean_loss) / world
    report["ntxent_grad_z1"], report["ntxent_grad_z2"] = a.grad.tolist(), b.grad.tolist()

    # (3) a DDP encoder: NT-Xent and MoCo v3, each step's parameter gradients after DDP's average
    x1, x2 = global_batch(3, world * B, IN), global_batch(4, world * B, IN)  # (N, IN) each
    for name in ("ntxent", "mocov3"):
        model = nn.parallel.DistributedDataParallel(encoder())
        z = model(torch.cat([x1[mine], x2[mine]]))  # (2B, K): one forward for both views
        q1, q2 = z[:B], z[B:]
        if name == "ntxent":
            loss = NTXentLoss(temperature=0.3)(q1, q2)
        else:
            keys = encoder()  # a frozen stand-in for the momentum encoder
            with torch.no_grad():
                k1, k2 = keys(x1[mine]), keys(x2[mine])
            criterion = MoCoV3Loss(temperature=0.2)
            loss = criterion(q1, k2) + criterion(q2, k1)
            report["mocov3_labels"] = MoCoV3Loss.labels(B, rank).tolist()
        loss.backward()
        report[f"{name}_ddp_grad"] = [model.module.weight.grad.tolist(), model.module.bias.grad.tolist()]

    # (4) MoCo v2's queue takes every rank's keys, in rank order, on every rank
    from vfm_lab.backbones import build_backbone
    from vfm_lab.methods.moco import MoCoV2

    torch.manual_seed(0)
    moco = MoCoV2(build_backbone("convnet-s", 3, 16), proj_dim=K, hidden_dim=8, queue_size=3 * world * B)
    keys = global_batch(5, world * B, K)
    moco.enqueue(keys[mine])
    report["queue_ptr"] = int(moco.queue_ptr)
    report["queue_head"] = moco.queue[:world * B].tolist()

    # (5) DINO: the center is the mean teacher score over every rank's images (eq. 4)
    student, teacher = global_batch(6, 4, world * B, K), global_batch(7, 2, world * B, K)  # (V, N, K)
    dino = DINOLoss(K, center_momentum=0.5)
    mean_loss = dino(student[:, mine], teacher[:, mine]).detach()
    dist.all_reduce(mean_loss)
    report["dino_loss"], report["dino_center"] = float(mean_loss) / world, dino.center.tolist()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
