"""FixMatch (Sohn et al., NeurIPS 2020): hard pseudo-labels from the weak view, above a
confidence threshold, supervise the strong view (Eq. 1-2 of the paper):

    loss = CE(p(x_l), y) + lambda_u * mean_b[ 1(max q_b >= tau) * CE(p(x_s,b), argmax q_b) ]

with q_b the weak-view prediction. FixMatch is also the base of its family: FlexMatch and FreeMatch
override :meth:`FixMatch.masking` (their thresholds) and may add loss terms; composable
:class:`~al_lightning.methods.parts.MethodPart` objects (FA, prior pseudo-labels) rewrite q_b or add
losses for any member of the family. All images go through the network in one concatenated
forward pass; without an unlabeled batch (``uratio`` 0, or a fully labeled pool) the step trains on
the labeled loss alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanMetric

from al_lightning.methods.base import SSLMethod
from al_lightning.methods.parts.base import MethodPart, PseudoLabelStep
from al_lightning.methods.registry import register_method


def consistency_loss(logits_strong: torch.Tensor, pseudo_label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean_b[ mask_b * CE(logits_strong_b, pseudo_label_b) ]`` over the whole unlabeled batch."""
    return (F.cross_entropy(logits_strong, pseudo_label, reduction="none") * mask).mean()


def fixed_threshold_mask(targets: torch.Tensor, threshold: float) -> torch.Tensor:
    """FixMatch's mask: 1 where the target's confidence reaches ``threshold``."""
    return (targets.max(dim=-1).values >= threshold).to(targets.dtype)


@register_method("fixmatch")
class FixMatch(SSLMethod):
    """Args (besides :class:`SSLMethod`'s):
        threshold: confidence tau above which a pseudo-label is used.
        lambda_u: weight of the unlabeled loss.
        parts: composable parts (feature re-alignment, prior pseudo-label guidance, ...).
    """

    def __init__(self, threshold: float = 0.95, lambda_u: float = 1.0, parts: list[MethodPart] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold, self.lambda_u = threshold, lambda_u
        self.parts = nn.ModuleList(parts or [])
        self.mask_rate = MeanMetric()

    # ------------------------------------------------------------ declarations
    @property
    def labeled_views(self) -> tuple[str, ...]:
        return _union(("weak",), *(part.labeled_views for part in self.parts))

    @property
    def unlabeled_views(self) -> tuple[str, ...]:
        return _union(("weak", "strong"), *(part.unlabeled_views for part in self.parts))

    # ------------------------------------------------------------ hooks of the family
    def masking(self, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Which pseudo-labels are used (float 0/1 per unlabeled sample of the local batch)."""
        return fixed_threshold_mask(targets, self.threshold)

    def extra_losses(self, step: PseudoLabelStep) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms of the method itself (FreeMatch's fairness loss)."""
        return {}

    def reset_sample_state(self, pool_size: int, unlabeled: np.ndarray) -> None:
        for part in self.parts:
            part.reset(self, pool_size, unlabeled)

    def sample_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for i, part in enumerate(self.parts):
            state.update({f"parts.{i}.{type(part).__name__}.{k}": v for k, v in part.state().items()})
        return state

    def load_sample_state(self, state: dict[str, Any]) -> None:
        for i, part in enumerate(self.parts):
            prefix = f"parts.{i}.{type(part).__name__}."
            part.load_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    # ------------------------------------------------------------ the step
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        labeled = batch["labeled"]
        x, y = labeled["weak"], labeled["target"]
        unlabeled = batch.get("unlabeled")
        if unlabeled is None:
            return self.labeled_step(labeled)
        x_strong = labeled.get("strong") if "strong" in self.labeled_views else None
        chunks = [x] + ([x_strong] if x_strong is not None else []) + [unlabeled["weak"], unlabeled["strong"]]
        sizes = [c.shape[0] for c in chunks]
        features = self.model.embed(torch.cat(chunks))
        logits = self.model.classify(features)
        feats, outs = list(features.split(sizes)), list(logits.split(sizes))
        feats_x, logits_x = feats.pop(0), outs.pop(0)
        feats_xs = feats.pop(0) if x_strong is not None else None
        if x_strong is not None:
            outs.pop(0)
        (feats_w, feats_s), (logits_w, logits_s) = feats, outs

        index = unlabeled["index"]
        probs_w = torch.softmax(logits_w.detach().float(), dim=-1)
        targets = probs_w
        for part in self.parts:
            targets = part.guide(targets, index, self.global_step)
        mask = self.masking(targets, index)
        loss_x = F.cross_entropy(logits_x, y)
        loss_u = consistency_loss(logits_s, targets.argmax(dim=-1), mask)
        step = PseudoLabelStep(labeled["index"], y, feats_x, feats_xs, index, feats_w, feats_s, logits_w, logits_s,
                               probs_w, targets, mask, self.global_step)
        terms = {"loss_x": loss_x, "loss_u": self.lambda_u * loss_u, **self.extra_losses(step)}
        for part in self.parts:
            terms.update(part.losses(self, step))
        loss = torch.stack(list(terms.values())).sum()

        if self.logs_this_step:
            self.mask_rate(mask)
            for name, value in {"loss": loss, **terms, "loss_u": loss_u, "mask_rate": self.mask_rate}.items():
                self.log_train(name, value)
        return {"loss": loss,
                "unlabeled": {"index": index, "probs_weak": probs_w,
                              "probs_strong": torch.softmax(logits_s.detach().float(), dim=-1), "mask": mask}}


def _union(*groups: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for group in groups:
        out += [name for name in group if name not in out]
    return tuple(out)
