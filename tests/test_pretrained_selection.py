"""Fits start from a pre-training run's backbone; single-shot strategies select on its cached
features by default and refuse to select on a random network."""

import numpy as np
import pytest
import torch

from al_lightning.data import ActiveDataModule
from al_lightning.loop import ActiveLoop
from al_lightning.methods import Supervised
from al_lightning.models import create_backbone
from al_lightning.ops import k_medoids
from al_lightning.pretrain.outputs import BACKBONE_FILE, FEATURES_FILE, save_features, save_state
from al_lightning.strategies import KMedoids, Random, RandomNetworkError, USL

SMALL = {"backbone": "small_cnn", "num_classes": 10, "in_channels": 1, "backbone_kwargs": {"width": 4}}


@pytest.fixture
def pretrain_run(tmp_path):
    """A stand-in pre-training run: a backbone and features that put the pool on 10 far-apart points."""
    torch.manual_seed(1)
    backbone = create_backbone("small_cnn", 10, 1, width=4)
    save_state(tmp_path / BACKBONE_FILE, backbone.state_dict())
    dm = ActiveDataModule("digits", num_workers=0)
    dm.setup()
    truth = torch.as_tensor(dm.ground_truth(np.arange(dm.pool.size)))
    features = torch.nn.functional.one_hot(truth, 10).float() * 10 + 0.01 * torch.randn(dm.pool.size, 10)
    save_features(tmp_path / FEATURES_FILE, features)
    return tmp_path, backbone, features


def test_a_single_shot_strategy_refuses_a_random_network():
    model = Supervised(**SMALL)
    loop = ActiveLoop(initial_size=10, initial_strategy=USL(k=20))
    dm = ActiveDataModule("digits", num_workers=0)
    dm.setup()
    with pytest.raises(RandomNetworkError, match="al-lightning pretrain.*features: pixels"):
        loop._initial_ids(dm.pool, model, dm)


def test_single_shot_strategies_select_on_the_cached_pretrained_features(pretrain_run):
    run, backbone, features = pretrain_run
    model = Supervised(**SMALL, pretrained=str(run))
    for student, teacher, saved in zip(model.model.parameters(), model.ema.module.parameters(), backbone.parameters()):
        assert torch.equal(student, saved) and torch.equal(teacher, saved)
    dm = ActiveDataModule("digits", num_workers=0)
    dm.setup()
    picks = ActiveLoop(initial_size=10, initial_strategy=KMedoids(), seed=3)._initial_ids(dm.pool, model, dm)
    expected = k_medoids(features, 10, 10, seed=int(np.random.default_rng([3, 0]).integers(2**31)))
    assert sorted(picks.tolist()) == sorted(expected.tolist())
    # the features put each class on its own point: ten medoids cover the ten classes
    assert len(set(dm.ground_truth(picks).tolist())) == 10


def test_random_init_reloads_the_pretrained_backbone_every_fit(pretrain_run, tmp_path):
    import lightning as L

    run, backbone, _ = pretrain_run
    seen = []

    class FirstWeights(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            seen.append(next(pl_module.model.parameters()).detach().clone())

    model = Supervised(**SMALL, pretrained=str(run), scheduler="none")
    dm = ActiveDataModule("digits", batch_size=4, uratio=0, steps_per_epoch=2, num_workers=0)
    make = lambda: L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,  # noqa: E731
                             enable_progress_bar=False, default_root_dir=tmp_path / "out", limit_val_batches=0,
                             callbacks=[FirstWeights()], use_distributed_sampler=False)
    ActiveLoop(rounds=1, budget=5, initial_size=10, initial_strategy=KMedoids(), strategy=Random()).run(model, dm, make)
    assert len(seen) == 2 and all(torch.equal(w, next(backbone.parameters())) for w in seen)


def test_a_missing_pretraining_run_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.init_args.pretrained: .* does not exist"):
        Supervised(**SMALL, pretrained=str(tmp_path / "nowhere"))


def test_prior_guidance_clusters_the_pretrained_features_finetuned_by_eq6(pretrain_run):
    from al_lightning.methods import FixMatch
    from al_lightning.methods.parts import PriorGuidance
    from al_lightning.ops import finetune_features, prior_pseudo_labels

    run, _, features = pretrain_run
    part = PriorGuidance(features="pretrained", finetune=True, cluster_counts=[10, 20], seed=0)
    model = FixMatch(**SMALL, pretrained=str(run), parts=[part])
    dm = ActiveDataModule("digits", num_workers=0)
    dm.setup()
    labeled = np.random.default_rng(0).choice(dm.pool.size, 20, replace=False)
    dm.pool.label(labeled, dm.ground_truth(labeled))

    class Strategy:
        @staticmethod
        def broadcast(obj, src=0):
            return obj

    class Trainer:  # what reset() reads of a trainer, on one process
        is_global_zero, datamodule, strategy = True, dm, Strategy()

    model._trainer = Trainer()
    part.reset(model, dm.pool.size, dm.pool.unlabeled_indices)
    fine = finetune_features(features, num_clusters=20, seed=0)[0]
    labeled = np.sort(labeled)
    expected = prior_pseudo_labels(fine.numpy(), labeled, dm.pool.labels_of(labeled), 10, [10, 20], seed=0)
    assert np.allclose(part.prior.numpy(), expected, atol=1e-6)
    # the pre-trained features separate the classes: the prior is right on every unlabeled sample
    # of a class that has a label (a class without one cannot be named)
    unlabeled = dm.pool.unlabeled_indices
    truth = dm.ground_truth(unlabeled)
    named = np.isin(truth, dm.pool.labels_of(labeled))
    assert (part.prior[unlabeled[named]].argmax(1).numpy() == truth[named]).mean() > 0.99


def test_a_strategy_selects_on_a_named_runs_features_while_the_model_stays_random(pretrain_run, tmp_path):
    """USL's setting: features of one self-supervised run select, the fit starts from scratch."""
    run, _, features = pretrain_run
    model = Supervised(**SMALL)  # no pre-trained weights
    dm = ActiveDataModule("digits", num_workers=0)
    dm.setup()
    picks = ActiveLoop(initial_size=10, initial_strategy=KMedoids(features=str(run)), seed=3)._initial_ids(
        dm.pool, model, dm)
    expected = k_medoids(features, 10, 10, seed=int(np.random.default_rng([3, 0]).integers(2**31)))
    assert sorted(picks.tolist()) == sorted(expected.tolist())
    with pytest.raises(FileNotFoundError, match="auto/pretrained/embedding/pixels"):
        ActiveLoop(initial_size=10, initial_strategy=KMedoids(features=str(tmp_path / "nowhere")))._initial_ids(
            dm.pool, model, dm)
    short = tmp_path / "short"
    save_features(short / FEATURES_FILE, features[:100])
    with pytest.raises(ValueError, match="pre-train on the same data section"):
        ActiveLoop(initial_size=10, initial_strategy=KMedoids(features=str(short)))._initial_ids(dm.pool, model, dm)
