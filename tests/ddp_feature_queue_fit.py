"""Run by tests/test_ddp_feature_queues.py: a short FixMatch + FeatureRealignment + PriorGuidance fit
on two CPU processes (gloo). Each rank saves its parts' state and the gathered labeled stream its
queues were fed, for the test to compare ranks and a single-process replay."""

import sys

import lightning as L
import numpy as np
import torch

from al_lightning.data import ActiveDataModule
from al_lightning.methods import FixMatch
from al_lightning.methods.parts.feature_realignment import FeatureRealignment
from al_lightning.methods.parts.prior_guidance import PriorGuidance

LABELED = 6  # fewer than the 2 x 4 gathered labeled samples of a step: ids repeat within a step
QUEUE_LENGTH = 3


class RecordingRealignment(FeatureRealignment):
    """Records every (index, weak, strong) batch handed to the queues: the all-gathered stream."""

    def reset(self, method, pool_size, unlabeled):
        super().reset(method, pool_size, unlabeled)
        self.stream = []
        push = self.queues.push

        def record(index, weak, strong):
            self.stream.append({"index": index.cpu().clone(), "weak": weak.cpu().clone(),
                                "strong": strong.cpu().clone()})
            push(index, weak, strong)

        self.queues.push = record


if __name__ == "__main__":
    out = sys.argv[1]
    L.seed_everything(0)
    dm = ActiveDataModule("digits", batch_size=4, uratio=3, steps_per_epoch=6, num_workers=0)
    dm.setup()
    ids = np.random.default_rng(0).choice(dm.pool.size, LABELED, replace=False)
    dm.pool.label(ids, dm.ground_truth(ids))
    realignment = RecordingRealignment(queue_length=QUEUE_LENGTH)
    model = FixMatch(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4},
                     parts=[realignment, PriorGuidance(switch_step=3, features="pixels")])
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    torch.save({"state": model.sample_state(), "stream": realignment.stream, "pool_size": dm.pool.size,
                "labeled": ids}, f"{out}/rank{trainer.global_rank}.pt")
