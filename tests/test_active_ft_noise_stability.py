import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from al_lightning.data import ActiveDataModule
from al_lightning.methods import FixMatch
from al_lightning.ops.active_ft import active_ft_gradient, active_ft_select, optimise_centroids
from al_lightning.ops.noise_stability import output_changes, perturbed_weights, random_projection
from al_lightning.strategies import AcquisitionContext
from al_lightning.strategies.noise_stability import NoiseStability


@pytest.fixture(autouse=True)
def single_thread():
    """These tensors are tiny: a second thread only adds synchronisation on a loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def separated_clusters(k: int, per: int, dim: int = 16, spread: float = 0.05, seed: int = 0):
    """``k`` clusters around orthonormal directions (cosine 0 between centres); features, cluster ids."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.linalg.qr(torch.randn(dim, k, generator=gen))[0].T
    x = centres.repeat_interleave(per, 0) + spread * torch.randn(k * per, dim, generator=gen)
    return x, torch.arange(k).repeat_interleave(per)


# ----------------------------------------------------------------------------------------- ActiveFT

def official_objective(features, learnable, fixed, temperature, balance):
    """ActiveFT's loss as the official get_loss writes it (exp, max, detached centroid sum)."""
    centroids = torch.cat([fixed, F.normalize(learnable, dim=1)])
    prod_exp = torch.exp(features @ centroids.T / temperature)
    positive, assigned = prod_exp.max(dim=1)
    repulsion = torch.exp(centroids.detach() @ centroids.T / temperature).sum(dim=0)
    return -torch.mean(torch.log(positive) - torch.log(positive + repulsion[assigned] * balance))


@pytest.mark.parametrize("balance", [1.0, 0.3])
def test_active_ft_gradient_is_the_autograd_of_the_official_objective(balance):
    gen = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(50, 8, generator=gen, dtype=torch.float64), dim=1)
    fixed = F.normalize(torch.randn(3, 8, generator=gen, dtype=torch.float64), dim=1)
    learnable = (2.0 * torch.randn(5, 8, generator=gen, dtype=torch.float64)).requires_grad_()
    expected = official_objective(features, learnable, fixed, 0.07, balance)
    expected.backward()
    loss, grad = active_ft_gradient(features, learnable.detach(), fixed, 0.07, balance, chunk=7)  # several chunks
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(grad, learnable.grad, rtol=1e-10, atol=1e-12)


def test_active_ft_objective_decreases_on_clustered_features():
    x, clusters = separated_clusters(4, 50)
    features = F.normalize(x, dim=1)
    init = features[clusters == 0][:4]  # every centroid starts in the same cluster
    _, losses = optimise_centroids(features, init, features.new_zeros(0, 16), torch.Generator().manual_seed(0))
    assert len(losses) == 300
    checkpoints = losses[::50] + [losses[-1]]
    assert all(later < earlier for earlier, later in zip(checkpoints, checkpoints[1:]))
    assert losses[-1] < 0.5 * losses[0]


def test_active_ft_subsets_are_the_rows_of_pool_and_labeled_features_side_by_side():
    """Above ``batch_size`` a step's subset is gathered from the pool and the labeled rows without
    concatenating them: the same steps as indexing their concatenation (replayed here), bit for bit."""
    x, _ = separated_clusters(3, 12)
    features, fixed = F.normalize(x[:30], dim=1), F.normalize(x[30:], dim=1)
    init = features[:4]
    found, _ = optimise_centroids(features, init, fixed, torch.Generator().manual_seed(3), iterations=6, batch_size=11)
    learnable, generator = init.clone(), torch.Generator().manual_seed(3)
    optimiser = torch.optim.Adam([learnable], lr=1e-3)
    everything = torch.cat([features, fixed])
    for _ in range(6):
        batch = everything[torch.randperm(len(everything), generator=generator)[:11]]
        _, learnable.grad = active_ft_gradient(batch, learnable, fixed, 0.07, 1.0, 4096)
        optimiser.step()
    assert torch.equal(found, F.normalize(learnable, dim=1))


def test_active_ft_normalising_in_place_picks_the_same_rows():
    x, _ = separated_clusters(4, 20)
    expected = active_ft_select(x[5:], 6, x[:5], np.random.default_rng(2), iterations=20, batch_size=50)
    pool = x[5:].clone()
    found = active_ft_select(pool, 6, x[:5], np.random.default_rng(2), iterations=20, batch_size=50, overwrite=True)
    assert found.tolist() == expected.tolist()
    assert torch.equal(pool, F.normalize(x[5:], dim=1))  # the caller's rows became the unit features


