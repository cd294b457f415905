"""The budget-aware default's rule on hand-made clusters, predictions and scores: TypiClust's most
typical sample per visited cluster while labels per class are fewer than ``min_per_class`` or the
teacher is confident on less than half the pool, the largest ASSL score per visited cluster once
both are passed."""

import numpy as np
import pytest
import torch

from al_lightning.strategies import BudgetAware, TypiClust
from al_lightning.strategies.base import RandomNetworkError


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_most_typical(x: np.ndarray, members: np.ndarray) -> int:
    """Inverse mean squared distance to the k = min(20, m // 2) nearest other members (TypiClust's
    reference code) of the normalised features, by a dense distance matrix."""
    f = unit(x[members].astype(np.float64))
    d = ((f[:, None] - f[None]) ** 2).sum(-1)
    k = min(20, len(members) // 2)
    typicality = [1.0 / (np.sort(np.delete(d[i], i))[:k].mean() + 1e-5) for i in range(len(members))]
    return int(members[int(np.argmax(typicality))])


class HandMadeContext:
    """What the strategy reads: the pool's ids, features, the teacher's probabilities of the
    unlabeled samples (a share ``confident`` of them at 0.99) and the online scores."""

    def __init__(self, features: np.ndarray, labeled: np.ndarray, confident: float, score: np.ndarray,
                 seed: int = 0, trained: bool = True) -> None:
        self.all = torch.from_numpy(features)
        self.labeled = np.asarray(labeled, dtype=np.int64)
        self.unlabeled = np.setdiff1d(np.arange(len(features)), self.labeled)
        self.seed, self.cycle, self.num_classes = seed, 1, 4
        self.model_is_random = not trained
        n = len(self.unlabeled)
        self.probs = torch.full((n, 4), 0.25)
        self.probs[: round(confident * n)] = torch.tensor([0.99, 0.01 / 3, 0.01 / 3, 0.01 / 3])

        class Scores:
            pass

        self.scores = Scores()
        self.scores.score = torch.from_numpy(score)

    def features(self, kind: str, labeled: bool = False) -> torch.Tensor:
        if kind == "embedding" and self.model_is_random:
            raise RandomNetworkError("random network")
        return self.all[torch.from_numpy(self.labeled if labeled else self.unlabeled)]

    def stacked_features(self, kind: str) -> tuple[torch.Tensor, int]:
        return torch.cat([self.features(kind, labeled=True), self.features(kind)]), len(self.labeled)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.cycle])

    def output(self, name: str, labeled: bool = False) -> torch.Tensor:
        assert name == "max_probability" and not labeled, name
        return self.probs.max(dim=-1).values


