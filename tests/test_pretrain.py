import math
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from al_lightning.cli import ActiveLearningCLI
from al_lightning.data import ActiveDataModule
from al_lightning.data.samplers import RepeatedPermutationSampler
from al_lightning.data.transforms import Normalize
from al_lightning.models import create_backbone
from al_lightning.pretrain import DeepCluster, PretrainDataModule, SimCLR, SimSiam
from al_lightning.pretrain.augment import ContrastiveView
from al_lightning.pretrain.data import ClusterUniformSampler
from al_lightning.pretrain.features import pca_whiten
from al_lightning.pretrain.knn import leave_one_out_knn_predict
from al_lightning.pretrain.outputs import load_backbone_state, load_features, save_state

TINY = {"backbone": "small_cnn", "num_classes": 10, "in_channels": 1, "backbone_kwargs": {"width": 4}}


def test_simsiam_loss_is_the_symmetric_negative_cosine_with_stop_gradient_on_z():
    model = SimSiam(**TINY, projection_dim=8, predictor_hidden_dim=4)
    p1 = torch.tensor([[1.0, 0.0], [1.0, 2.0]], requires_grad=True)
    p2 = torch.tensor([[0.0, 3.0], [2.0, -1.0]], requires_grad=True)
    z1 = torch.tensor([[1.0, 1.0], [0.0, 1.0]], requires_grad=True)
    z2 = torch.tensor([[3.0, 4.0], [1.0, 0.0]], requires_grad=True)
    loss = model.symmetric_loss(p1, p2, z1, z2)
    # cos(p1, z2) = [3/5, 1/sqrt5], cos(p2, z1) = [1/sqrt2, -1/sqrt5]; Eq. 2, averaged over the batch
    expected = -0.5 * ((3 / 5 + 1 / math.sqrt(5)) / 2 + (1 / math.sqrt(2) - 1 / math.sqrt(5)) / 2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert z1.grad is None and z2.grad is None  # sg(z): no gradient through the target branch
    # d/dp of -cos(p, z) / (2 B) = -(z / (|p||z|) - cos(p, z) p / |p|^2) / (2 B), B = 2
    p, z = np.array([1.0, 2.0]), np.array([1.0, 0.0])
    cos = p @ z / (np.linalg.norm(p) * np.linalg.norm(z))
    grad = -(z / (np.linalg.norm(p) * np.linalg.norm(z)) - cos * p / (p @ p)) / 4
    assert p1.grad[1].numpy() == pytest.approx(grad, rel=1e-5)


def test_simsiam_heads_are_the_papers_cifar_mlps():
    model = SimSiam(**TINY)
    linears = [m for m in model.projector.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for m in model.projector.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 2048), (2048, 2048)]
    assert len(norms) == 2 and norms[0].affine and not norms[1].affine
    assert not isinstance(list(model.projector.modules())[-1], torch.nn.ReLU)
    predictor = [m for m in model.predictor.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in predictor] == [(2048, 512), (512, 2048)]


def test_nt_xent_on_a_hand_made_two_image_batch():
    model = SimCLR(**TINY)
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # views a0, a1
    z2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]])  # views b0, b1 (unit after normalising)
    c = (1 / math.sqrt(2)) / 0.5  # a cosine of 1/sqrt2 over the temperature 0.5
    # anchor: -log exp(s_pos / T) / sum over the three other views of exp(s / T)
    l_a0 = -c + math.log(math.exp(0) + math.exp(c) + math.exp(c))  # a1: 0, b0: +c (positive), b1: +c
    l_a1 = c + math.log(math.exp(0) + math.exp(c) + math.exp(-c))  # a0: 0, b0: +c, b1: -c (positive)
    l_b0 = -c + math.log(math.exp(c) + math.exp(c) + math.exp(0))  # a0: +c (positive), a1: +c, b1: 0
    l_b1 = c + math.log(math.exp(c) + math.exp(-c) + math.exp(0))  # a0: +c, a1: -c (positive), b0: 0
    assert model.criterion(z1, z2).item() == pytest.approx((l_a0 + l_a1 + l_b0 + l_b1) / 4, rel=1e-6)


def _schedule(model, total_steps, max_epochs, steps):
    model._trainer = SimpleNamespace(estimated_stepping_batches=total_steps, max_epochs=max_epochs, world_size=2,
                                     datamodule=SimpleNamespace(batch_size=256))
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return optimizer


