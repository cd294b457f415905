"""FA's feature re-alignment module (Yin, Liu, Sun, "Towards Cost-Effective Learning", section 3.5),
added to any pseudo-label method of the family as two loss terms on the unlabeled batch.

Similarity loss L_s (Eq. 11-12). Every labeled sample i keeps its latest weak-view feature
q_{i,w} (queue Q_w) and its last T strong-view features q_{i,s,t} (queue Q_s). An unlabeled sample
j is matched, by its strong-view feature, to the labeled sample owning the most similar queued
strong feature, and its weak-view feature is pulled towards that sample's weak feature:

    i* = argmax_{i, t} cos(z^u_{j,s}, q_{i,s,t}),      L_s = mean_j [1 - cos(z^u_{j,w}, q_{i*,w})].

Contrastive loss L_c (Eq. 17-18), "an invariant feature approach [52]" = the invariance term of
Barlow Twins (Zbontar et al., 2021): with every feature dimension normalised over the batch,

    L_c = sum_{i=1..d} (1 - C_ii)^2,      C_ii = mean_b zs_{b,i} zw_{b,i}.

There is no public reference code; choices the paper leaves open are stated where they are made.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from al_lightning.methods.parts.base import MethodPart, PseudoLabelStep
from al_lightning.ops.indexing import last_occurrence, occurrence_rank

#: entries of one similarity block (unlabeled rows x queued features); ~64 MiB in float32
SIMILARITY_BLOCK_ELEMENTS = 1 << 24


class LabeledFeatureQueues:
    """Q_w ``(N_l, d)`` and the ring buffers Q_s ``(N_l, T, d)`` of the labeled samples of a pool.

    Features are stored L2-normalised (only their direction enters the cosines of Eq. 11-12).
    ``pushes[i]`` counts the strong features ever pushed for labeled row i; the next one goes to
    slot ``pushes[i] % T``, overwriting the oldest, and slots ``t >= pushes[i]`` are unfilled.
    """

    def __init__(self, labeled_ids: torch.Tensor, pool_size: int, dim: int, length: int,
                 device: torch.device | str = "cpu") -> None:
        if length < 1:
            raise ValueError(f"queue_length must be >= 1, got {length}")
        self.length = length
        self.labeled_ids = torch.as_tensor(labeled_ids, dtype=torch.int64, device=device)
        num_labeled = len(self.labeled_ids)
        self.row_of = torch.full((pool_size,), -1, dtype=torch.int64, device=device)
        self.row_of[self.labeled_ids] = torch.arange(num_labeled, device=device)
        self.weak = torch.zeros(num_labeled, dim, device=device)
        self.strong = torch.zeros(num_labeled, length, dim, device=device)
        self.pushes = torch.zeros(num_labeled, dtype=torch.int64, device=device)

    def push(self, index: torch.Tensor, weak: torch.Tensor, strong: torch.Tensor) -> None:
        """Enqueue a (gathered) labeled batch as if its entries were applied one after another:
        every occurrence of an id pushes its strong feature in batch order, the id's last
        occurrence sets its weak feature."""
        rows = self.row_of[index]
        if bool((rows < 0).any()):
            raise ValueError(f"labeled batch holds ids {index[rows < 0][:10].tolist()} that were unlabeled when "
                             "the fit started; FeatureRealignment queues only the pool's labeled samples")
        weak = F.normalize(weak.detach().float(), dim=-1)
        strong = F.normalize(strong.detach().float(), dim=-1)
        last = last_occurrence(index)
        self.weak[rows[last]] = weak[last]
        slots = (self.pushes[rows] + occurrence_rank(index)) % self.length
        # more than T occurrences of one id wrap onto the same slot: the later one must win
        final = last_occurrence(rows * self.length + slots)
        self.strong[rows[final], slots[final]] = strong[final]
        self.pushes.index_add_(0, rows, torch.ones_like(rows))

    def strong_filled(self) -> torch.Tensor:
        """``(N_l, T)`` bool: which slots of Q_s hold a feature."""
        return torch.arange(self.length, device=self.pushes.device) < self.pushes[:, None]

    @torch.no_grad()
    def nearest_rows(self, features_strong: torch.Tensor) -> torch.Tensor:
        """Eq. 11: for each unlabeled strong feature, the labeled row whose strong queue holds the
        most cosine-similar filled entry (ties: the lowest row and slot)."""
        query = F.normalize(features_strong.detach().float(), dim=-1)
        bank = self.strong.flatten(0, 1)
        unfilled = ~self.strong_filled().flatten()
        block = max(1, SIMILARITY_BLOCK_ELEMENTS // max(1, bank.shape[0]))
        with torch.autocast(query.device.type, enabled=False):  # bf16 similarities would tie neighbours
            best = [(chunk @ bank.T).masked_fill_(unfilled, float("-inf")).argmax(dim=1)
                    for chunk in query.split(block)]
        return torch.cat(best) // self.length

    def state(self) -> dict[str, torch.Tensor]:
        return {"labeled_ids": self.labeled_ids.cpu(), "queue_weak": self.weak.cpu(),
                "queue_strong": self.strong.cpu(), "queue_pushes": self.pushes.cpu()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if not torch.equal(state["labeled_ids"], self.labeled_ids.cpu()):
            raise ValueError("FeatureRealignment queues are for another labeled set")
        device = self.pushes.device
        self.weak, self.strong = state["queue_weak"].to(device), state["queue_strong"].to(device)
        self.pushes = state["queue_pushes"].to(device)


def similarity_loss(features_weak: torch.Tensor, features_strong: torch.Tensor,
                    queues: LabeledFeatureQueues) -> torch.Tensor:
    """L_s of Eq. 12 averaged over the unlabeled batch; the gradient reaches only the unlabeled
    weak features (the match of Eq. 11 is an argmax, the queues are detached)."""
    anchors = queues.weak[queues.nearest_rows(features_strong)]
    return (1.0 - F.cosine_similarity(features_weak.float(), anchors, dim=-1)).mean()


def invariance_loss(features_strong: torch.Tensor, features_weak: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """L_c of Eq. 18 on one batch: ``sum_i (1 - C_ii)^2`` with C_ii the correlation over the batch
    of dimension i of the strong and of the weak features.

    Each dimension is centred and divided by its (biased) batch standard deviation, as Barlow
    Twins [52] does with a non-affine BatchNorm (same ``eps``). Eq. 17's "normalised to modulus 1"
    with the product ``g_i(x_s)^T g_i(x_w)`` reads as the per-dimension column over the samples
    having unit norm: the centred unit columns' dot product is exactly this C_ii, and it is what
    makes Eq. 19's bound ``E||g(x_s) - g(x_w)||^2 <= 2 sqrt(d L_c)`` hold (Cauchy-Schwarz over
    the d terms ``2 (1 - C_ii)``). Reading it as unit-norm feature vectors per sample instead
    caps ``sum_i E[g_i(x_s) g_i(x_w)] = E[cos(g(x_s), g(x_w))]`` at 1, so L_c >= (d - 1)^2 / d
    could never approach 0.
    """

    def standardise(z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)

    correlation = (standardise(features_strong) * standardise(features_weak)).mean(dim=0)
    return ((1.0 - correlation) ** 2).sum()


class FeatureRealignment(MethodPart):
    """FA's re-alignment losses for any pseudo-label method (see the module docstring).

    Each step first enqueues the step's labeled features, all-gathered in rank order so that every
    rank holds identical queues, and then computes the losses against the updated queues: the
    labeled features of the current step are already candidates of Eq. 11 (the paper refreshes
    the queues while computing the labeled loss, before the unlabeled losses). Both losses use the
    rank's own unlabeled batch. The queues start empty at every fit, sized by the labeled set.

    Args:
        queue_length: T, strong features kept per labeled sample (10 in the paper, section 4.4).
        weight_similarity: weight of L_s (the paper adds the losses unweighted: 1).
        weight_contrastive: weight of L_c. The paper gives none; L_c is a sum over the d feature
            dimensions, O(d) where every other loss is O(1), so the default ``None`` means 1/d:
            the mean of ``(1 - C_ii)^2`` over dimensions, in [0, 4] like L_s is in [0, 2], on any
            backbone width. 1.0 gives the paper's literal sum.
    """

    labeled_views = ("strong",)

    def __init__(self, queue_length: int = 10, weight_similarity: float = 1.0,
                 weight_contrastive: float | None = None) -> None:
        super().__init__()
        if queue_length < 1:
            raise ValueError(f"FeatureRealignment.queue_length must be >= 1, got {queue_length}")
        self.queue_length = queue_length
        self.weight_similarity, self.weight_contrastive = weight_similarity, weight_contrastive
        self.queues: LabeledFeatureQueues | None = None

    def reset(self, method: Any, pool_size: int, unlabeled: np.ndarray) -> None:
        labeled = np.setdiff1d(np.arange(pool_size), np.asarray(unlabeled, dtype=np.int64))
        self.queues = LabeledFeatureQueues(torch.from_numpy(labeled), pool_size, method.model.num_features,
                                           self.queue_length, method.device)

    def losses(self, method: Any, step: PseudoLabelStep) -> dict[str, torch.Tensor]:
        if self.queues is None:
            raise RuntimeError("FeatureRealignment has no queues: reset() runs at the start of a fit")
        if step.features_labeled_strong is None:
            raise ValueError("FeatureRealignment needs the labeled batch's 'strong' view; the method must list "
                             "its parts' labeled_views and the data module must serve them")
        self.queues.push(method.gather(step.index_labeled), method.gather(step.features_labeled),
                         method.gather(step.features_labeled_strong))
        weight_contrastive = (1.0 / step.features_weak.shape[-1] if self.weight_contrastive is None
                              else self.weight_contrastive)
        return {"loss_fa_s": self.weight_similarity
                * similarity_loss(step.features_weak, step.features_strong, self.queues),
                "loss_fa_c": weight_contrastive * invariance_loss(step.features_strong, step.features_weak)}

    def state(self) -> dict[str, Any]:
        return {} if self.queues is None else self.queues.state()

    def load_state(self, state: dict[str, Any]) -> None:
        if self.queues is not None and state:
            self.queues.load_state(state)