def test_active_ft_spreads_randomly_initialised_centroids_over_the_clusters():
    x, clusters = separated_clusters(6, 40)
    covered_at_init, covered = 0, 0
    for seed in range(6):
        init_rows = np.random.default_rng(seed).choice(len(x), 6, replace=False)  # the draw active_ft_select makes
        covered_at_init += len(set(clusters[init_rows].tolist())) == 6
        rows = active_ft_select(x, 6, None, np.random.default_rng(seed))
        assert len(set(rows.tolist())) == 6
        covered += len(set(clusters[rows].tolist())) == 6
    assert covered_at_init == 0 and covered >= 5


def test_active_ft_fixes_labeled_centroids_and_picks_the_nearest_unchosen_unlabeled_sample():
    """Replays the documented pipeline on few candidates, so that centroids compete for samples:
    the labeled features join the feature set as fixed centroids, the learnable centroids start on
    unlabeled rows, and each centroid (served by its best similarity) takes its most similar free
    unlabeled sample, never a labeled one."""
    x, _ = separated_clusters(2, 8, dim=4, spread=0.02)
    labeled, unlabeled = x[[0, 8]], x[[i for i in range(16) if i not in (0, 8)]]
    budget, seed = 8, 0
    rows = active_ft_select(unlabeled, budget, labeled, np.random.default_rng(seed), iterations=50)
    rng = np.random.default_rng(seed)  # replay the selection's draws
    candidates, fixed = F.normalize(unlabeled, dim=1), F.normalize(labeled, dim=1)
    init = candidates[torch.as_tensor(rng.choice(len(candidates), budget, replace=False))]
    generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
    centroids, _ = optimise_centroids(candidates, init, fixed, generator, iterations=50)
    similarity = (centroids @ candidates.T).numpy()
    expected, taken, displaced = np.full(budget, -1), set(), 0
    for c in np.lexsort((np.arange(budget), -similarity.max(1))):
        ranked = [int(i) for i in np.argsort(-similarity[c], kind="stable")]
        expected[c] = next(i for i in ranked if i not in taken)
        displaced += expected[c] != ranked[0]
        taken.add(int(expected[c]))
    assert displaced > 0  # the "not yet chosen" part of the rule is exercised
    assert rows.tolist() == expected.tolist()
    without_labels = active_ft_select(unlabeled, budget, None, np.random.default_rng(seed), iterations=50)
    assert sorted(without_labels.tolist()) != sorted(rows.tolist())  # the fixed centroids change the picks


# ------------------------------------------------------------------------------------ Noise stability

class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 4)
        self.norm.running_mean.uniform_(-0.5, 0.5)
        self.eval()

    def forward(self, x):
        return self.fc(torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


def perturbed_copy(model: nn.Module, seed: int, noise_scale: float) -> nn.Module:
    """The official way: a deep copy whose every module ``weight`` gets rescaled noise in place."""
    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in noisy.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, nn.Parameter):
                noise = torch.randn(weight.shape, generator=generator)
                weight.add_(noise * (noise_scale * weight.norm() / noise.norm()))
    return noisy


def brute_force_changes(model: nn.Module, x: torch.Tensor, seeds, noise_scale: float) -> torch.Tensor:
    with torch.no_grad():
        clean = torch.softmax(model(x), dim=1)
        return torch.cat([(torch.softmax(perturbed_copy(model, s, noise_scale)(x), dim=1) - clean)
                          / clean.norm(dim=1, keepdim=True) for s in seeds], dim=1)