def test_simsiam_decays_all_but_the_predictor_learning_rate_and_decays_every_weight():
    model = SimSiam(**TINY, projection_dim=8, predictor_hidden_dim=4)
    optimizer = _schedule(model, total_steps=100, max_epochs=10, steps=50)  # half-way down the cosine
    predictor = {id(p) for p in model.predictor.parameters()}
    for group in optimizer.param_groups:
        fixed = all(id(p) in predictor for p in group["params"])
        assert group["lr"] == pytest.approx(0.03 * 512 / 256 * (1.0 if fixed else 0.5))
        assert group["weight_decay"] == 5e-4
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert predictor <= trained and not {id(p) for p in model.backbone.head().parameters()} & trained


def test_simclr_warms_up_with_lars_and_exempts_norms_and_biases_from_decay():
    model = SimCLR(**TINY, projection_dim=8)
    optimizer = _schedule(model, total_steps=1000, max_epochs=100, steps=50)  # 10 warm-up epochs = 100 steps
    assert type(optimizer).__name__ == "LARS"
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(1.0 * 512 / 256 * 50 / 100)
        assert group["weight_decay"] == (1e-4 if all(p.ndim > 1 for p in group["params"]) else 0.0)
        assert all(p.ndim > 1 for p in group["params"]) or all(p.ndim == 1 for p in group["params"])


def _clusters() -> np.ndarray:
    """1,000 ids in clusters of 3, 40 and 957 members (ids 0, 1, 4); clusters 2 and 3 are empty."""
    labels = np.repeat([0, 1, 4], [3, 40, 957])
    return np.random.default_rng(0).permutation(labels)


def _cluster_pvalue(stream: np.ndarray, labels: np.ndarray) -> float:
    counts = np.bincount(labels[stream], minlength=5)
    assert counts[2] == counts[3] == 0
    return chisquare(counts[[0, 1, 4]]).pvalue


def test_deepcluster_sampler_is_uniform_over_non_empty_clusters_then_within_them():
    labels = _clusters()
    ranks = [ClusterUniformSampler(600, seed=3, rank=r, world_size=2, assignments=lambda: labels) for r in (0, 1)]
    stream = ranks[0].global_stream().numpy()
    assert np.array_equal(np.sort(np.concatenate([list(s) for s in ranks])), np.sort(stream))
    assert _cluster_pvalue(stream, labels) > 0.01
    big = np.flatnonzero(labels == 4)
    draws = []
    for epoch in range(30):
        ranks[0].set_epoch(epoch)
        epoch_stream = ranks[0].global_stream().numpy()
        assert _cluster_pvalue(epoch_stream, labels) > 0.01
        draws.append(epoch_stream[labels[epoch_stream] == 4])
    per_member = np.bincount(np.concatenate(draws), minlength=len(labels))[big]
    assert chisquare(per_member).pvalue > 1e-3  # uniform within the cluster


def test_a_permutation_sampler_fails_the_cluster_uniformity_test():
    labels = _clusters()
    stream = RepeatedPermutationSampler(len(labels), 600, seed=3, rank=0, world_size=2).global_stream().numpy()
    assert _cluster_pvalue(stream, labels) < 1e-6


def test_pca_whitening_gives_identity_covariance_along_the_principal_axes():
    rng = np.random.default_rng(1)
    latent = rng.normal(size=(4000, 4)) * np.array([3.0, 2.0, 1.0, 0.5])
    rotation, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    x = torch.tensor(latent @ rotation.T + 5.0, dtype=torch.float64)
    white = pca_whiten(x, None)
    assert torch.allclose(white.T @ white / len(x), torch.eye(4, dtype=torch.float64), atol=1e-8)
    top2 = pca_whiten(x, 2)
    assert torch.allclose(top2.T @ top2 / len(x), torch.eye(2, dtype=torch.float64), atol=1e-8)
    for axis in range(2):  # the kept axes are the two of largest variance
        assert abs(np.corrcoef(top2[:, axis].numpy(), latent[:, axis])[0, 1]) > 0.99
    deficient = pca_whiten(torch.cat([x, x[:, :1]], dim=1), None)  # a copied column adds no axis
    assert deficient.shape == (4000, 4)
    assert torch.allclose(deficient.T @ deficient / len(x), torch.eye(4, dtype=torch.float64), atol=1e-6)


