"""Two CPU processes under DDP (gloo): FeatureRealignment's queues and PriorGuidance's prior must be
identical on both ranks, the queues equal to a single-process replay of the gathered stream."""


import numpy as np
import pytest
import torch
from ddp_launch import run_script

from al_lightning.data import ActiveDataModule
from al_lightning.methods.parts.feature_realignment import LabeledFeatureQueues
from al_lightning.ops import prior_pseudo_labels

pytestmark = pytest.mark.ddp
QUEUES = "parts.0.RecordingRealignment."
PRIOR = "parts.1.PriorGuidance.prior"


def test_feature_queues_and_prior_are_identical_on_both_ranks_and_equal_a_replay(tmp_path):
    run_script("tests/ddp_feature_queue_fit.py", str(tmp_path))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["state"].keys() == rank1["state"].keys()
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name

    stream = rank0["stream"]
    assert len(stream) == 6 and all(len(step["index"]) == 2 * 4 for step in stream)
    for mine, theirs in zip(stream, rank1["stream"]):
        assert all(torch.equal(mine[key], theirs[key]) for key in ("index", "weak", "strong"))
    # 8 gathered ids out of 6 labeled: every step repeats an id; 48 pushes wrap the rings of length 3
    assert all(len(step["index"].unique()) < len(step["index"]) for step in stream)
    state = rank0["state"]
    assert int(state[QUEUES + "queue_pushes"].max()) > 3

    labeled = np.sort(rank0["labeled"])
    replay = LabeledFeatureQueues(torch.from_numpy(labeled), rank0["pool_size"], stream[0]["weak"].shape[1], 3)
    for step in stream:
        replay.push(step["index"], step["weak"], step["strong"])
    for name, value in replay.state().items():
        assert torch.equal(value, state[QUEUES + name]), name

    dm = ActiveDataModule("digits", num_workers=0)
    dm.setup()
    pixels = dm.views["plain"](dm.splits.train_images).flatten(1).numpy()
    expected = prior_pseudo_labels(pixels, labeled, dm.ground_truth(labeled), 10)
    assert torch.allclose(state[PRIOR], torch.from_numpy(expected).float())
