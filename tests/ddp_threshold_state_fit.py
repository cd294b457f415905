"""Run by tests/test_ddp_threshold_state.py: short FlexMatch and FreeMatch fits on two CPU processes
(gloo). Each rank saves its final threshold state and the gathered stream it applied, step by step.

All but 12 pool ids are labeled and each rank draws 8 unlabeled ids per step, so a gathered step of
16 entries repeats ids (across ranks too) and the "latest write wins" rule is exercised."""

import sys

import lightning as L
import numpy as np
import torch

from al_lightning.data import ActiveDataModule
from al_lightning.methods.flexmatch import FlexMatch
from al_lightning.methods.freematch import FreeMatch

NUM_UNLABELED = 12


class RecordingFlexMatch(FlexMatch):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stream = []

    def update_curriculum(self, index, confidence, pseudo_label):
        self.stream.append({"index": index.cpu().clone(), "confidence": confidence.cpu().clone(),
                            "pseudo_label": pseudo_label.cpu().clone()})
        super().update_curriculum(index, confidence, pseudo_label)


class RecordingFreeMatch(FreeMatch):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stream = []

    def update_thresholds(self, probs):
        self.stream.append({"probs": probs.cpu().clone()})
        super().update_thresholds(probs)


def fit(method, out, name, **kwargs):
    L.seed_everything(3)  # a seed whose few steps select several classes: a barely trained net often predicts one
    model = method(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4}, **kwargs)
    dm = ActiveDataModule("digits", batch_size=4, unlabeled_batch_size=8, steps_per_epoch=6, num_workers=0)
    dm.setup()
    ids = np.random.default_rng(0).permutation(dm.pool.size)[NUM_UNLABELED:]
    dm.pool.label(ids, dm.ground_truth(ids))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        use_distributed_sampler=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    torch.save({"state": model.sample_state(), "stream": model.stream, "unlabeled": dm.pool.unlabeled_indices,
                "pool_size": dm.pool.size}, f"{out}/{name}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    out = sys.argv[1]
    fit(RecordingFlexMatch, out, "flexmatch", threshold=0.16)
    fit(RecordingFreeMatch, out, "freematch", ema_p=0.9)
