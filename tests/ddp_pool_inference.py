"""Run by tests/test_ddp.py: pool inference on two CPU processes (gloo), every output including the
per-sample statistics, over an odd number of ids and over one id (rank 1 holds none); each rank
saves what it gathered."""

import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from al_lightning.methods.inference import OUTPUTS, pool_inference
from al_lightning.models import create_backbone


def loader_for(images: torch.Tensor):
    def batches(ids: np.ndarray):
        return [{"plain": images[torch.as_tensor(ids[start:start + 4])]} for start in range(0, len(ids), 4)]
    return batches


def main(rank: int, out: str, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = create_backbone("small_cnn", num_classes=5, in_channels=1, width=4)
    images = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ids = np.random.default_rng(2).permutation(40)[:23]
    gathered = {"odd": pool_inference(model, loader_for(images), ids, torch.device("cpu"), OUTPUTS),
                "one": pool_inference(model, loader_for(images), ids[:1], torch.device("cpu"), OUTPUTS)}
    torch.save({"ids": ids, "images": images, "model": model.state_dict(), **gathered}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(main, args=(sys.argv[1], int(sys.argv[2])), nprocs=2)
