"""FA's feature re-alignment and AS3L's prior-pseudo-label guidance, as parts of the FixMatch family."""

import math
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from al_lightning.data import ActiveDataModule
from al_lightning.methods import METHODS, FixMatch
from al_lightning.methods.inference import pool_inference
from al_lightning.methods.parts.base import PseudoLabelStep
from al_lightning.methods.parts.feature_realignment import (FeatureRealignment, LabeledFeatureQueues, invariance_loss,
                                                            similarity_loss)
from al_lightning.methods.parts.prior_guidance import PriorGuidance
from al_lightning.ops import prior_pseudo_labels

FAMILY = ["fixmatch", "flexmatch", "freematch"]


def _unit(*v):
    return torch.tensor(v, dtype=torch.float32) / math.hypot(*v)


def _onehot(k, d=8):
    return torch.eye(d)[k]


# ------------------------------------------------------------------ FA queues and L_s (Eq. 11-12)
def test_similarity_loss_matches_on_the_strong_queue_and_pulls_towards_its_weak_feature():
    queues = LabeledFeatureQueues(torch.tensor([5, 9]), pool_size=12, dim=2, length=3)
    # one batch, each id three times: occurrences fill slots 0, 1, 2; the last weak feature stays
    index = torch.tensor([5, 9, 5, 9, 5, 9])
    strong = torch.tensor([[1.0, 1.0], [0.0, -1.0], [0.0, 1.0], [1.0, 0.1], [-1.0, 0.0], [0.0, 1.0]])
    weak = torch.tensor([[9.0, 9.0], [9.0, 9.0], [9.0, 9.0], [9.0, 9.0], [1.0, 0.0], [3.0, 4.0]])
    queues.push(index, weak, strong)
    z_strong = torch.tensor([[1.0, 0.0], [-1.0, 0.05]])
    z_weak = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    # sample 0: best strong match is id 9's (1, 0.1) (cos 0.995 > id 5's best 0.707), although
    # its weak feature agrees with id 5's weak (1, 0): 1 - cos((2,0), (3,4)/5) = 0.4.
    # sample 1: id 5's (-1, 0) (cos 0.999); 1 - cos((0,2), (1,0)) = 1.
    assert queues.nearest_rows(z_strong).tolist() == [1, 0]
    assert similarity_loss(z_weak, z_strong, queues).item() == pytest.approx((0.4 + 1.0) / 2, abs=1e-6)


def test_unfilled_slots_and_never_pushed_samples_are_never_matched():
    queues = LabeledFeatureQueues(torch.tensor([3, 5, 9]), pool_size=12, dim=2, length=3)
    queues.push(torch.tensor([5, 9]), torch.ones(2, 2), torch.tensor([[-1.0, 0.2], [-1.0, -1.0]]))
    assert queues.strong_filled().tolist() == [[False] * 3, [True, False, False], [True, False, False]]
    # both filled entries point away from the query (cos -0.98, -0.71); an empty slot (cos 0) would win
    assert queues.nearest_rows(torch.tensor([[1.0, 0.0], [1.0, 0.3]])).tolist() == [2, 2]


def test_strong_queue_is_a_ring_of_the_last_t_pushes_and_weak_queue_keeps_the_last_write():
    queues = LabeledFeatureQueues(torch.tensor([5, 9]), pool_size=12, dim=8, length=3)
    queues.push(torch.tensor([5, 5]), torch.stack([_onehot(0), _onehot(1)]), torch.stack([_onehot(0), _onehot(1)]))
    weak = torch.stack([_onehot(7), _onehot(5), _onehot(6), 2 * _onehot(4)])
    queues.push(torch.tensor([9, 5, 5, 5]), weak, torch.stack([_onehot(7), _onehot(2), _onehot(3), _onehot(4)]))
    # id 5's five pushes went to slots 0, 1, 2, 0, 1: the ring holds pushes 4, 5, 3
    assert torch.equal(queues.strong[0], torch.stack([_onehot(3), _onehot(4), _onehot(2)]))
    assert torch.equal(queues.weak[0], _onehot(4)) and torch.equal(queues.weak[1], _onehot(7))
    # five occurrences of id 9 in one batch after one push: slots 1, 2, 0, 1, 2; the later ones win
    queues.push(torch.tensor([9] * 5), torch.eye(8)[:5], torch.eye(8)[:5])
    assert torch.equal(queues.strong[1], torch.stack([_onehot(2), _onehot(3), _onehot(4)]))
    assert queues.pushes.tolist() == [5, 6] and torch.equal(queues.weak[1], _onehot(4))
    with pytest.raises(ValueError, match="unlabeled"):
        queues.push(torch.tensor([4]), torch.ones(1, 8), torch.ones(1, 8))


