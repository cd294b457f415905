"""FlexMatch's and FreeMatch's threshold state under DDP (two CPU processes, gloo): both ranks must
hold the same state, equal to a single-process replay of the gathered stream."""


import pytest
import torch
from ddp_launch import run_script

from al_lightning.methods.flexmatch import UNUSED, CurriculumState
from al_lightning.methods.freematch import SelfAdaptiveThresholds

pytestmark = pytest.mark.ddp
LOCAL_BATCH = 8


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_threshold_state")
    run_script("tests/ddp_threshold_state_fit.py", str(out))
    return {name: [torch.load(out / f"{name}_rank{r}.pt", weights_only=False) for r in (0, 1)]
            for name in ("flexmatch", "freematch")}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _assert_gathered_from_both_ranks(rank0, rank1):
    assert len(rank0["stream"]) == 6
    for step0, step1 in zip(rank0["stream"], rank1["stream"]):
        for key in step0:
            assert torch.equal(step0[key], step1[key]), key
            assert len(step0[key]) == 2 * LOCAL_BATCH
        # the two halves are the two ranks' own batches (a barely trained model's predictions may
        # coincide, so one differing entry suffices)
        assert any(not torch.equal(step0[k][:LOCAL_BATCH], step0[k][LOCAL_BATCH:]) for k in step0)


def test_flexmatch_state_is_identical_on_both_ranks_and_equals_a_replay(saved):
    rank0, rank1 = saved["flexmatch"]
    _assert_same_state(rank0["state"], rank1["state"])
    _assert_gathered_from_both_ranks(rank0, rank1)
    replay = CurriculumState(rank0["pool_size"], rank0["unlabeled"], 10)
    for step in rank0["stream"]:
        replay.update(step["index"], step["confidence"], step["pseudo_label"], tau=0.16)
    _assert_same_state(replay.state_dict(), rank0["state"])
    # the stream exercised what matters: ids repeated within a gathered step, entries on both
    # sides of tau, several classes selected along the way (later entries may overwrite all but one)
    stream = rank0["stream"]
    assert any(len(step["index"].unique()) < len(step["index"]) for step in stream)
    confidences = torch.cat([step["confidence"] for step in stream])
    assert (confidences >= 0.16).any() and (confidences < 0.16).any()
    assert torch.cat([step["pseudo_label"] for step in stream])[confidences >= 0.16].unique().numel() >= 2
    selected = rank0["state"]["selected_label"][torch.as_tensor(rank0["unlabeled"])]
    assert (selected != UNUSED).any()
    # one rank's half of the stream alone gives another state: the gather matters
    local = CurriculumState(rank0["pool_size"], rank0["unlabeled"], 10)
    for step in stream:
        local.update(step["index"][:LOCAL_BATCH], step["confidence"][:LOCAL_BATCH],
                     step["pseudo_label"][:LOCAL_BATCH], tau=0.16)
    assert not torch.equal(local.selected_label, replay.selected_label)


def test_freematch_state_is_identical_on_both_ranks_and_equals_a_replay(saved):
    rank0, rank1 = saved["freematch"]
    _assert_same_state(rank0["state"], rank1["state"])
    _assert_gathered_from_both_ranks(rank0, rank1)
    replay = SelfAdaptiveThresholds(10, momentum=0.9)
    for step in rank0["stream"]:
        replay.update(step["probs"])
    _assert_same_state(replay.state_dict(), rank0["state"])
    # one rank's half of the stream alone gives another state: the gather matters
    local = SelfAdaptiveThresholds(10, momentum=0.9)
    for step in rank0["stream"]:
        local.update(step["probs"][:LOCAL_BATCH])
    assert not torch.equal(local.p_model, replay.p_model)
