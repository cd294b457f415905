"""FreeMatch (Wang et al., ICLR 2023): FixMatch with self-adaptive thresholds (SAT) and a
self-adaptive fairness loss (SAF).

SAT, updated every step from the weak-view distributions q_b of the unlabeled batch, EMA momentum m,
all three initialised to 1/C (the paper and TorchSSL; USB's hook starts from ones):

    tau_t    = m tau_{t-1}    + (1 - m) mean_b max_c q_b(c)                 (global threshold)
    p_t(c)   = m p_{t-1}(c)   + (1 - m) mean_b q_b(c)                       (class confidence)
    h_t(c)   = m h_{t-1}(c)   + (1 - m) #{b : argmax q_b = c} / B          (label histogram)
    mask_b   = 1(max q_b >= tau_t * p_t(argmax q_b) / max_c p_t(c))         (local thresholds)

SAF on the strong-view predictions Q_b of the masked samples, with p_bar their mean and h_bar the
normalised histogram of their argmax (paper Eq. 11, USB's ``entropy_loss``):

    L_f = -H( SumNorm(p_t / h_t), SumNorm(p_bar / h_bar) ) = sum_c SumNorm(p_t/h_t)(c) log SumNorm(p_bar/h_bar)(c)

H(p, q) = -sum p log q is the cross-entropy, so L_f is the negative cross-entropy, as in the paper
and in USB (which adds ``+ lambda_e * L_f``, 1e-12 inside the log); minimising it spreads the batch's
mean prediction over the classes (the maintainers' reading in USB issue #182). Classes absent
from h_bar get scale 0 (USB's inf -> 0), and L_f = 0 when no sample is masked.

Facts follow USB's ``FreeMatchThresholingHook`` with its defaults ``use_quantile=False`` and
``clip_thresh=False``: the state is updated before the mask, from the batch gathered from every rank
(so every rank holds the same state), and the loss reads the updated state. The statistics and the
mask use the method's targets (the weak-view distribution after any part's guidance). L_f is a
loss on the local batch: DDP averages its gradients across ranks like every other term. The state
is float64 (USB keeps float32).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from al_lightning.methods.fixmatch import FixMatch
from al_lightning.methods.parts.base import PseudoLabelStep
from al_lightning.methods.registry import register_method


class SelfAdaptiveThresholds:
    """FreeMatch's class-level state; :meth:`update` on the gathered stream of every step
    reproduces it exactly (it depends on the state before and the stream only)."""

    FIELDS = ("global_threshold", "p_model", "label_hist")

    def __init__(self, num_classes: int, momentum: float = 0.999, device: torch.device | str = "cpu") -> None:
        self.momentum = momentum
        uniform = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64, device=device)
        self.global_threshold = uniform[0].clone()
        self.p_model = uniform.clone()
        self.label_hist = uniform.clone()

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """EMA of the mean confidence, mean distribution and argmax histogram of ``probs`` (B, C)."""
        m = self.momentum
        probs = probs.double()
        confidence, pseudo_label = probs.max(dim=-1)
        hist = torch.bincount(pseudo_label, minlength=len(self.p_model)).double()
        self.global_threshold = m * self.global_threshold + (1 - m) * confidence.mean()
        self.p_model = m * self.p_model + (1 - m) * probs.mean(dim=0)
        self.label_hist = m * self.label_hist + (1 - m) * hist / hist.sum()

    def class_thresholds(self) -> torch.Tensor:
        """tau_t(c) = tau_t * MaxNorm(p_t)(c)."""
        return self.global_threshold * self.p_model / self.p_model.max()

    def state_dict(self) -> dict[str, Any]:
        """A snapshot on the CPU."""
        return {name: getattr(self, name).to("cpu", copy=True) for name in self.FIELDS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (a mid-fit checkpoint)."""
        device = self.p_model.device
        for name in self.FIELDS:
            setattr(self, name, state[name].to(device))


def _inverse_or_zero(x: torch.Tensor) -> torch.Tensor:
    """1 / x with 0 where x = 0 (USB's inf -> 0 replacement)."""
    return torch.where(x > 0, 1.0 / x.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def fairness_loss(logits_strong: torch.Tensor, mask: torch.Tensor, p_model: torch.Tensor,
                  label_hist: torch.Tensor) -> torch.Tensor:
    """L_f = sum_c SumNorm(p_model / label_hist)(c) * log(SumNorm(p_bar / h_bar)(c) + 1e-12) over
    the masked samples; 0 (with zero gradient) when none is masked. Written with mask weights
    instead of boolean indexing, so it needs no host synchronisation."""
    probs = torch.softmax(logits_strong.float(), dim=-1)
    weights = mask.to(probs.dtype)
    num_masked = weights.sum()
    count = num_masked.clamp_min(1.0)
    hist = (F.one_hot(probs.argmax(dim=-1), probs.shape[-1]) * weights[:, None]).sum(dim=0) / count
    mean_prob = (weights[:, None] * probs).sum(dim=0) / count
    modulated = mean_prob * _inverse_or_zero(hist)
    # with a masked sample, the class of its argmax contributes >= 1/C to the sum: the clamp only
    # acts on an empty mask, whose loss is discarded below
    modulated = modulated / modulated.sum().clamp_min(1e-12)
    target = p_model.to(probs.dtype) * _inverse_or_zero(label_hist.to(probs.dtype))
    target = target / target.sum()
    loss = (target * torch.log(modulated + 1e-12)).sum()
    return torch.where(num_masked > 0, loss, torch.zeros_like(loss))


@register_method("freematch")
class FreeMatch(FixMatch):
    """Args (besides :class:`FixMatch`'s; its fixed ``threshold`` is not used):
        ema_p: EMA momentum m of the thresholds and histograms (USB default 0.999).
        lambda_e: weight of the fairness loss (0.001, USB's CIFAR-10 configs).
    """

    def __init__(self, ema_p: float = 0.999, lambda_e: float = 0.001, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ema_p, self.lambda_e = ema_p, lambda_e
        self.thresholds: SelfAdaptiveThresholds | None = None

    def masking(self, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Update the thresholds from all ranks' targets, then mask the local batch with them."""
        assert self.thresholds is not None, "reset_sample_state must run before the first step"
        self.update_thresholds(self.gather(targets))
        confidence, pseudo_label = targets.max(dim=-1)
        return (confidence >= self.thresholds.class_thresholds()[pseudo_label]).to(targets.dtype)

    def update_thresholds(self, probs: torch.Tensor) -> None:
        """Apply one step's weak-view distributions, gathered from every rank in rank order."""
        assert self.thresholds is not None
        self.thresholds.update(probs)

    def extra_losses(self, step: PseudoLabelStep) -> dict[str, torch.Tensor]:
        assert self.thresholds is not None
        loss = fairness_loss(step.logits_strong, step.mask, self.thresholds.p_model, self.thresholds.label_hist)
        return {"loss_fair": self.lambda_e * loss}

    def reset_sample_state(self, pool_size: int, unlabeled: np.ndarray) -> None:
        super().reset_sample_state(pool_size, unlabeled)
        self.thresholds = SelfAdaptiveThresholds(self.num_classes, self.ema_p, self.device)

    def sample_state(self) -> dict[str, Any]:
        state = super().sample_state()
        if self.thresholds is not None:
            state.update(self.thresholds.state_dict())
        return state

    def load_sample_state(self, state: dict[str, Any]) -> None:
        super().load_sample_state(state)
        assert self.thresholds is not None
        self.thresholds.load_state_dict(state)