def test_knn_monitor_equals_a_brute_force_weighted_vote():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(60, 5))
    features[7] = features[3]  # a duplicate image: it must still vote for 3, and 3 for it
    labels = rng.integers(0, 3, size=60)
    k, temperature = 7, 0.1
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    expected = []
    for row in similarity:
        votes = np.zeros(3)
        for j in np.argsort(-row)[:k]:
            votes[labels[j]] += math.exp(row[j] / temperature)
        expected.append(int(np.argmax(votes)))
    predicted = leave_one_out_knn_predict(torch.tensor(features), torch.tensor(labels), 3, k, temperature)
    assert predicted.tolist() == expected


def test_a_checkpoint_round_trips_weights_only_into_a_fresh_backbone(tmp_path):
    torch.manual_seed(0)
    model = SimSiam(**TINY, projection_dim=8, predictor_hidden_dim=4)
    x = torch.randn(6, 1, 8, 8)
    model.backbone.embed(x * 3 + 1)  # move the BatchNorm running statistics off their defaults
    with torch.no_grad():
        for param in model.backbone.parameters():
            param.add_(0.1 * torch.randn_like(param))
    save_state(tmp_path / "backbone.pt", model.backbone.state_dict())
    fresh = create_backbone("small_cnn", 10, 1, width=4).eval()
    model.backbone.eval()
    assert not torch.allclose(fresh.embed(x), model.backbone.embed(x))
    fresh.load_state_dict(torch.load(tmp_path / "backbone.pt", weights_only=True))
    assert torch.equal(fresh.embed(x), model.backbone.embed(x)) and torch.equal(fresh(x), model.backbone(x))
    assert load_backbone_state(tmp_path).keys() == model.backbone.state_dict().keys()


@pytest.mark.parametrize("hflip", [False, True])
def test_views_flip_only_where_the_dataset_allows(hflip):
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    view = ContrastiveView(8, hflip, (0.5,) * 3, (0.25,) * 3, min_scale=1.0, jitter_prob=0.0, grayscale_prob=0.0)
    norm = Normalize((0.5,) * 3, (0.25,) * 3)
    outcomes = {("same" if torch.equal(v, norm(img)) else "flipped" if torch.equal(v, norm(img.flip(-1))) else "other")
                for v in (view(img) for _ in range(40))}
    assert outcomes == ({"same", "flipped"} if hflip else {"same"})


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_two_views_keep_the_input_size_and_differ(shape):
    torch.manual_seed(0)
    img = torch.randint(0, 256, shape, dtype=torch.uint8)
    view = ContrastiveView(shape[-1], shape[0] == 3, (0.5,) * shape[0], (0.25,) * shape[0])
    first, second = view(img), view(img)
    assert first.shape == shape and first.dtype == torch.float32 and not torch.equal(first, second)


def _tags(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(run.glob("events.out.tfevents*"))))
    events.Reload()
    return set(events.Tags()["scalars"])


def _write_config(tmp_path, method: str, init_args: str, epochs: int = 1):
    config = tmp_path / "pretrain.yaml"
    config.write_text(f"""
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: {epochs}
  limit_train_batches: 2
  log_every_n_steps: 1
  enable_checkpointing: false
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {tmp_path}, name: pretrain}}
model:
  class_path: al_lightning.pretrain.{method}
  init_args: {{backbone: small_cnn, backbone_kwargs: {{width: 4}}, {init_args}}}
data: {{dataset: digits, batch_size: 16, num_workers: 0, eval_batch_size: 512}}
""")
    return str(config)


def _assert_features_are_the_saved_backbones(run):
    ids, features = load_features(run)
    assert ids.dtype == torch.int64 and torch.equal(ids, torch.arange(1437))
    assert features.shape == (1437, 16) and features.dtype == torch.float32
    backbone = create_backbone("small_cnn", 10, 1, width=4).eval()
    backbone.load_state_dict(torch.load(run / "backbone.pt", weights_only=True))
    dm = ActiveDataModule("digits", num_workers=0)
    dm.setup()
    plain = torch.stack([dm.views["plain"](img) for img in dm.splits.train_images])
    with torch.no_grad():
        assert torch.allclose(backbone.embed(plain), features, atol=1e-5)  # the trained backbone, un-augmented