def test_vectorised_pushes_equal_a_sequential_replay_entry_by_entry():
    rng = np.random.default_rng(0)
    ids, length, dim = np.array([2, 4, 7]), 4, 5
    queues = LabeledFeatureQueues(torch.from_numpy(ids), pool_size=10, dim=dim, length=length)
    rings = {i: [] for i in ids}
    last_weak = {}
    for _ in range(12):
        index = torch.from_numpy(rng.choice(ids, size=int(rng.integers(1, 9))))
        weak, strong = torch.randn(len(index), dim), torch.randn(len(index), dim)
        queues.push(index, weak, strong)
        for i, w, s in zip(index.tolist(), weak, strong):
            rings[i].append(s / s.norm())
            last_weak[i] = w / w.norm()
    for row, i in enumerate(ids):
        pushed = rings[i]
        assert queues.pushes[row] == len(pushed)
        for t in range(min(len(pushed), length)):
            # slot t holds the latest push k with k % T == t
            latest = max(k for k in range(len(pushed)) if k % length == t)
            assert torch.allclose(queues.strong[row, t], pushed[latest], atol=1e-6)
        assert torch.allclose(queues.weak[row], last_weak[i], atol=1e-6)


# ------------------------------------------------------------------ FA L_c (Eq. 17-18)
def _invariance_by_hand(strong, weak, eps=1e-5):
    total = 0.0
    n, d = strong.shape
    for i in range(d):
        a, b = strong[:, i].tolist(), weak[:, i].tolist()
        mean_a, mean_b = sum(a) / n, sum(b) / n
        std_a = math.sqrt(sum((x - mean_a) ** 2 for x in a) / n + eps)
        std_b = math.sqrt(sum((x - mean_b) ** 2 for x in b) / n + eps)
        c = sum((x - mean_a) / std_a * (y - mean_b) / std_b for x, y in zip(a, b)) / n
        total += (1.0 - c) ** 2
    return total


def test_invariance_loss_is_barlow_twins_diagonal_term():
    torch.manual_seed(0)
    strong, weak = torch.randn(6, 4), torch.randn(6, 4)
    assert invariance_loss(strong, weak).item() == pytest.approx(_invariance_by_hand(strong, weak), rel=1e-5)
    # identical views: every C_ii = 1; opposite views: every C_ii = -1, so 4 per dimension
    assert invariance_loss(weak, weak).item() == pytest.approx(0.0, abs=1e-4)
    assert invariance_loss(-weak, weak).item() == pytest.approx(16.0, rel=1e-4)
    # a per-dimension affine rescaling changes no correlation
    scaled = strong * torch.tensor([2.0, 0.5, 3.0, 10.0]) + torch.tensor([1.0, -4.0, 0.0, 7.0])
    assert invariance_loss(scaled, weak).item() == pytest.approx(invariance_loss(strong, weak).item(), rel=1e-4)


def _step(index_l, feats_l, feats_ls, index_u, feats_w, feats_s):
    n_u = len(index_u)
    return PseudoLabelStep(index_l, torch.zeros(len(index_l), dtype=torch.int64), feats_l, feats_ls, index_u,
                           feats_w, feats_s, torch.zeros(n_u, 3), torch.zeros(n_u, 3), torch.zeros(n_u, 3),
                           torch.zeros(n_u, 3), torch.zeros(n_u), 0)


def _small_fixmatch(**kwargs):
    return FixMatch(backbone="small_cnn", num_classes=3, in_channels=1, backbone_kwargs={"width": 4}, **kwargs)