def three_blobs(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Blobs of 41, 30 and 20 points around orthogonal directions (k-means with K = 3 finds them)."""
    rng = np.random.default_rng(seed)
    parts, members, start = [], [], 0
    for axis, size in enumerate((41, 30, 20)):
        centre = np.zeros(8)
        centre[axis] = 5.0
        parts.append(centre + 0.4 * rng.normal(size=(size, 8)))
        members.append(np.arange(start, start + size))
        start += size
    return np.concatenate(parts).astype(np.float32), members


@pytest.mark.parametrize("seed", [0, 1])
def test_below_the_switch_it_picks_typiclusts_most_typical_samples(seed):
    x, blob = three_blobs(seed)
    labeled = blob[0][:1]  # the largest blob already has a label: the two others are visited first
    score = np.random.default_rng(seed).uniform(size=len(x))
    context = HandMadeContext(x, labeled, confident=0.49, score=score, seed=seed)
    strategy = BudgetAware(features="embedding", min_per_class=0)
    picks = strategy.select(context, 2)
    assert picks.tolist() == [brute_most_typical(x, blob[1]), brute_most_typical(x, blob[2])]
    assert np.array_equal(picks, TypiClust(features="embedding").select(context, 2))
    assert strategy.last_rule == "typicality"
    assert strategy.acquisition_note() == "typicality, 0.2 labels per class, confident share 0.49"


@pytest.mark.parametrize("seed", [0, 1])
def test_from_the_switch_on_it_picks_the_largest_assl_score_of_each_visited_cluster(seed):
    x, blob = three_blobs(seed)
    labeled = blob[0][:1]
    score = np.random.default_rng(seed).uniform(size=len(x))
    score[labeled] = 10.0  # a labeled sample's score never counts
    context = HandMadeContext(x, labeled, confident=0.5, score=score, seed=seed)
    strategy = BudgetAware(features="embedding", min_per_class=0)
    picks = strategy.select(context, 2)  # |L| + b = 3 clusters: the three blobs
    assert picks.tolist() == [int(b[np.argmax(score[b])]) for b in (blob[1], blob[2])]
    assert strategy.last_rule == "assl"
    assert picks.tolist() != TypiClust(features="embedding").select(context, 2).tolist()


def test_the_rule_follows_the_confident_share_and_the_threshold():
    x, blob = three_blobs()
    score = np.random.default_rng(2).uniform(size=len(x))
    for confident, rule in ((0.0, "typicality"), (0.3, "typicality"), (0.5, "assl"), (1.0, "assl")):
        strategy = BudgetAware(features="embedding", min_per_class=0)
        strategy.select(HandMadeContext(x, blob[0][:1], confident, score), 2)
        assert strategy.last_rule == rule and strategy.last_confident_share == pytest.approx(confident, abs=0.01)
    strict = BudgetAware(features="embedding", min_per_class=0, threshold=0.995)  # 0.99 is not confident enough
    strict.select(HandMadeContext(x, blob[0][:1], 1.0, score), 2)
    assert strict.last_rule == "typicality"


@pytest.mark.parametrize("min_per_class, rule", [(None, "typicality"), (2.0, "assl"), (2.25, "typicality")])
def test_fewer_labels_per_class_than_min_per_class_keep_typicality_however_confident(min_per_class, rule):
    """8 labels of 4 classes are 2 per class: below the default 10 and 2.25, not below 2."""
    x, blob = three_blobs()
    labeled = np.concatenate([blob[0][:4], blob[1][:2], blob[2][:2]])
    score = np.random.default_rng(3).uniform(size=len(x))
    strategy = BudgetAware(features="embedding") if min_per_class is None else \
        BudgetAware(features="embedding", min_per_class=min_per_class)
    context = HandMadeContext(x, labeled, confident=1.0, score=score)
    picks = strategy.select(context, 3)
    assert strategy.last_rule == rule and strategy.last_per_class == 2.0
    # the confident share is computed (a pass over the pool) only where it decides the rule
    assert (strategy.last_confident_share is None) == (rule == "typicality")
    if rule == "typicality":
        assert np.array_equal(picks, TypiClust(features="embedding").select(context, 3))


def test_before_any_fit_it_is_typiclust_on_label_free_features():
    x, blob = three_blobs()
    score = np.zeros(len(x))
    cold = HandMadeContext(x, np.empty(0, dtype=np.int64), confident=1.0, score=score, trained=False)
    strategy = BudgetAware(features="pixels")
    picks = strategy.select(cold, 3)
    assert strategy.last_rule == "typicality" and strategy.last_confident_share is None
    assert strategy.acquisition_note() == "typicality, 0.0 labels per class (below 10)"
    assert BudgetAware(features="pixels", min_per_class=0).confident_share(cold) == 0.0
    assert sorted(picks.tolist()) == sorted(brute_most_typical(x, b) for b in blob)
    with pytest.raises(RandomNetworkError):
        BudgetAware(features="embedding").select(cold, 3)


def test_picks_are_exactly_budget_distinct_unlabeled_and_seeded():
    x, blob = three_blobs()
    labeled = np.concatenate([blob[0][:3], blob[1][:2]])
    score = np.random.default_rng(5).uniform(size=len(x))
    for confident in (0.1, 0.9):
        picks = BudgetAware(features="embedding").select(HandMadeContext(x, labeled, confident, score, seed=4), 40)
        again = BudgetAware(features="embedding").select(HandMadeContext(x, labeled, confident, score, seed=4), 40)
        assert len(set(picks.tolist())) == 40 and not np.isin(picks, labeled).any()
        assert np.array_equal(picks, again)
    with pytest.raises(ValueError, match="switch"):
        BudgetAware(switch=1.5)
    with pytest.raises(ValueError, match="min_per_class"):
        BudgetAware(min_per_class=-1)
