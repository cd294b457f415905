import numpy as np
import pytest

from al_lightning.data import ActiveDataModule


@pytest.fixture
def digits():
    """Digits with 20 labeled samples (two per class is not guaranteed: random ids, seed 0)."""
    dm = ActiveDataModule("digits", batch_size=4, uratio=2, steps_per_epoch=3, num_workers=0)
    dm.setup()
    ids = np.random.default_rng(0).choice(dm.pool.size, 20, replace=False)
    dm.pool.label(ids, dm.ground_truth(ids))
    return dm
