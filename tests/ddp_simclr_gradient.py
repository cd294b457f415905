"""Two gloo processes each hold half of a batch of SimCLR projections and run SimCLR's own NT-Xent
criterion (negatives gathered across ranks with gradient); rank 0 checks the loss and the gradients
against one process holding the whole batch. Prints ``ok`` on success."""

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from al_lightning.pretrain import SimCLR

N, D, WORLD = 8, 16, 2


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=generator), torch.randn(N, D, generator=generator)


def rank_main(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    criterion = SimCLR(backbone="small_cnn", in_channels=1, backbone_kwargs={"width": 4}).criterion
    z1, z2 = (z.chunk(WORLD)[rank].clone().requires_grad_(True) for z in batch())
    loss = criterion(z1, z2)
    loss.backward()
    torch.save({"loss": loss.detach(), "g1": z1.grad, "g2": z2.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    with tempfile.TemporaryDirectory() as out_dir:
        init_file = os.path.join(out_dir, "init")
        mp.spawn(rank_main, args=(init_file, out_dir), nprocs=WORLD, join=True)
        ranks = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]
    criterion = SimCLR(backbone="small_cnn", in_channels=1, backbone_kwargs={"width": 4}).criterion
    z1, z2 = (z.clone().requires_grad_(True) for z in batch())
    full = criterion(z1, z2)  # one process: no gathering
    full.backward()
    # DDP averages the ranks' parameter gradients, so each rank's gradient must be WORLD x the
    # full-batch gradient of its own rows, and the mean of the ranks' losses the full-batch loss
    mean_loss = sum(r["loss"] for r in ranks) / WORLD
    assert torch.allclose(mean_loss, full.detach(), atol=1e-6), (mean_loss, full)
    for rank, r in enumerate(ranks):
        assert torch.allclose(r["g1"], WORLD * z1.grad.chunk(WORLD)[rank], atol=1e-6), rank
        assert torch.allclose(r["g2"], WORLD * z2.grad.chunk(WORLD)[rank], atol=1e-6), rank
    # the gathered negatives matter: a rank that saw only its own half would have another loss
    local = criterion.__class__(temperature=criterion.temperature)(*(z.chunk(WORLD)[0] for z in batch()))
    assert not torch.allclose(local, ranks[0]["loss"], atol=1e-3)
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
