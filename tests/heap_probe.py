"""Run by tests/test_heap.py in a fresh process (the heap's history decides where a block comes
from): minor page faults of a large block's round trip in each state of the allocator, printed as
one JSON line. ``python tests/heap_probe.py allocator|inference|fixmatch|simclr|raising [tmp_dir]``
(``raising``: a FixMatch fit whose second step raises)."""

import json
import resource
import sys

import lightning as L
import torch

from al_lightning import heap

BLOCK = 64 << 20  # above glibc's largest mmap threshold (32 MiB): mmapped unless retained


def faults_per_block(settle: int = 16, repeats: int = 4) -> float:
    """Minor page faults of allocating, writing and freeing one BLOCK once the heap has settled:
    after up to ``settle`` rounds, until two in a row fault nothing (a kept heap can take a few
    rounds to hold a free block that fits; without it every round faults)."""
    def faults_of_round_trip() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(BLOCK // 4).fill_(1.0)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    quiet = 0
    for _ in range(settle):
        quiet = quiet + 1 if faults_of_round_trip() == 0 else 0
        if quiet == 2:
            break
    return sum(faults_of_round_trip() for _ in range(repeats)) / repeats


class BlockFaults(L.Callback):
    """Faults of the round trip inside the fit's steps."""

    def __init__(self, raise_at: int | None = None) -> None:
        self.inside: list[float] = []
        self.raise_at = raise_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.inside.append(faults_per_block(repeats=2))
        if batch_idx == self.raise_at:
            raise RuntimeError("the probe's step fails")


def allocator() -> dict:
    result = {"before": faults_per_block(), "retaining": heap.retain_freed_memory()}
    result["retained"] = faults_per_block()
    heap.retain_freed_memory()  # nested: the inner release keeps the retention
    heap.release_freed_memory()
    result["nested"] = faults_per_block()
    heap.release_freed_memory()
    result["first_after_release"] = faults_per_block(settle=0, repeats=1)  # the pages went back
    heap.release_freed_memory()  # unmatched: changes nothing
    return result


def fit(method: str, root: str) -> dict:
    from al_lightning.data import ActiveDataModule

    result = {"before": faults_per_block()}
    L.seed_everything(0)
    tiny = {"backbone": "small_cnn", "num_classes": 10, "in_channels": 1, "backbone_kwargs": {"width": 4}}
    if method in ("fixmatch", "raising"):
        from al_lightning.methods import FixMatch

        model = FixMatch(**tiny)
        datamodule = ActiveDataModule("digits", batch_size=4, uratio=2, steps_per_epoch=3, num_workers=0)
        datamodule.setup()
        datamodule.pool.label(range(20), datamodule.ground_truth(range(20)))
    else:
        from al_lightning.pretrain import SimCLR
        from al_lightning.pretrain.data import PretrainDataModule

        model = SimCLR(**tiny)
        datamodule = PretrainDataModule(ActiveDataModule("digits", batch_size=16, num_workers=0, eval_batch_size=512))
    probe = BlockFaults(raise_at=1 if method == "raising" else None)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        use_distributed_sampler=False, default_root_dir=root, callbacks=[probe])
    try:
        trainer.fit(model, datamodule=datamodule)
    except RuntimeError as error:
        result["raised"] = str(error)
    result["inside"] = probe.inside
    result["depth_after_fit"] = heap._depth
    result["first_after_fit"] = faults_per_block(settle=0, repeats=1)
    return result


def inference() -> dict:
    """A CPU pool pass: the probe runs as each batch is drawn, so the first is drawn before the
    pass has freed anything and the others after."""
    from al_lightning.methods.inference import embed_and_classify
    from al_lightning.models import create_backbone

    result = {"before": faults_per_block(), "between_batches": []}
    model = create_backbone("small_cnn", num_classes=10, in_channels=1, width=4)
    images = torch.randn(12, 1, 8, 8)

    def loader():
        for start in range(0, 12, 4):
            result["between_batches"].append(faults_per_block(repeats=2))
            yield {"plain": images[start:start + 4]}

    outputs = embed_and_classify(model, loader(), torch.device("cpu"), 12, ("embeddings", "logits"))
    with torch.no_grad():
        model.eval()
        result["exact"] = bool(torch.allclose(outputs["logits"], model.classify(model.embed(images)), atol=1e-5))
    result["first_after_pass"] = faults_per_block(settle=0, repeats=1)
    return result


if __name__ == "__main__":
    scenario = sys.argv[1]
    out = {"allocator": allocator, "inference": inference}.get(scenario, lambda: fit(scenario, sys.argv[2]))()
    print("HEAP " + json.dumps(out))
