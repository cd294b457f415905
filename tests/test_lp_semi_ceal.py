"""LP-SEMI ("Rethinking deep active learning", Algorithm 1 lines 4-7) and its CEAL baseline (Eq. 7)."""

import math
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from scipy.stats import chi2

import al_lightning.methods.lp_semi as lp_semi_module
from al_lightning.data import ActiveDataModule, ActivePool
from al_lightning.methods.lp_semi import LPSemi
from al_lightning.ops import label_propagation
from al_lightning.strategies import AcquisitionContext
from al_lightning.strategies.ceal import CEAL


def digits_module(num_workers: int = 0) -> ActiveDataModule:
    dm = ActiveDataModule("digits", batch_size=8, unlabeled_batch_size=64, num_workers=num_workers)
    dm.setup()
    ids = np.random.default_rng(0).choice(dm.pool.size, 20, replace=False)
    dm.pool.label(ids, dm.ground_truth(ids))
    return dm


def lp_semi(**kwargs) -> LPSemi:
    return LPSemi(backbone="small_cnn", num_classes=kwargs.pop("num_classes", 10), in_channels=1,
                  backbone_kwargs={"width": 4}, **kwargs)


def attach(dm: ActiveDataModule, model: LPSemi, world_size: int = 1) -> None:
    """What the data module reads from a trainer when it builds loaders: the method and the rank."""
    dm.trainer = SimpleNamespace(lightning_module=model, global_rank=0, world_size=world_size)


def unlabeled_draws(dm: ActiveDataModule) -> np.ndarray:
    loader = dm.train_dataloader().iterables["unlabeled"]
    return torch.cat([batch["index"] for batch in loader]).numpy()


def chi_square(draws: np.ndarray, groups: np.ndarray, expected_share: np.ndarray) -> float:
    observed = np.bincount(groups[draws], minlength=len(expected_share))
    expected = expected_share * len(draws)
    return float(((observed - expected) ** 2 / expected).sum())


# ------------------------------------------------------------------ sampling and epoch length
def test_unlabeled_draws_follow_the_weights_and_the_test_rejects_uniform_draws():
    dm = digits_module()
    model = lp_semi(unlabeled_epoch_fraction=4.0)  # 4 |U| draws: ~5,700
    model.reset_sample_state(dm.pool.size, dm.pool.unlabeled_indices)
    attach(dm, model)
    unlabeled = dm.pool.unlabeled_indices
    groups = np.arange(dm.pool.size) % 10  # 10 groups of pool ids, weights 1..10
    weights = torch.as_tensor(groups + 1.0, dtype=torch.float32)
    mass = np.bincount(groups[unlabeled], weights=groups[unlabeled] + 1.0, minlength=10)
    critical = chi2.ppf(0.999, df=9)

    model.sampling_weights = weights  # set after the loader is built: read when iteration starts
    draws = unlabeled_draws(dm)
    assert len(draws) == math.ceil(4.0 * len(unlabeled) / 64) * 64 and np.isin(draws, unlabeled).all()
    assert chi_square(draws, groups, mass / mass.sum()) < critical
    # negative control: the same pipeline with uniform weights is rejected against the skewed shares
    model.sampling_weights = None
    uniform = unlabeled_draws(dm)
    assert chi_square(uniform, groups, mass / mass.sum()) > 10 * critical
    counts = np.bincount(groups[unlabeled], minlength=10)
    assert chi_square(uniform, groups, counts / counts.sum()) < critical


@pytest.mark.parametrize("world_size", [1, 2])
def test_an_epoch_ends_after_half_of_the_unlabeled_pool_is_drawn(world_size):
    dm = digits_module()
    model = lp_semi()
    attach(dm, model, world_size)
    loaders = dm.train_dataloader().iterables
    steps = math.ceil(0.5 * dm.pool.num_unlabeled / (64 * world_size))
    assert len(loaders["labeled"]) == len(loaders["unlabeled"]) == steps
    assert steps == (12 if world_size == 1 else 6)  # 1,417 unlabeled, 64 per step and rank


