"""Run by tests/test_ddp_lp_semi.py: a short LP-SEMI fit on two CPU processes (gloo), each rank
saving its pseudo-labels and weights with the gathered features and labels of the last propagation."""

import sys

import lightning as L
import numpy as np
import torch

from al_lightning.data import ActiveDataModule
from al_lightning.methods.lp_semi import LPSemi


class RecordingLPSemi(LPSemi):
    """Keeps what each propagation started from, for the single-process replay."""

    def pool_features(self) -> torch.Tensor:
        features = super().pool_features()
        self.recorded_features.append(features.cpu().clone())
        return features


if __name__ == "__main__":
    out = sys.argv[1]
    L.seed_everything(0)
    dm = ActiveDataModule("digits", batch_size=4, unlabeled_batch_size=16, num_workers=0)
    dm.setup()
    ids = np.random.default_rng(0).choice(dm.pool.size, 20, replace=False)
    dm.pool.label(ids, dm.ground_truth(ids))
    model = RecordingLPSemi(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4}, k=10,
                            warmup_epochs=0)
    model.recorded_features = []
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, limit_train_batches=3,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    labeled = dm.pool.labeled_indices
    torch.save({"state": model.sample_state(), "features": model.recorded_features, "labeled": labeled,
                "labels": dm.pool.labels_of(labeled)}, f"{out}/rank{trainer.global_rank}.pt")