def test_functional_perturbation_equals_a_perturbed_deep_copy():
    model = TinyNet()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(10, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    seeds = [11, 12, 13]
    changes = output_changes(model, [x[:6], x[6:]], seeds, noise_scale=0.05)
    assert changes.shape == (10, 3 * 4)
    torch.testing.assert_close(changes, brute_force_changes(model, x, seeds, 0.05), rtol=1e-5, atol=1e-7)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched


def test_noise_norm_is_noise_scale_times_each_weight_norm():
    model = TinyNet().double()  # the norm of (W + eps) - W is then exact to ~1e-12
    first = perturbed_weights(model, 1e-3, torch.Generator().manual_seed(5))
    second = perturbed_weights(model, 1e-3, torch.Generator().manual_seed(6))
    assert set(first) == {"conv.weight", "norm.weight", "fc.weight"}  # biases and buffers unperturbed
    parameters = {name: weight.detach() for name, weight in model.named_parameters()}
    for name, weight in first.items():
        noise = weight - parameters[name]
        assert float(noise.norm()) == pytest.approx(1e-3 * float(parameters[name].norm()), rel=1e-9)
        assert not torch.allclose(noise, second[name] - parameters[name])  # a fresh draw per seed


def test_insensitive_samples_have_small_changes():
    """Logits w.x + b with weights only perturbed: x = 0 cannot move; a saturated softmax barely
    moves; a sample on the decision boundary moves at first order."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.3, -0.3]))
    x = torch.tensor([[0.0, 0.0], [20.0, 0.0], [-0.3, 1.0]])  # zero, confident, on the boundary
    norms = output_changes(model, [x], range(30), noise_scale=1e-3).norm(dim=1)
    assert float(norms[0]) == 0.0
    assert float(norms[2]) > 1e-5
    assert float(norms[1]) < 1e-6 * float(norms[2])


def k_center_from_the_origin(vectors: np.ndarray, budget: int) -> list[int]:
    """The official kcenter_greedy: the largest norm first, then the farthest from every pick."""
    distance, picks = np.linalg.norm(vectors, axis=1), []
    for _ in range(budget):
        picks.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(vectors - vectors[picks[-1]], axis=1))
    return picks


def digits_context() -> tuple[AcquisitionContext, np.ndarray]:
    """Digits with 20 random labels and an untrained width-4 CNN (seeded: the same on every process)."""
    dm = ActiveDataModule("digits", batch_size=4, uratio=2, steps_per_epoch=3, num_workers=0)
    dm.setup()
    labeled = np.random.default_rng(0).choice(dm.pool.size, 20, replace=False)
    dm.pool.label(labeled, dm.ground_truth(labeled))
    torch.manual_seed(0)
    model = FixMatch(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4}).inference_model
    return AcquisitionContext(dm.pool, model, dm.inference_dataloader, torch.device("cpu"), cycle=2, seed=3), labeled


def test_noise_stability_is_k_center_from_the_origin_on_brute_force_changes():
    context, labeled = digits_context()
    picks = NoiseStability(perturbations=4).select(context, 8)
    seeds = context.rng().integers(2**63 - 1, size=4)
    images = torch.cat([batch["plain"] for batch in context.loader_for(context.unlabeled)])
    vectors = brute_force_changes(context.model, images, seeds, 1e-3)
    torch.testing.assert_close(NoiseStability(perturbations=4).change_vectors(context), vectors, rtol=1e-5, atol=1e-7)
    assert picks.tolist() == context.unlabeled[k_center_from_the_origin(vectors.double().numpy(), 8)].tolist()
    assert not np.isin(picks, labeled).any()


def test_above_the_memory_cap_the_changes_are_randomly_projected():
    """Past ``max_exact_gib`` the strategy holds the exact changes times the seeded Gaussian matrix
    (n x m, not n x K C); pairwise distances survive within the Johnson-Lindenstrauss error."""
    context, labeled = digits_context()
    exact = NoiseStability(perturbations=4).change_vectors(context)
    projected = NoiseStability(perturbations=4, max_exact_gib=0.0, projection_dim=2048).change_vectors(context)
    rng = context.rng()
    rng.integers(2**63 - 1, size=4)  # the perturbation seeds come first
    matrix = random_projection(exact.shape[1], 2048, int(rng.integers(2**63 - 1)), torch.device("cpu"))
    assert projected.shape == (len(context.unlabeled), 2048)
    torch.testing.assert_close(projected, exact @ matrix, rtol=1e-4, atol=1e-6)
    sample = torch.arange(0, len(exact), 7)
    true, kept = torch.pdist(exact[sample].double()), torch.pdist(projected[sample].double())
    ratio = (kept / true)[true > 0]
    assert float((ratio - 1).abs().median()) < 0.03 and float((ratio - 1).abs().max()) < 0.15
    picks = NoiseStability(perturbations=4, max_exact_gib=0.0, projection_dim=2048).select(context, 8)
    assert len(set(picks.tolist())) == 8 and not np.isin(picks, labeled).any()


def _sharded_change_vectors(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    context, _ = digits_context()
    torch.save(NoiseStability(perturbations=3).change_vectors(context), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.ddp
def test_noise_stability_sharded_over_two_ranks_equals_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_sharded_change_vectors, args=(port, str(tmp_path)), nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0, rank1)
    context, _ = digits_context()
    torch.testing.assert_close(rank0, NoiseStability(perturbations=3).change_vectors(context), rtol=1e-5, atol=1e-7)
