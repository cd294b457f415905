"""ALFA-Mix (Parvaneh et al., CVPR 2022), as used by the ASSL and FA papers.

For every class k the anchor z*_k is the mean labeled embedding of class k (of all labeled
embeddings when k has none). An unlabeled z is a candidate when its predicted label changes for
some anchor under the interpolation z' = (1 - alpha) z + alpha z*_k, alpha per dimension in
[0, cap]. The cap grows by 1/32 until more than ``budget`` candidates exist. alpha comes from

* ``closed_form``: alpha = eps ||z* - z|| / ||g|| * g / (z* - z), eps = cap / sqrt(d), g the
  gradient of the cross-entropy at the predicted label w.r.t. z (the first-order maximiser);
* ``optimised``: alpha ~ N(cap/2, cap/2) clipped to [1e-8, cap], then Adam steps (lr 0.1, the last
  third at lr 0.01) on -CE(z', yhat) + 0.01 ||alpha||, clipped after each step; a change seen at
  any step counts.

With an affine head (``nn.Linear``, every registered backbone's) and closed-form alpha, the logits
of a mix are affine in the cap: logits = base + cap * D_anchor. One product per anchor then gives
every sample's smallest flipping cap, and the cap loop is a threshold on it (exactly the same set).

The batch is k-means on the L2-normalised candidate embeddings with ``budget`` centres, the
candidate nearest to each centre; a random fill completes it when candidates are too few.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from al_lightning.ops.faiss_ops import kmeans, nearest_to_centres

Classifier = Callable[[torch.Tensor], torch.Tensor]


def class_anchors(labeled_embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    overall = labeled_embeddings.mean(0)
    anchors = []
    for k in range(num_classes):
        members = labeled_embeddings[labels == k]
        anchors.append(members.mean(0) if len(members) else overall)
    return torch.stack(anchors)


def _changes(classify: Classifier, z: torch.Tensor, anchor: torch.Tensor, alpha: torch.Tensor,
             predicted: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return classify((1 - alpha) * z + alpha * anchor).argmax(1) != predicted


def _optimised_changes(classify: Classifier, z: torch.Tensor, anchor: torch.Tensor, predicted: torch.Tensor,
                       cap: float, generator: torch.Generator, steps: int = 5, lr: float = 0.1,
                       l2: float = 0.01) -> torch.Tensor:
    alpha = torch.normal(cap / 2, cap / 2, size=z.shape, generator=generator, device="cpu").to(z.device)
    alpha = alpha.clamp(1e-8, cap)
    changed = torch.zeros(len(z), dtype=torch.bool, device=z.device)
    for step in range(steps):
        alpha.requires_grad_(True)
        optimiser = torch.optim.Adam([alpha], lr=lr if step < steps * 2 / 3 else lr / 10)
        logits = classify((1 - alpha) * z + alpha * anchor)
        changed |= logits.argmax(1).detach() != predicted
        loss = -F.cross_entropy(logits, predicted, reduction="none") + l2 * alpha.norm(dim=1)
        optimiser.zero_grad()
        loss.sum().backward()
        optimiser.step()
        alpha = alpha.detach().clamp(1e-8, cap)
    return changed


def _closed_form_direction(z: torch.Tensor, anchor: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """alpha / cap for the closed form: ||z* - z|| / (sqrt(d) ||g||) * g / (z* - z)."""
    gap = anchor - z
    scale = gap.norm(dim=1, keepdim=True) / (math.sqrt(z.shape[1]) * grads.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return scale * grads / (gap + 1e-8)


def _first_flip_cap(head: torch.nn.Linear, z: torch.Tensor, anchors: torch.Tensor, grads: torch.Tensor,
                    predicted: torch.Tensor) -> torch.Tensor:
    """Per sample, the smallest cap at which some anchor's closed-form mix changes the prediction."""
    with torch.no_grad():
        base = head(z)
        rows = torch.arange(len(z), device=z.device)
        margin = base[rows, predicted][:, None] - base  # >= 0, the predicted class leads
        best = torch.full((len(z),), float("inf"), dtype=z.dtype, device=z.device)
        for anchor in anchors:
            direction = _closed_form_direction(z, anchor, grads) * (anchor - z)
            slope = direction @ head.weight.T.to(z.dtype)
            slope = slope - slope[rows, predicted][:, None]
            cap = torch.where(slope > 0, margin / slope.clamp_min(1e-30), torch.full_like(margin, float("inf")))
            best = torch.minimum(best, cap.min(1).values)
    return best


