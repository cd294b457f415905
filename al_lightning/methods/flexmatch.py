"""FlexMatch (Zhang et al., NeurIPS 2021): FixMatch with curriculum pseudo-labelling, i.e. a
class-wise threshold that follows how far each class has been learned.

With N = |U| unlabeled samples, selected_label(n) the class sample n last passed the fixed
threshold tau with (-1 while it never has):

    sigma(c) = #{n in U : selected_label(n) = c}                               (learning effect)
    beta(c)  = sigma(c) / max(max_c' sigma(c'), N - sum_c' sigma(c'))         (threshold warm-up)
    beta(c)  = sigma(c) / max_c' sigma(c')                                    (without warm-up)
    T(c)     = tau * M(beta(c)),  M(x) = x / (2 - x)                          (convex mapping)
    mask_b   = 1(max q_b >= T(argmax q_b))

Facts where the paper leaves room follow USB's ``FlexMatchThresholdingHook`` (TorchSSL recomputes
beta at the start of the next step instead, which is the same): the mask uses beta before the
step's update; the update then writes argmax q_b for every sample with max q_b >= tau and
recomputes beta, but only while the largest bucket (the -1 bucket included) holds fewer than N
samples, otherwise beta keeps its previous value. So beta = 0 at the first step and every
pseudo-label passes it.

Where this differs from the reference, on purpose: the state covers only the pool's unlabeled ids
(the -1 bucket starts at |U|; labeled ids are marked :data:`LABELED` and never counted); the update
uses the (index, confidence, argmax) of all ranks gathered in rank order, repeated ids of one step
resolved "latest write wins", so every rank holds the state a single process would; and the counts
are kept on the device and updated in O(batch) per step instead of a Counter over the pool.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from al_lightning.methods.fixmatch import FixMatch
from al_lightning.methods.registry import register_method
from al_lightning.ops.indexing import last_occurrence

#: ``selected_label`` of an unlabeled id that never passed tau (the reference's -1 bucket)
UNUSED = -1
#: ``selected_label`` of an id outside the unlabeled set: never selected, never counted
LABELED = -2


def convex_mapping(beta: torch.Tensor) -> torch.Tensor:
    """FlexMatch's convex mapping M(x) = x / (2 - x): M(0) = 0, M(1) = 1, below the identity."""
    return beta / (2.0 - beta)


class CurriculumState:
    """FlexMatch's per-sample state over a pool; :meth:`update` applied to the gathered stream of
    every step reproduces it exactly (it depends on the state before and the stream only)."""

    FIELDS = ("selected_label", "class_counts", "learning_effect")

    def __init__(self, pool_size: int, unlabeled: np.ndarray | torch.Tensor, num_classes: int,
                 thresh_warmup: bool = True, device: torch.device | str = "cpu") -> None:
        self.thresh_warmup = thresh_warmup
        unlabeled = torch.as_tensor(unlabeled, dtype=torch.int64, device=device)
        self.num_unlabeled = len(unlabeled)
        self.selected_label = torch.full((pool_size,), LABELED, dtype=torch.int64, device=device)
        self.selected_label[unlabeled] = UNUSED
        #: sigma(c): unlabeled ids whose selected label is c
        self.class_counts = torch.zeros(num_classes, dtype=torch.int64, device=device)
        #: beta(c), float32 as the reference's ``classwise_acc``
        self.learning_effect = torch.zeros(num_classes, dtype=torch.float32, device=device)

    def class_thresholds(self, tau: float) -> torch.Tensor:
        """T(c) = tau * M(beta(c))."""
        return tau * convex_mapping(self.learning_effect)

    @torch.no_grad()
    def update(self, index: torch.Tensor, confidence: torch.Tensor, pseudo_label: torch.Tensor, tau: float) -> None:
        """One step's (gathered) entries: those of unlabeled ids with confidence >= tau set their
        selected label, the last such entry of an id winning; then beta is recomputed."""
        selected = (confidence >= tau) & (self.selected_label[index] != LABELED)
        ids, labels = index[selected], pseudo_label[selected]
        latest = last_occurrence(ids)
        ids, labels = ids[latest], labels[latest]
        previous = self.selected_label[ids]
        self.class_counts.index_add_(0, previous.clamp_min(0), -(previous != UNUSED).long())
        self.class_counts.index_add_(0, labels, torch.ones_like(labels))
        self.selected_label[ids] = labels
        self._recompute_learning_effect()

    def _recompute_learning_effect(self) -> None:
        unused = self.num_unlabeled - self.class_counts.sum()
        largest_class = self.class_counts.max()
        largest_bucket = torch.maximum(largest_class, unused)
        denominator = largest_bucket if self.thresh_warmup else largest_class
        recomputed = self.class_counts.float() / denominator.clamp_min(1).float()
        # the reference recomputes only while no bucket holds all of U (not at the start, when all
        # are unused, nor once every id sits in one class); otherwise beta keeps its value
        self.learning_effect = torch.where(largest_bucket < self.num_unlabeled, recomputed, self.learning_effect)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot on the CPU (copies: the live tensors are updated in place)."""
        return {name: getattr(self, name).to("cpu", copy=True) for name in self.FIELDS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of the same pool (a mid-fit checkpoint)."""
        device = self.selected_label.device
        if state["selected_label"].shape != self.selected_label.shape:
            raise ValueError("FlexMatch state is for another pool size")
        for name in self.FIELDS:
            setattr(self, name, state[name].to(device))


@register_method("flexmatch")
class FlexMatch(FixMatch):
    """Args (besides :class:`FixMatch`'s, whose ``threshold`` is FlexMatch's fixed tau):
        thresh_warmup: count the unused bucket in beta's denominator (FlexMatch's threshold warm-up).
    """

    def __init__(self, thresh_warmup: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thresh_warmup = thresh_warmup
        self.curriculum: CurriculumState | None = None

    def masking(self, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Mask with the current class thresholds, then update the curriculum from all ranks."""
        assert self.curriculum is not None, "reset_sample_state must run before the first step"
        confidence, pseudo_label = targets.max(dim=-1)
        mask = confidence >= self.curriculum.class_thresholds(self.threshold)[pseudo_label]
        self.update_curriculum(self.gather(index), self.gather(confidence), self.gather(pseudo_label))
        return mask.to(targets.dtype)

    def update_curriculum(self, index: torch.Tensor, confidence: torch.Tensor, pseudo_label: torch.Tensor) -> None:
        """Apply one step's stream, gathered from every rank in rank order."""
        assert self.curriculum is not None
        self.curriculum.update(index, confidence, pseudo_label, self.threshold)

    def reset_sample_state(self, pool_size: int, unlabeled: np.ndarray) -> None:
        super().reset_sample_state(pool_size, unlabeled)
        self.curriculum = CurriculumState(pool_size, unlabeled, self.num_classes, self.thresh_warmup, self.device)

    def sample_state(self) -> dict[str, Any]:
        state = super().sample_state()
        if self.curriculum is not None:
            state.update(self.curriculum.state_dict())
        return state

    def load_sample_state(self, state: dict[str, Any]) -> None:
        super().load_sample_state(state)
        assert self.curriculum is not None
        self.curriculum.load_state_dict(state)
