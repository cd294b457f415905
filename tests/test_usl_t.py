"""USL-T (section 2.3): the losses against their formulas, the selection against brute force, training
on separable blobs, and the strategy's contract."""

import math

import numpy as np
import pytest
import torch

from al_lightning.data import ActiveDataModule
from al_lightning.methods import FixMatch
from al_lightning.ops.usl_t import (cluster_confidence, global_loss, local_loss, updated_prior, usl_t_picks,
                                   usl_t_train)
from al_lightning.strategies import STRATEGIES, AcquisitionContext
from al_lightning.strategies.usl_t import USLT


def context_for(dm):
    model = FixMatch(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4})
    return AcquisitionContext(dm.pool, model.inference_model, dm.inference_dataloader, torch.device("cpu"))


def softmax(row):
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


WEAK = torch.tensor([[[3.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 5.0], [2.5, 0.0, 0.1]],
                     [[0.0, 0.1, 0.0], [0.0, 3.5, 0.0], [0.0, 3.0, 0.2], [6.0, 0.0, 0.0], [0.1, 0.0, 0.0]]])
STRONG = torch.tensor([[[1.0, 0.5, -1.0], [0.3, 0.2, 0.1], [0.0, 1.0, 2.0], [-1.0, 0.0, 0.5], [0.2, 0.1, 0.0]],
                       [[0.4, 0.2, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]])


def brute_global(weak, strong, threshold, balanced):
    """Eq. 10 with KL(one-hot y || y_hat) = sum_c y_c log(y_c / y_hat_c); balanced: the released code's
    per-cluster mean, then mean over the clusters present."""
    out = []
    for h in range(weak.shape[0]):
        per_cluster, total = {}, 0.0
        for i in range(weak.shape[1]):
            p = softmax(weak[h, i].tolist())
            if max(p) < threshold:
                continue
            target = p.index(max(p))
            y = [1.0 if c == target else 0.0 for c in range(len(p))]
            q = softmax(strong[h, i].tolist())
            kl = sum(y[c] * math.log(y[c] / q[c]) for c in range(len(p)) if y[c] > 0)
            per_cluster.setdefault(target, []).append(kl)
            total += kl
        if balanced:
            out.append(np.mean([np.mean(v) for v in per_cluster.values()]) if per_cluster else 0.0)
        else:
            out.append(total / weak.shape[1])
    return out


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("threshold", [0.0, 0.8])
def test_global_loss_is_the_thresholded_kl_to_the_hard_assignment(threshold, balanced):
    weak, strong = WEAK.clone().requires_grad_(True), STRONG.clone().requires_grad_(True)
    got = global_loss(weak, strong, threshold, balanced)
    assert got.tolist() == pytest.approx(brute_global(WEAK, STRONG, threshold, balanced), rel=1e-5)
    got.sum().backward()
    assert weak.grad is None and strong.grad is not None  # the hard target is a pseudo-label


def test_global_loss_threshold_drops_the_unconfident_samples():
    """At 0.8 row 1 of head 0 (max softmax 0.37) and rows 0, 4 of head 1 (0.36, 0.36) fall below the
    threshold (the others: 0.91, 0.96, 0.99, 0.85 and 0.94, 0.90, 0.99): only the rest count."""
    keep = torch.tensor([[True, False, True, True, True], [False, True, True, True, False]])
    for h in range(2):
        assert (torch.softmax(WEAK[h], -1).max(-1).values >= 0.8).tolist() == keep[h].tolist()
    got = global_loss(WEAK, STRONG, 0.8, balanced=False)
    ce = -torch.log_softmax(STRONG, -1).gather(-1, WEAK.argmax(-1, keepdim=True))[..., 0]
    assert torch.allclose(got, (ce * keep).sum(-1) / 5)


def test_local_loss_is_the_kl_of_the_adjusted_sharpened_neighbour_to_the_anchor():
    rng = np.random.default_rng(0)
    anchor = torch.tensor(rng.normal(size=(2, 4, 3)) * 2, dtype=torch.float32, requires_grad=True)
    neighbour = torch.tensor(rng.normal(size=(2, 4, 3)) * 2, dtype=torch.float32, requires_grad=True)
    prior = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    alpha, t = 5.0, 0.25
    got = local_loss(anchor, neighbour, prior, alpha, t)
    expected = []
    for h in range(2):
        kls = []
        for i in range(4):
            # the released code's form: sharpen(softmax(z - alpha log z_bar), t) = p^(1/t) / sum p^(1/t)
            p = softmax([neighbour[h, i, c].item() - alpha * math.log(prior[h, c].item()) for c in range(3)])
            target = [v ** (1 / t) / sum(w ** (1 / t) for w in p) for v in p]
            q = softmax(anchor[h, i].tolist())
            kls.append(sum(target[c] * math.log(target[c] / q[c]) for c in range(3)))
        expected.append(np.mean(kls))
    assert got.tolist() == pytest.approx(expected, rel=1e-4)
    got.sum().backward()
    assert neighbour.grad is None and anchor.grad is not None


def test_cluster_prior_is_the_moving_average_of_the_neighbours_mean_assignment():
    rng = np.random.default_rng(1)
    neighbour = torch.tensor(rng.normal(size=(2, 5, 3)), dtype=torch.float32)
    prior = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    got = updated_prior(prior, neighbour, momentum=0.5)
    for h in range(2):
        mean = np.mean([softmax(neighbour[h, i].tolist()) for i in range(5)], axis=0)
        assert got[h].tolist() == pytest.approx((0.5 * mean + 0.5 * prior[h].numpy()).tolist(), rel=1e-5)
    assert got.sum(-1).tolist() == pytest.approx([1.0, 1.0])


def test_confidence_is_head_zero_cluster_and_mean_max_probability_over_heads():
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.normal(size=(11, 4)), dtype=torch.float32)
    centroids = torch.tensor(rng.normal(size=(3, 5, 4)), dtype=torch.float32)
    assign, confidence = cluster_confidence(x, centroids, scale=3.0, chunk=4)
    for i in range(11):
        u = x[i] / x[i].norm()
        probs = [softmax([3.0 * float(u @ (c / c.norm())) for c in centroids[h]]) for h in range(3)]
        assert assign[i] == int(np.argmax(probs[0]))
        assert confidence[i].item() == pytest.approx(np.mean([max(p) for p in probs]), rel=1e-5)