def _predictions_and_gradients(classify: Classifier, z: torch.Tensor, closed_form: bool
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Predicted labels of ``z`` and, for the closed form, each row's gradient of the cross-entropy
    at its predicted label (summed loss: a row's gradient does not depend on its batch; the
    closed form only uses its direction)."""
    with torch.no_grad():
        predicted = classify(z).argmax(1)
    if not closed_form:
        return predicted, None
    z_var = z.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(classify(z_var), predicted, reduction="sum")
    return predicted, torch.autograd.grad(loss, z_var)[0]


def alfamix_candidates(embeddings: torch.Tensor, classify: Classifier, anchors: torch.Tensor, budget: int,
                       mode: str = "closed_form", cap_step: float = 1 / 32, seed: int = 0, chunk: int = 16_384
                       ) -> torch.Tensor:
    """Boolean mask over ``embeddings`` of the samples whose prediction an anchor mix flips.
    Rows are processed ``chunk`` at a time (every row's test is its own), so the temporaries are
    chunk x (d + C) whatever the pool size."""
    if mode not in ("closed_form", "optimised"):
        raise ValueError(f"ALFA-Mix alpha must be 'closed_form' or 'optimised', got {mode!r}")
    z = embeddings if embeddings.is_floating_point() else embeddings.float()
    anchors = anchors.to(z.device, z.dtype)
    closed_form = mode == "closed_form"
    blocks = [slice(start, start + chunk) for start in range(0, len(z), chunk)]
    if closed_form and isinstance(classify, torch.nn.Linear):  # one pass gives every row's first flipping cap
        def first_flip_of(rows: slice) -> torch.Tensor:
            predicted, grads = _predictions_and_gradients(classify, z[rows], True)
            return _first_flip_cap(classify, z[rows], anchors, grads, predicted)

        first_flip = torch.cat([first_flip_of(rows) for rows in blocks]) if blocks else z.new_zeros(0)
        cap = 0.0
        candidate = torch.zeros(len(z), dtype=torch.bool, device=z.device)
        while cap < 1.0:
            cap += cap_step
            candidate = first_flip < cap
            if int(candidate.sum()) > budget:
                break
        return candidate
    generator = torch.Generator().manual_seed(seed)
    candidate = torch.zeros(len(z), dtype=torch.bool, device=z.device)
    cap = 0.0
    while cap < 1.0:
        cap += cap_step
        for rows in blocks:
            predicted, grads = _predictions_and_gradients(classify, z[rows], closed_form)
            for anchor in anchors:
                if grads is not None:
                    direction = cap * _closed_form_direction(z[rows], anchor, grads)
                    candidate[rows] |= _changes(classify, z[rows], anchor, direction, predicted)
                else:
                    candidate[rows] |= _optimised_changes(classify, z[rows], anchor, predicted, cap, generator)
        if int(candidate.sum()) > budget:
            break
    return candidate


def alfamix_select(embeddings: torch.Tensor, classify: Classifier, anchors: torch.Tensor, budget: int,
                   rng: np.random.Generator, mode: str = "closed_form", seed: int = 0) -> np.ndarray:
    """Rows of ``embeddings``: one candidate per k-means centre, random rows to fill."""
    budget = min(budget, len(embeddings))
    candidate = alfamix_candidates(embeddings, classify, anchors, budget, mode, seed=seed).cpu()
    rows = torch.nonzero(candidate)[:, 0].numpy()
    picks = np.empty(0, dtype=np.int64)
    if len(rows):
        feats = F.normalize(embeddings[rows].float().cpu(), dim=1).numpy()
        centres, _ = kmeans(feats, min(budget, len(rows)), seed=seed)
        picks = rows[nearest_to_centres(feats, centres)]
    if len(picks) < budget:
        rest = np.setdiff1d(np.arange(len(embeddings)), picks)
        picks = np.concatenate([picks, rng.choice(rest, budget - len(picks), replace=False)])
    return picks