# ------------------------------------------------------------------ label propagation
def brute_lp(x: np.ndarray, labeled: np.ndarray, labels: np.ndarray, k: int, classes: int):
    """Eq. 8-10 written out densely: union kNN graph, exact solve, clip, l1, entropy weights."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = u @ u.T
    a = np.zeros_like(cos)
    for i in range(len(x)):
        nbrs = [j for j in np.argsort(-cos[i], kind="stable") if j != i][:k]
        a[i, nbrs] = np.maximum(cos[i, nbrs], 0) ** 3
    w = a + a.T
    inv = 1 / np.sqrt(w.sum(1))
    y = np.zeros((len(x), classes))
    y[labeled, labels] = 1
    z = np.maximum(np.linalg.solve(np.eye(len(x)) - 0.99 * inv[:, None] * w * inv[None, :], y), 0)
    p = z / z.sum(1, keepdims=True)
    weights = 1 - (-(p * np.log(np.maximum(p, 1e-300))).sum(1)) / np.log(classes)
    return p.argmax(1), weights


def test_propagation_state_on_a_tiny_graph_equals_eq_8_to_10_by_hand():
    # two arcs of the unit circle, one labeled point on each
    angles = np.array([0.0, 0.2, 0.4, 1.2, 1.4, 1.57])
    x = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    labeled, labels = np.array([0, 5]), np.array([0, 1])
    model = lp_semi(num_classes=2, k=3)  # the third neighbour of 2 and of 3 crosses the arcs
    pool = ActivePool(6, 2)
    pool.label(labeled, labels)
    model._trainer = SimpleNamespace(datamodule=SimpleNamespace(pool=pool), is_global_zero=True,
                                     strategy=SimpleNamespace(broadcast=lambda obj, src: obj))
    model.pool_features = lambda: torch.from_numpy(x)
    model.reset_sample_state(6, pool.unlabeled_indices)
    assert model.unlabeled_weights(np.arange(1, 5)).tolist() == [1, 1, 1, 1]  # before LP: uniform
    model.update_pseudo_labels()

    pseudo, weights = brute_lp(x.astype(np.float64), labeled, labels, 3, 2)
    pseudo[labeled], weights[labeled] = labels, 1.0
    assert model.pseudo_labels.tolist() == pseudo.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.allclose(model.weights.numpy(), weights, atol=1e-5)
    assert 0 < weights[1:5].min() < weights[1:5].max() < 1  # a graded, not a saturated, example
    assert np.allclose(model.unlabeled_weights(np.array([4, 1])), weights[[4, 1]], atol=1e-5)
    state = model.sample_state()
    assert torch.equal(state["pseudo_labels"], model.pseudo_labels) and torch.equal(state["weights"], model.weights)


# ------------------------------------------------------------------ the step
def encoded(logits: list[list[float]]) -> torch.Tensor:
    """Images whose first pixel row carries the logits the stub network returns."""
    x = torch.zeros(len(logits), 1, 8, 8)
    x[:, 0, 0, :2] = torch.tensor(logits)
    return x


@pytest.mark.parametrize("warmup_epochs", [0, 1])
def test_warm_up_ignores_the_unlabeled_batch_and_semi_averages_ce_over_the_whole_batch(warmup_epochs):
    model = lp_semi(num_classes=2, warmup_epochs=warmup_epochs)  # no trainer: current_epoch is 0
    model.model.embed = lambda x: x[:, 0, 0, :2]
    model.model.classify = lambda z: z
    model.reset_sample_state(12, np.arange(2, 12))
    model.pseudo_labels[torch.tensor([5, 8, 9])] = torch.tensor([1, 0, 1])
    model.weights[torch.tensor([5, 8, 9])] = torch.tensor([0.2, 0.5, 0.9])  # enter sampling, never the loss
    model.sampling_weights = model.weights
    logits_x, logits_u = [[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.5, 0.5], [0.0, 3.0]]
    batch = {"labeled": {"weak": encoded(logits_x), "target": torch.tensor([0, 1]), "index": torch.tensor([0, 1])},
             "unlabeled": {"weak": encoded(logits_u), "index": torch.tensor([5, 8, 9])}}
    loss = model.training_step(batch, 0)
    ce = lambda logit, y: -logit[y] + math.log(sum(math.exp(v) for v in logit))  # noqa: E731
    labeled_terms = [ce(logits_x[0], 0), ce(logits_x[1], 1)]
    unlabeled_terms = [ce(logits_u[0], 1), ce(logits_u[1], 0), ce(logits_u[2], 1)]
    expected = sum(labeled_terms) / 2 if warmup_epochs else sum(labeled_terms + unlabeled_terms) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ a real fit
class DrawRecorder(L.Callback):
    def __init__(self) -> None:
        self.draws: dict[int, list[int]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.draws.setdefault(trainer.current_epoch, []).extend(batch["unlabeled"]["index"].tolist())


@pytest.mark.parametrize("warmup_epochs, num_workers", [(0, 0), (1, 0), (0, 1)])
def test_fit_on_digits_propagates_every_semi_epoch_and_samples_by_the_weights(monkeypatch, warmup_epochs,
                                                                             num_workers):
    # a worker draws the first epoch's indices when Lightning creates the iterator, after on_fit_start
    # but before on_train_epoch_start (scheduler none: configure_optimizers does not iterate earlier)
    dm = digits_module(num_workers)
    support = dm.pool.unlabeled_indices[::40]  # 36 of 1,417 unlabeled ids keep a weight
    returned = []

    def kernel_with_sparse_weights(*args):
        probs, pseudo, weights = label_propagation(*args)
        sparse = np.where(dm.pool.labeled_mask, weights, 0.0)
        sparse[support] = weights[support] + 1e-3
        returned.append((pseudo, sparse))
        return probs, pseudo, sparse

    monkeypatch.setattr(lp_semi_module, "label_propagation", kernel_with_sparse_weights)
    model = lp_semi(warmup_epochs=warmup_epochs, k=10, scheduler="none")
    recorder = DrawRecorder()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[recorder])
    trainer.fit(model, datamodule=dm)

    assert trainer.global_step == 6 and len(returned) == 2 - warmup_epochs
    semi_epochs = [0, 1][warmup_epochs:]
    for epoch in semi_epochs:  # drawn only where LP left weight, the first epoch included
        assert np.isin(recorder.draws[epoch], support).all()
    if warmup_epochs:
        assert not np.isin(recorder.draws[0], support).all()  # warm-up draws uniformly
    state = model.sample_state()
    labeled = dm.pool.labeled_indices
    assert np.array_equal(state["pseudo_labels"][labeled].numpy(), dm.pool.labels_of(labeled))
    assert (state["weights"][labeled] == 1).all()
    assert np.array_equal(state["pseudo_labels"].numpy(), returned[-1][0])
    assert np.array_equal(state["weights"].numpy(), returned[-1][1].astype(np.float32))
    assert model.sampling_weights is None  # the next fit starts sampling uniformly


def test_fit_passes_the_graph_hyper_parameters_to_the_kernel(monkeypatch):
    seen = []
    monkeypatch.setattr(lp_semi_module, "label_propagation",
                        lambda *args: seen.append(args[4:]) or label_propagation(*args))
    model = lp_semi(k=7, alpha=0.9, gamma=2.0, graph="mutual", cg_iterations=5)
    model._trainer = SimpleNamespace(datamodule=SimpleNamespace(pool=ActivePool(30, 10)), is_global_zero=True,
                                     strategy=SimpleNamespace(broadcast=lambda obj, src: obj))
    model._trainer.datamodule.pool.label(np.arange(10), np.arange(10))
    model.pool_features = lambda: torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    model.update_pseudo_labels()
    assert seen == [(7, 0.9, 2.0, 5, "mutual")]


# ------------------------------------------------------------------ CEAL
def entropy_row(target: float, label: int, classes: int = 3) -> list[float]:
    """A distribution peaked on ``label`` whose entropy / log(classes) is ``target`` (bisection)."""
    lo, hi = 0.0, 1.0 / classes
    for _ in range(100):
        eps = (lo + hi) / 2
        p = np.full(classes, eps)
        p[label] = 1 - eps * (classes - 1)
        value = -(p * np.log(p)).sum() / np.log(classes)
        lo, hi = (eps, hi) if value < target else (lo, eps)
    return p.tolist()


class LogProbabilities(torch.nn.Module):
    """A model whose "images" are log-probabilities: its softmax gives them back."""

    fc = torch.nn.Identity()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return features


def ceal_context(cycle: int) -> AcquisitionContext:
    pool = ActivePool(8, 3)
    pool.label([0, 1], [2, 2])
    probs = torch.tensor([
        [1.0, 0.0, 0.0],        # ids 0, 1: labeled
        [1.0, 0.0, 0.0],
        entropy_row(0.01, 1),   # id 2: certain
        [0.4, 0.3, 0.3],        # id 3: the most uncertain
        entropy_row(0.098, 2),  # id 4: certain at cycle 0 (0.1), not at cycle 10 (0.0967)
        entropy_row(0.001, 0),  # id 5: certain, but acquired
        [0.6, 0.3, 0.1],        # id 6: uncertain
        entropy_row(0.2, 0),    # id 7: above every threshold
    ], dtype=torch.float64)

    def loader_for(ids):  # one batch, through the real pool inference
        return [{"plain": probs[torch.as_tensor(ids)].log().float()}]

    return AcquisitionContext(pool, LogProbabilities(), loader_for, torch.device("cpu"), cycle=cycle)


def test_ceal_pseudo_labels_are_the_certain_unpicked_unlabeled_ids_with_argmax_labels():
    ceal = CEAL()
    assert ceal.threshold(0) == 0.1 and ceal.threshold(10) == pytest.approx(0.1 - 10 * 0.00033)
    context = ceal_context(cycle=0)
    picks = ceal.select(context, 2)
    assert sorted(picks.tolist()) == [3, 6]  # top-2 entropy
    ids, labels = ceal.pseudo_labels(context, np.array([5, 3]))
    assert ids.tolist() == [2, 4] and labels.tolist() == [1, 2]
    ids, labels = ceal.pseudo_labels(ceal_context(cycle=10), np.array([5, 3]))  # delta decayed below 0.098
    assert ids.tolist() == [2] and labels.tolist() == [1]
    ids, _ = ceal.pseudo_labels(ceal_context(cycle=0), np.array([], dtype=np.int64))
    assert ids.tolist() == [2, 4, 5]  # 5 is certain; only the picks kept it out; 0, 1 are labeled