def test_similarity_loss_gradient_reaches_only_the_unlabeled_weak_features():
    model = _small_fixmatch()
    part = FeatureRealignment(queue_length=2)
    part.reset(model, 20, np.arange(4, 20))
    feats = [torch.randn(n, 16, requires_grad=True) for n in (3, 3, 5, 5)]
    losses = part.losses(model, _step(torch.tensor([0, 1, 0]), feats[0], feats[1], torch.arange(5) + 10,
                                      feats[2], feats[3]))
    grads = torch.autograd.grad(losses["loss_fa_s"], feats, allow_unused=True)
    assert grads[2] is not None and grads[2].abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for i, g in enumerate(grads) if i != 2)
    # L_c moves both unlabeled views and neither labeled one
    grads = torch.autograd.grad(losses["loss_fa_c"], feats, allow_unused=True)
    assert grads[0] is None and grads[1] is None and grads[2].abs().sum() > 0 and grads[3].abs().sum() > 0


def _mock_backbone(model, dim=16, classes=3, seed=0):
    """Per-sample features and logits independent of the batch they share (no BatchNorm), so the
    step with and without labeled strong images sees the same features for the same images."""
    gen = torch.Generator().manual_seed(seed)
    project, head = torch.randn(64, dim, generator=gen), torch.randn(dim, classes, generator=gen)
    model.model.embed = lambda x: x.flatten(1) @ project
    model.model.classify = lambda z: z @ head


def _family_batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    image = lambda n: torch.randn(n, 1, 8, 8, generator=gen)  # noqa: E731
    return {"labeled": {"weak": image(4), "strong": image(4), "target": torch.tensor([0, 1, 0, 2]),
                        "index": torch.tensor([3, 1, 3, 0])},
            "unlabeled": {"weak": image(6), "strong": image(6), "index": torch.arange(6) + 10}}


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("weights", [(0.5, 0.25), (1.0, None)])
def test_feature_realignment_adds_its_two_weighted_terms_to_the_family_loss(name, weights):
    w_s, w_c = weights
    method = METHODS.get(name)
    plain = method(backbone="small_cnn", num_classes=3, in_channels=1, backbone_kwargs={"width": 4}, threshold=0.0)
    with_fa = method(backbone="small_cnn", num_classes=3, in_channels=1, backbone_kwargs={"width": 4}, threshold=0.0,
                     parts=[FeatureRealignment(weight_similarity=w_s, weight_contrastive=w_c)])
    assert with_fa.labeled_views == ("weak", "strong") and plain.labeled_views == ("weak",)
    for model in (plain, with_fa):
        _mock_backbone(model)
        model.reset_sample_state(20, np.arange(5, 20))
    batch = _family_batch()
    base = plain.training_step(batch, 0)["loss"].item()
    total = with_fa.training_step(batch, 0)["loss"].item()

    embed = with_fa.model.embed
    labeled_w, labeled_s = embed(batch["labeled"]["weak"]), embed(batch["labeled"]["strong"])
    unlabeled_w, unlabeled_s = embed(batch["unlabeled"]["weak"]), embed(batch["unlabeled"]["strong"])
    cos = lambda a, b: (a @ b / (a.norm() * b.norm())).item()  # noqa: E731
    ids = batch["labeled"]["index"].tolist()
    last_weak = {i: labeled_w[k] for k, i in enumerate(ids)}
    l_s = 0.0
    for j in range(6):
        best = max(range(len(ids)), key=lambda k: cos(unlabeled_s[j], labeled_s[k]))  # every push is queued (T=10)
        l_s += (1.0 - cos(unlabeled_w[j], last_weak[ids[best]])) / 6
    l_c = _invariance_by_hand(unlabeled_s.detach(), unlabeled_w.detach())
    expected_w_c = 1.0 / 16 if w_c is None else w_c
    assert total == pytest.approx(base + w_s * l_s + expected_w_c * l_c, rel=1e-5)
    state = with_fa.sample_state()
    assert state["parts.0.FeatureRealignment.queue_pushes"].tolist()[:4] == [1, 1, 0, 2]  # rows of ids 0, 1, 2, 3

    del batch["labeled"]["strong"]
    with pytest.raises(ValueError, match="'strong' view"):
        with_fa.training_step(batch, 0)


# ------------------------------------------------------------------ PPL guidance (Eq. 4-5)
PRIOR = torch.tensor([[0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0]])


@pytest.fixture
def prior_file(tmp_path):
    path = tmp_path / "prior.pt"
    torch.save(PRIOR, path)
    return str(path)


