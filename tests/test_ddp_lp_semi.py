"""LP-SEMI under DDP (two CPU processes, gloo): both ranks hold the same pseudo-labels and weights,
equal to a single-process propagation of the gathered features."""


import numpy as np
import pytest
import torch
from ddp_launch import run_script

from al_lightning.ops import label_propagation

pytestmark = pytest.mark.ddp


def test_lp_semi_state_is_identical_on_both_ranks_and_equals_a_single_process_propagation(tmp_path):
    run_script("tests/ddp_lp_semi_fit.py", str(tmp_path))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for name in ("pseudo_labels", "weights"):
        assert torch.equal(rank0["state"][name], rank1["state"][name]), name
    # one propagation at the fit's start and one before the second epoch, each over the whole pool
    assert len(rank0["features"]) == len(rank1["features"]) == 2
    for mine, theirs in zip(rank0["features"], rank1["features"]):
        assert mine.shape[0] == 1437 and torch.equal(mine, theirs)
    assert not torch.equal(rank0["features"][0], rank0["features"][1])  # the model trained in between
    _, pseudo, weights = label_propagation(rank0["features"][-1], rank0["labeled"], rank0["labels"], 10, k=10)
    assert np.array_equal(rank0["state"]["pseudo_labels"].numpy(), pseudo)
    assert np.array_equal(rank0["state"]["weights"].numpy(), weights.astype(np.float32))
    assert np.array_equal(pseudo[rank0["labeled"]], rank0["labels"])