def brute_picks(confidence, assign, m):
    """Best of each non-empty cluster (ties: smaller row); then by rank in own cluster, larger cluster, row."""
    picks = [max(np.flatnonzero(assign == c), key=lambda i: (confidence[i], -i))
             for c in range(m) if (assign == c).any()]
    size = {c: int((assign == c).sum()) for c in range(m)}
    rank = {i: sum(1 for j in np.flatnonzero(assign == assign[i])
                   if (confidence[j], -j) > (confidence[i], -i)) for i in range(len(assign))}
    rest = sorted((i for i in range(len(assign)) if i not in picks), key=lambda i: (rank[i], -size[assign[i]], i))
    return picks + rest[: m - len(picks)]


@pytest.mark.parametrize("clusters", [[0, 1, 2, 3, 4, 5], [0, 1, 2, 4]])
def test_picks_are_the_most_confident_per_cluster_then_runners_up_of_the_largest(clusters):
    rng = np.random.default_rng(3)
    assign = rng.choice(clusters, size=40, p=np.arange(1, len(clusters) + 1) / sum(range(1, len(clusters) + 1)))
    confidence = rng.random(40).round(1)  # ties inside clusters: the smaller row wins
    picks = usl_t_picks(confidence, assign, 6)
    assert picks.tolist() == brute_picks(confidence, assign, 6)
    assert len(set(picks.tolist())) == 6
    for c in set(clusters):  # every non-empty cluster gives its most confident sample
        members = np.flatnonzero(assign == c)
        assert members[np.argmax(confidence[members])] in picks


@pytest.mark.parametrize("seed", [2, 5, 9])
def test_training_on_separable_blobs_lowers_the_loss_and_puts_one_cluster_on_each_blob(seed):
    rng = np.random.default_rng(0)
    blob = np.repeat(np.arange(4), 40)
    x = torch.tensor(np.eye(6)[blob] * 3 + 0.3 * rng.normal(size=(160, 6)), dtype=torch.float32)

    def fit(epochs):
        centroids, history = usl_t_train(x, 4, torch.Generator().manual_seed(seed), heads=1, k=10, epochs=epochs,
                                         batch_size=80, lr=0.02)
        assign, confidence = cluster_confidence(x, centroids)
        return assign.numpy(), usl_t_picks(confidence.numpy(), assign.numpy(), 4), history

    _, first_picks, _ = fit(0)
    assert len(set(blob[first_picks])) < 4  # the random initial centroids miss a blob
    assign, picks, history = fit(60)
    assert np.mean(history[-5:]) < 0.5 * history[0]
    assert sorted(blob[picks]) == [0, 1, 2, 3]
    assert len(set(zip(blob, assign))) == 4 and len(set(assign)) == 4  # clusters == blobs


def test_uslt_is_registered_and_deterministic_and_returns_budget_distinct_unlabeled_ids(digits):
    assert STRATEGIES.get("usl_t") is USLT
    strategy = USLT(epochs=3, lr=1e-2)
    torch.manual_seed(0)  # the same (random) model weights, hence the same embeddings
    first = strategy.select(context_for(digits), 12)
    torch.manual_seed(0)
    second = strategy.select(context_for(digits), 12)
    assert len(first) == 12 and len(set(first.tolist())) == 12
    assert not np.isin(first, digits.pool.labeled_indices).any()
    assert np.array_equal(first, second)


def test_uslt_works_as_the_initial_strategy_on_an_unlabeled_pool():
    dm = ActiveDataModule("digits", batch_size=4, uratio=2, steps_per_epoch=3, num_workers=0)
    dm.setup()
    assert dm.pool.num_unlabeled == dm.pool.size
    context = AcquisitionContext(dm.pool, None, dm.inference_dataloader, torch.device("cpu"), None, cycle=0, seed=3)
    picks = USLT(features="pixels", epochs=2, lr=1e-2).select(context, 10)
    assert len(set(picks.tolist())) == 10 and picks.min() >= 0 and picks.max() < dm.pool.size
