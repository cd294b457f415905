import math

import pytest
import torch

from al_lightning.ops.indexing import last_occurrence, occurrence_rank
from al_lightning.scoring.online import OnlineScoreState, pseudo_el2n, symmetric_kl


def test_pseudo_el2n_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    expected = [math.sqrt(0.3**2 + 0.2**2 + 0.1**2), math.sqrt((2 / 3) ** 2 + 2 * (1 / 3) ** 2)]
    assert pseudo_el2n(probs).tolist() == pytest.approx(expected)


def test_symmetric_kl_by_hand():
    p = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    q = torch.tensor([[0.9, 0.1]], dtype=torch.float64)
    kl_pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    kl_qp = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert symmetric_kl(p, q).item() == pytest.approx((kl_pq + kl_qp) / 2)
    assert symmetric_kl(p, p).item() == pytest.approx(0.0)


def test_ema_emv_ucb_follow_eq3_to_eq6_on_a_hand_sequence():
    state = OnlineScoreState(3, alpha=0.8, c_u=0.5, c_i=2.0, threshold=0.95)
    # sample 1 observed three times, sample 2 once, sample 0 never
    us, is_ = [0.5, 0.1, 0.3], [0.2, 0.4, 0.0]
    for u, i in zip(us, is_):
        state.update(torch.tensor([1]), torch.tensor([u]), torch.tensor([i]), torch.tensor([0]), torch.tensor([0.5]))
    state.update(torch.tensor([2]), torch.tensor([0.6]), torch.tensor([1.0]), torch.tensor([1]), torch.tensor([0.99]))

    def replay(xs):
        mean = var = 0.0
        for x in xs:
            mean = 0.8 * x + 0.2 * mean
            var = 0.8 * (x - mean) ** 2 + 0.2 * var
        return mean, var

    um, uv = replay(us)
    im, iv = replay(is_)
    # by hand for the first steps: m1 = 0.4, v1 = 0.8 * 0.1^2 = 0.008
    assert replay([0.5]) == pytest.approx((0.4, 0.008))
    assert state.u_mean[1].item() == pytest.approx(um) and state.u_var[1].item() == pytest.approx(uv)
    assert state.i_mean[1].item() == pytest.approx(im) and state.i_var[1].item() == pytest.approx(iv)
    u_ucb, i_ucb = um + 0.5 * math.sqrt(uv), im + 2.0 * math.sqrt(iv)
    assert state.u_ucb[1].item() == pytest.approx(u_ucb)
    assert state.score[1].item() == pytest.approx(u_ucb * i_ucb)
    # one observation: m = 0.8 x, v = 0.8 (0.2 x)^2
    assert state.u_ucb[2].item() == pytest.approx(0.48 + 0.5 * math.sqrt(0.8 * 0.12**2))
    assert state.score[0].item() == 0.0 and state.seen.tolist() == [0, 3, 1]
    assert state.confident.tolist() == [0, 0, 1]


def test_temporal_instability_counts_flips_between_consecutive_observations():
    state = OnlineScoreState(2)
    for pred in [0, 0, 2, 1, 1, 0]:
        state.update(torch.tensor([0]), torch.zeros(1), torch.zeros(1), torch.tensor([pred]), torch.zeros(1))
    assert state.flips.tolist() == [3, 0]


def test_duplicate_ids_in_one_update_equal_a_sequential_replay():
    torch.manual_seed(0)
    index = torch.randint(0, 5, (40,))
    u, i = torch.rand(40), torch.rand(40)
    pred, conf = torch.randint(0, 3, (40,)), torch.rand(40)
    batched, sequential = OnlineScoreState(5), OnlineScoreState(5)
    batched.update(index, u, i, pred, conf)
    for k in range(40):
        sequential.update(index[k:k + 1], u[k:k + 1], i[k:k + 1], pred[k:k + 1], conf[k:k + 1])
    for name in OnlineScoreState.FIELDS:
        assert torch.allclose(getattr(batched, name).double(), getattr(sequential, name).double()), name


def test_occurrence_rank():
    assert occurrence_rank(torch.tensor([3, 1, 3, 3, 1, 0])).tolist() == [0, 0, 1, 2, 1, 0]
    assert last_occurrence(torch.tensor([3, 1, 3, 3, 1, 0])).tolist() == [False, False, False, True, True, True]


def test_state_dict_round_trip():
    state = OnlineScoreState(4, alpha=0.5)
    state.update(torch.tensor([0, 3]), torch.tensor([0.2, 0.4]), torch.tensor([0.1, 0.3]),
                 torch.tensor([1, 2]), torch.tensor([0.99, 0.1]))
    copy = OnlineScoreState(4)
    copy.load_state_dict(state.state_dict())
    assert torch.equal(copy.score, state.score) and copy.alpha == 0.5
    with pytest.raises(ValueError, match="pool of 4"):
        OnlineScoreState(5).load_state_dict(state.state_dict())