def test_guide_mixes_the_prior_for_the_first_t_steps_only(prior_file):
    part = PriorGuidance(switch_step=5, prior_file=prior_file)
    part.reset(_small_fixmatch(), 4, np.array([0, 2]))
    targets = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    post = part.guide(targets, torch.tensor([0, 2]), step=4)
    # (y_prior + y)/2: row 0 = (0.25, 0.65, 0.10), argmax flips from class 0 to the prior's class 1
    assert torch.allclose(post, torch.tensor([[0.25, 0.65, 0.10], [0.15, 0.15, 0.70]]))
    assert torch.equal(part.guide(targets, torch.tensor([0, 2]), step=5), targets)
    assert torch.equal(part.state()["prior"], PRIOR)


LOGITS_X = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
LOGITS_W = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))  # targets of ids 0 and 2 above
LOGITS_S = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 0.0]])


def _guided_step(model):
    """One training step of ``model`` on a batch with the logits above (unlabeled ids 0 and 2)."""
    model.model.embed = lambda x: torch.zeros(x.shape[0], 16)
    model.model.classify = lambda z: torch.cat([LOGITS_X, LOGITS_W, LOGITS_S])
    batch = {"labeled": {"weak": torch.zeros(2, 1, 8, 8), "target": torch.tensor([0, 2]),
                         "index": torch.tensor([1, 3])},
             "unlabeled": {"weak": torch.zeros(2, 1, 8, 8), "strong": torch.zeros(2, 1, 8, 8),
                           "index": torch.tensor([0, 2])}}
    return model.training_step(batch, 0)  # step 0: the prior is used when switch_step >= 1


@pytest.mark.parametrize("switch_step, mask, pseudo", [(1, [1.0, 1.0], [1, 2]), (0, [0.0, 1.0], [0, 2])])
def test_the_threshold_applies_to_the_posterior_pseudo_label(prior_file, switch_step, mask, pseudo):
    model = _small_fixmatch(threshold=0.6, parts=[PriorGuidance(switch_step=switch_step, prior_file=prior_file)])
    model.reset_sample_state(4, np.array([0, 2]))
    out = _guided_step(model)
    ce = lambda logit, y: -logit[y] + math.log(sum(math.exp(v) for v in logit))  # noqa: E731
    loss_x = (ce([1.0, 0.0, 0.0], 0) + ce([0.0, 0.0, 2.0], 2)) / 2
    loss_u = sum(m * ce(s, y) for m, s, y in zip(mask, LOGITS_S.tolist(), pseudo)) / 2
    # y_post maxima 0.65 and 0.70 pass tau = 0.6; the raw prediction's 0.5 does not
    assert out["unlabeled"]["mask"].tolist() == mask
    assert out["loss"].item() == pytest.approx(loss_x + loss_u, rel=1e-6)


@pytest.mark.parametrize("name", FAMILY)
def test_every_family_member_masks_the_posterior(name, prior_file):
    model = METHODS.get(name)(backbone="small_cnn", num_classes=3, in_channels=1, backbone_kwargs={"width": 4},
                              parts=[PriorGuidance(switch_step=1, prior_file=prior_file)])
    model.reset_sample_state(4, np.array([0, 2]))
    seen, masking = [], model.masking
    model.masking = lambda targets, index: seen.append(targets) or masking(targets, index)
    _guided_step(model)
    assert torch.allclose(seen[0], torch.tensor([[0.25, 0.65, 0.10], [0.15, 0.15, 0.70]]))


def test_prior_and_feature_files_are_validated(tmp_path, prior_file):
    model = _small_fixmatch()
    np.save(tmp_path / "prior.npy", PRIOR.numpy())
    part = PriorGuidance(prior_file=str(tmp_path / "prior.npy"))
    part.reset(model, 4, np.array([0]))
    assert torch.equal(part.prior, PRIOR)
    torch.save(PRIOR[:, :2], tmp_path / "narrow.pt")
    torch.save({"prior": PRIOR}, tmp_path / "dict.pt")
    for name, error, words in [("narrow.pt", ValueError,
                                r"prior_file: .*narrow.pt has shape \(4, 2\), expected \(4, 3\)"),
                               ("missing.pt", FileNotFoundError, "prior_file: no file at .*missing.pt"),
                               ("dict.pt", ValueError, "prior_file: .*dict.pt holds a dict")]:
        with pytest.raises(error, match=words):
            PriorGuidance(prior_file=str(tmp_path / name)).reset(model, 4, np.array([0]))
    with pytest.raises(ValueError, match=r"features: .*prior.pt has shape \(4, 3\), expected \(5, d\)"):
        PriorGuidance(features=prior_file).reset(_stub_method(None, num_classes=3), 5, np.array([0]))
    with pytest.raises(RuntimeError, match="inside a fit"):
        PriorGuidance(features="pixels").reset(model, 4, np.array([0]))


