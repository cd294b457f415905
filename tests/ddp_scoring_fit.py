"""Run by tests/test_ddp.py: a short FixMatch fit on two CPU processes (gloo), each rank saving
its online-score state and the gathered stream it replayed."""

import sys

import lightning as L
import numpy as np
import torch

from al_lightning.data import ActiveDataModule
from al_lightning.methods import FixMatch
from al_lightning.scoring import OnlineScoring

if __name__ == "__main__":
    out = sys.argv[1]
    L.seed_everything(0)
    dm = ActiveDataModule("digits", batch_size=4, uratio=3, steps_per_epoch=6, num_workers=0)
    dm.setup()
    ids = np.random.default_rng(0).choice(dm.pool.size, 20, replace=False)
    dm.pool.label(ids, dm.ground_truth(ids))
    model = FixMatch(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4})
    scoring = OnlineScoring(record_stream=True)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        use_distributed_sampler=False, callbacks=[scoring])
    trainer.fit(model, datamodule=dm)
    torch.save({"state": scoring.state.state_dict(), "stream": scoring.stream}, f"{out}/rank{trainer.global_rank}.pt")