def test_pretrain_cli_on_digits_writes_backbone_features_and_logs(tmp_path):
    config = _write_config(tmp_path, "SimSiam", "projection_dim: 16, predictor_hidden_dim: 8")
    ActiveLearningCLI(args=["pretrain", "--config", config])
    run = tmp_path / "pretrain" / "version_0"
    written = {p.name for p in run.iterdir()}
    assert {"backbone.pt", "projector.pt", "predictor.pt", "features.pt", "config.yaml"} <= written
    _assert_features_are_the_saved_backbones(run)
    assert {"pretrain/loss_step", "pretrain/knn_acc"} <= _tags(run)


@pytest.mark.ddp
def test_deepcluster_pretrain_under_ddp_writes_the_rank0_backbones_features(tmp_path):
    """Two gloo ranks: sharded and gathered features, k-means broadcast from rank 0, rank 0's BatchNorm
    statistics: features.pt must be exactly what one process computes with the saved backbone."""
    from ddp_launch import run_script

    config = _write_config(tmp_path, "DeepCluster", "pca_dim: 8", epochs=2)
    run_script("-m", "al_lightning.cli", "pretrain", "--config", config, "--trainer.devices", "2",
               "--trainer.strategy", "ddp")
    run = tmp_path / "pretrain" / "version_0"
    _assert_features_are_the_saved_backbones(run)
    assert {"pretrain/loss_step", "pretrain/knn_acc"} <= _tags(run)


class HeadProbe(L.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        state = trainer.optimizers[0].state
        self.seen.append((module.current_epoch, batch_idx, module.cluster_head.weight.detach().clone(),
                                   any(p in state for p in module.cluster_head.parameters()),
                                   module.cluster_assignments()[batch["index"].numpy()],
                                   module.pseudo_labels[batch["index"]].cpu().numpy()))


def test_deepcluster_reclusters_and_resets_its_head_every_epoch(tmp_path):
    L.seed_everything(0)
    model = DeepCluster(**TINY, seed=5, pca_dim=8)
    data = PretrainDataModule(ActiveDataModule("digits", batch_size=16, num_workers=0, eval_batch_size=512))
    probe = HeadProbe()
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, use_distributed_sampler=False, default_root_dir=tmp_path,
                        callbacks=[probe])
    trainer.fit(model, datamodule=data)
    assert [(epoch, index) for epoch, index, *_ in probe.seen] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for epoch, index, weight, has_momentum, assigned, targets in probe.seen:
        assert has_momentum == (index > 0)  # fresh optimizer state for the new head
        assert np.array_equal(assigned, targets) and targets.max() < model.num_clusters == 50
        if index == 0:
            expected = torch.randn(weight.shape, generator=torch.Generator().manual_seed(5 * 1_000_003 + epoch)) * 0.01
            assert torch.allclose(weight, expected)
    assert model.clustered_epoch == 1
    assert (tmp_path / "backbone.pt").is_file() and (tmp_path / "features.pt").is_file()
    assert not (tmp_path / "projector.pt").exists()


@pytest.mark.ddp
def test_simclr_under_ddp_contrasts_the_global_batch_with_exact_gradients():
    """SimCLR's criterion on two gloo ranks, each holding half the batch: the mean loss equals the
    one-process loss of the whole batch and each rank's gradient is 2 x the whole-batch gradient of
    its rows (DDP then averages), so the gathered negatives carry their gradient back."""
    from ddp_launch import run_script

    assert run_script("tests/ddp_simclr_gradient.py").strip().endswith("ok")


def test_deepcluster_with_loader_workers_clusters_once_per_epoch(tmp_path, monkeypatch):
    """With workers the sampler is read as soon as Lightning first iterates the loader (to count
    the schedule's steps), before any epoch hook: the first read clusters, and each epoch once."""
    from al_lightning.pretrain import DeepCluster

    epochs = []
    original = DeepCluster.recluster

    def counting(self):
        epochs.append(self.current_epoch)
        original(self)

    monkeypatch.setattr(DeepCluster, "recluster", counting)
    config = _write_config(tmp_path, "DeepCluster", "pca_dim: 8", epochs=2)
    ActiveLearningCLI(args=["pretrain", "--config", config, "--data.num_workers", "1"])
    assert epochs == [0, 1]
    assert (tmp_path / "pretrain" / "version_0" / "features.pt").is_file()