def _stub_method(dm, num_classes=10):
    """What PriorGuidance.reset reads of a method: its trainer's data module, rank and broadcast."""
    trainer = SimpleNamespace(datamodule=dm, is_global_zero=True,
                              strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))
    return SimpleNamespace(_trainer=trainer, device=torch.device("cpu"), num_classes=num_classes)


RUNS = [10, 30]  # two of the default six k-means runs keep the digits tests fast


def _pixels(dm):
    return dm.views["plain"](dm.splits.train_images).flatten(1)


def test_pixel_prior_on_digits_uses_pool_labels_of_labeled_ids_only(tmp_path):
    dm = ActiveDataModule("digits", num_workers=0)
    dm.setup()
    ids = np.random.default_rng(0).choice(dm.pool.size, 30, replace=False)
    labels = dm.ground_truth(ids)
    labels[0] = (labels[0] + 1) % 10  # the pool's label, not the truth, is what the prior spreads
    dm.pool.label(ids, labels)
    part = PriorGuidance(features="pixels", cluster_counts=RUNS)
    part.reset(_stub_method(dm), dm.pool.size, dm.pool.unlabeled_indices)
    prior = part.prior
    assert prior.shape == (dm.pool.size, 10) and bool((prior >= 0).all())
    assert torch.allclose(prior.sum(1), torch.ones(dm.pool.size), atol=1e-6)
    assert torch.equal(prior[ids], torch.eye(10)[labels])  # labeled ids stay in their class's clusters
    expected = prior_pseudo_labels(_pixels(dm).numpy(), dm.pool.labeled_indices,
                                   dm.pool.labels_of(dm.pool.labeled_indices), 10, RUNS)
    assert torch.allclose(prior, torch.from_numpy(expected).float())
    assert 0.3 < prior.max(1).values.mean() < 1.0  # far samples get lower confidence

    unlabeled = dm.pool.unlabeled_indices
    dm.splits.train_targets[unlabeled] = (dm.splits.train_targets[unlabeled] + 3) % 10
    again = PriorGuidance(features="pixels", cluster_counts=RUNS)
    again.reset(_stub_method(dm), dm.pool.size, unlabeled)
    assert torch.equal(again.prior, prior)

    np.save(tmp_path / "pixels.npy", _pixels(dm).numpy())
    from_file = PriorGuidance(features=str(tmp_path / "pixels.npy"), cluster_counts=RUNS)
    from_file.reset(_stub_method(dm), dm.pool.size, unlabeled)
    assert torch.equal(from_file.prior, prior)


@pytest.mark.parametrize("features", ["pixels", "embedding"])
def test_parts_inside_a_fit_reset_and_save_their_state(features):
    L.seed_everything(0)
    dm = ActiveDataModule("digits", batch_size=4, uratio=2, steps_per_epoch=3, num_workers=0)
    dm.setup()
    ids = np.random.default_rng(1).choice(dm.pool.size, 12, replace=False)
    dm.pool.label(ids, dm.ground_truth(ids))
    model = FixMatch(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4},
                     parts=[FeatureRealignment(queue_length=3),
                            PriorGuidance(switch_step=2, features=features, cluster_counts=[20])])
    pool_features = _pixels(dm) if features == "pixels" else \
        pool_inference(model.inference_model, dm.inference_dataloader, np.arange(dm.pool.size), torch.device("cpu"),
                       outputs=("embeddings",))["embeddings"]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    state = model.sample_state()
    assert state["parts.0.FeatureRealignment.labeled_ids"].tolist() == sorted(ids.tolist())
    assert int(state["parts.0.FeatureRealignment.queue_pushes"].sum()) == 3 * 4
    labeled = dm.pool.labeled_indices
    expected = prior_pseudo_labels(pool_features.numpy(), labeled, dm.pool.labels_of(labeled), 10, [20])
    assert torch.allclose(state["parts.1.PriorGuidance.prior"], torch.from_numpy(expected).float())
