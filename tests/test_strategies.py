import numpy as np
import pytest
import torch

from al_lightning.methods import FixMatch
from al_lightning.methods.inference import pool_inference
from al_lightning.scoring.online import OnlineScoreState
from al_lightning.strategies import ASSL, STRATEGIES, AcquisitionContext, Entropy, Random, base


def context_for(dm, scores=None, cycle=0, seed=0):
    model = FixMatch(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4})
    return AcquisitionContext(dm.pool, model.inference_model, dm.inference_dataloader, torch.device("cpu"),
                              scores, cycle, seed)


@pytest.fixture
def passes(monkeypatch):
    """``(number of ids, outputs)`` of every pool pass an acquisition context makes."""
    made = []

    def counted(model, loader_for, ids, device, outputs):
        made.append((len(ids), tuple(outputs)))
        return pool_inference(model, loader_for, ids, device, outputs)

    monkeypatch.setattr(base, "pool_inference", counted)
    return made


def random_scores(size: int, seed: int | None) -> OnlineScoreState:
    """One observation of uniform u and i per sample (global RNG when ``seed`` is None)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    scores = OnlineScoreState(size)
    scores.update(torch.arange(size), torch.rand(size, generator=gen), torch.rand(size, generator=gen),
                  torch.zeros(size, dtype=torch.long), torch.zeros(size))
    return scores


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_returns_distinct_unlabeled_ids_deterministically(digits, name, passes, monkeypatch):
    scores = random_scores(digits.pool.size, seed=None)
    strategy = STRATEGIES.get(name)()
    torch.manual_seed(0)
    first = strategy.select(context_for(digits, scores), 15)
    monkeypatch.undo()
    # one pass per id set at most, computing only the outputs the strategy declares it reads
    assert len({n for n, _ in passes}) == len(passes), passes
    assert all(set(outputs) <= set(strategy.model_outputs) for _, outputs in passes), passes
    torch.manual_seed(0)
    second = strategy.select(context_for(digits, scores), 15)
    assert len(first) == 15 and len(set(first.tolist())) == 15
    assert not np.isin(first, digits.pool.labeled_indices).any()
    assert np.array_equal(np.sort(first), np.sort(second))


def test_pool_inference_computes_only_the_outputs_asked_for(digits):
    model = context_for(digits).model
    ids = digits.pool.unlabeled_indices[:50]
    both = pool_inference(model, digits.inference_dataloader, ids, torch.device("cpu"))
    assert set(both) == {"embeddings", "logits"}
    with torch.no_grad():
        assert torch.equal(both["logits"], model.classify(both["embeddings"]))
    heads = []
    model.head().register_forward_hook(lambda *_: heads.append(1))
    alone = pool_inference(model, digits.inference_dataloader, ids, torch.device("cpu"), outputs=("embeddings",))
    assert set(alone) == {"embeddings"} and not heads and torch.equal(alone["embeddings"], both["embeddings"])
    alone = pool_inference(model, digits.inference_dataloader, ids, torch.device("cpu"), outputs=("logits",))
    assert set(alone) == {"logits"} and torch.equal(alone["logits"], both["logits"])
    with pytest.raises(ValueError, match="choose among"):
        pool_inference(model, digits.inference_dataloader, ids, torch.device("cpu"), outputs=("probs",))


def test_probability_statistics_of_the_pass_equal_those_of_the_whole_probabilities(digits):
    """Each statistic, taken batch by batch inside the pass (the n x C probabilities are never
    held), against numpy on the probabilities of the full logits, in float64."""
    model = context_for(digits).model
    ids = digits.pool.unlabeled_indices  # several loader batches
    names = ("entropy", "max_probability", "margin", "predicted_class")
    logits = pool_inference(model, digits.inference_dataloader, ids, torch.device("cpu"), outputs=("logits",))
    p = logits["logits"].softmax(dim=-1).double().numpy()
    stats = pool_inference(model, digits.inference_dataloader, ids, torch.device("cpu"), outputs=names)
    assert set(stats) == set(names) and all(len(stats[name]) == len(ids) for name in names)
    assert stats["entropy"].dtype == torch.float64 and stats["predicted_class"].dtype == torch.int64
    top = np.sort(p, axis=1)
    np.testing.assert_allclose(stats["entropy"].numpy(), -(p * np.log(p)).sum(1), rtol=0, atol=1e-9)
    np.testing.assert_allclose(stats["max_probability"].numpy(), top[:, -1], rtol=0, atol=1e-7)
    np.testing.assert_allclose(stats["margin"].numpy(), top[:, -1] - top[:, -2], rtol=0, atol=1e-7)
    assert np.array_equal(stats["predicted_class"].numpy(), p.argmax(1))
    assert p.shape[1] == 10 and len(list(digits.inference_dataloader(ids))) > 1


def test_an_output_the_strategy_did_not_declare_still_comes_from_its_own_pass(digits, passes):
    context = context_for(digits)
    context.model_outputs = ("embeddings",)
    embeddings, probs = context.embeddings, context.probs
    assert [outputs for _, outputs in passes] == [("embeddings",), ("logits",)]
    context.embeddings
    assert len(passes) == 2
    expected = pool_inference(context.model, digits.inference_dataloader, context.unlabeled, torch.device("cpu"))
    assert torch.equal(embeddings, expected["embeddings"])
    assert torch.allclose(probs, expected["logits"].softmax(dim=-1))


@pytest.mark.parametrize("name", ["entropy", "least_confidence", "margin", "ceal", "budget_aware"])
def test_probability_strategies_never_compute_the_pools_logits(digits, name, passes):
    """They rank by one value per sample, reduced inside the pass: the n x C logits (3.7 GiB at a
    million samples and a thousand classes) are never made."""
    strategy = STRATEGIES.get(name)(min_per_class=0) if name == "budget_aware" else STRATEGIES.get(name)()
    context = context_for(digits, random_scores(digits.pool.size, seed=0), cycle=1)
    picks = strategy.select(context, 10)
    strategy.pseudo_labels(context, picks)
    assert passes and all("logits" not in outputs for _, outputs in passes), passes
    # one pass over the pool (BudgetAware's also covers the labeled ids: its stacked features)
    assert sum(n >= len(context.unlabeled) for n, _ in passes) == 1, passes


def test_assl_is_the_top_b_of_the_online_score_among_unlabeled(digits):
    scores = random_scores(digits.pool.size, seed=1)
    labeled = digits.pool.labeled_indices
    scores.u_mean[labeled] = 100.0  # the best scores belong to labeled samples: they must be skipped
    picked = ASSL().select(context_for(digits, scores), 10)
    score = scores.score.numpy().copy()
    score[labeled] = -np.inf
    assert set(picked.tolist()) == set(np.argsort(-score)[:10].tolist())


def test_entropy_is_the_top_b_of_prediction_entropy(digits):
    context = context_for(digits)
    picked = Entropy().select(context, 7)
    probs = context.probs.double().numpy()
    entropy = -(probs * np.log(probs)).sum(1)
    assert set(picked.tolist()) == set(context.unlabeled[np.argsort(-entropy)[:7]].tolist())


def test_random_changes_with_the_cycle_and_warns_when_the_pool_is_short(digits):
    a = Random().select(context_for(digits, cycle=0), 10)
    b = Random().select(context_for(digits, cycle=1), 10)
    assert not np.array_equal(a, b)
    with pytest.warns(UserWarning, match="exceeds"):
        everything = Random().select(context_for(digits), 10_000)
    assert len(everything) == digits.pool.num_unlabeled


def test_assl_without_the_scoring_callback_says_how_to_fix_it(digits):
    with pytest.raises(RuntimeError, match="OnlineScoring to trainer.callbacks"):
        ASSL().select(context_for(digits), 5)


@pytest.mark.parametrize("name", ["margin", "least_confidence"])
def test_probability_rankings_match_brute_force(digits, name):
    context = context_for(digits)
    picked = STRATEGIES.get(name)().select(context, 9)
    probs = np.sort(context.probs.double().numpy(), 1)
    value = probs[:, -1] - probs[:, -2] if name == "margin" else probs[:, -1]
    assert set(picked.tolist()) == set(context.unlabeled[np.argsort(value, kind="stable")[:9]].tolist())


def test_coreset_uses_labeled_embeddings_as_the_initial_cover(digits):
    from al_lightning.ops import k_center_greedy
    context = context_for(digits)
    picked = STRATEGIES.get("coreset")().select(context, 6)
    rows = k_center_greedy(context.embeddings, 6, centres=context.labeled_embeddings)
    assert picked.tolist() == context.unlabeled[rows].tolist()


def address(rows) -> int:
    return rows.data_ptr() if isinstance(rows, torch.Tensor) else rows.__array_interface__["data"][0]


@pytest.mark.parametrize("name, module, consumer, kwargs", [
    ("assl_div", "al_lightning.strategies.assl_div", "kmeanspp", {}),  # weights them in place
    ("active_ft", "al_lightning.ops.active_ft", "optimise_centroids", {"iterations": 3}),  # normalises them
    ("usl", "al_lightning.ops.usl", "knn_density", {"k": 20}),
    # labeled and unlabeled rows stacked by the pass itself, then normalised in place
    ("typiclust", "al_lightning.ops.typiclust", "kmeans", {"features": "embedding"}),
    ("budget_aware", "al_lightning.ops.typiclust", "kmeans", {"features": "embedding", "min_per_class": 0}),
    ("probcover", "al_lightning.ops.probcover", "ball_graph", {"features": "embedding"}),
    ("jlp", "al_lightning.ops.label_propagation", "knn_search", {"k": 10}),
])
def test_strategies_that_rewrite_the_embeddings_of_their_pass_work_on_its_storage(digits, monkeypatch, name, module,
                                                                                  consumer, kwargs):
    """The pool's embeddings are not held twice: the storage of the one pass over the pool (over
    the labeled and unlabeled ids for the strategies that stack them) reaches the kernel, and the
    context no longer holds it."""
    import importlib
    owner = importlib.import_module(module)
    original = getattr(owner, consumer)
    passed, consumed = [], []

    def watched(model, loader_for, ids, device, outputs):
        computed = pool_inference(model, loader_for, ids, device, outputs)
        if len(ids) >= len(digits.pool.unlabeled_indices):
            passed.append(address(computed["embeddings"]))
        return computed

    def consuming(features, *args, **kw):
        consumed.append(address(features))
        return original(features, *args, **kw)

    monkeypatch.setattr(base, "pool_inference", watched)
    monkeypatch.setattr(owner, consumer, consuming)
    context = context_for(digits, random_scores(digits.pool.size, seed=3), cycle=1)
    STRATEGIES.get(name)(**kwargs).select(context, 5)
    assert len(passed) == 1 and consumed[:1] == passed, (passed, consumed)
    assert ("unlabeled", "embeddings") not in context._outputs


def test_stacked_features_come_from_one_pass_labeled_rows_first_and_stay_with_the_caller(digits, passes):
    context = context_for(digits)
    context.model_outputs = ("embeddings", "max_probability")
    stacked, n_labeled = context.stacked_features("embedding")
    labeled, unlabeled = context.labeled, context.unlabeled
    assert n_labeled == len(labeled) > 0
    assert passes == [(len(labeled) + len(unlabeled), ("embeddings", "max_probability"))]
    apart = {ids_of: pool_inference(context.model, digits.inference_dataloader, ids, torch.device("cpu"),
                                    outputs=("embeddings", "max_probability"))
             for ids_of, ids in (("labeled", labeled), ("unlabeled", unlabeled))}
    assert torch.allclose(stacked, torch.cat([apart["labeled"]["embeddings"], apart["unlabeled"]["embeddings"]]),
                          atol=1e-5)
    # the pass's other outputs stay with the context, the embeddings do not: a later read is a new pass
    assert torch.allclose(context.output("max_probability"), apart["unlabeled"]["max_probability"], atol=1e-6)
    assert len(passes) == 1 and not {key for key in context._outputs if key[1] == "embeddings"}
    stacked.zero_()  # the caller's to overwrite
    assert torch.allclose(context.embeddings, apart["unlabeled"]["embeddings"], atol=1e-5) and len(passes) == 2
    # embeddings held already are stacked as they are, no pass
    again, _ = context.stacked_features("embedding")
    assert len(passes) == 3 and passes[-1][0] == len(labeled)  # only the labeled ids' embeddings were missing
    assert torch.allclose(again, torch.cat([apart["labeled"]["embeddings"], apart["unlabeled"]["embeddings"]]),
                          atol=1e-5)
    pixels, n_labeled = context.stacked_features("pixels")
    assert torch.equal(pixels, torch.cat([context.features("pixels", labeled=True), context.features("pixels")]))


def test_assl_div_is_kmeanspp_on_score_weighted_embeddings(digits):
    from al_lightning.ops import kmeanspp
    scores = random_scores(digits.pool.size, seed=3)
    context = context_for(digits, scores)
    picked = STRATEGIES.get("assl_div")().select(context, 5)
    weighted = scores.score[torch.as_tensor(context.unlabeled)].float()[:, None] * context.embeddings
    first = int(weighted.norm(dim=1).argmax())
    assert picked[0] == context.unlabeled[first]
    assert picked.tolist() == context.unlabeled[kmeanspp(weighted, 5, context.rng(), first=first)].tolist()
