"""AS3L's prior pseudo-label (PPL) guidance (Wen, Pizarro, Williams, section 4.2, Eq. 4-5) for any
pseudo-label method of the family.

For the first T steps of a fit the pseudo-label target of an unlabeled sample is

    y_post = normalize(y_prior + y_pre,w)                                   (Eq. 5, t <= T)

and the model's prediction y_pre,w alone afterwards; the method then thresholds and takes the
argmax of y_post (Eq. 4). y_prior comes from constrained seed k-means over features of the whole
pool (section 4.3, :func:`al_lightning.ops.prior_pseudo_labels`), recomputed at the start of every
fit because the labeled set changed, from the pool's labels of labeled samples only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from al_lightning.methods.inference import pool_inference
from al_lightning.methods.parts.base import MethodPart
from al_lightning.ops.as3l import finetune_features, prior_pseudo_labels

log = logging.getLogger(__name__)

#: the paper switches at the 60th epoch (section 5.1.2) of 1024-iteration epochs (the epoch length
#: of USB's classic-CV FlexMatch configs, 1024 epochs x 1024 iterations = 2^20)
PAPER_SWITCH_STEP = 60 * 1024


def load_matrix(path: str | Path, key: str, rows: int, columns: int | None = None) -> torch.Tensor:
    """A ``(rows, columns)`` float matrix from a ``.pt`` (a tensor) or ``.npy`` file; any other
    content raises a one-line error naming the option ``key`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PriorGuidance {key}: no file at {path}")
    if path.suffix == ".npy":
        matrix = torch.from_numpy(np.load(path))
    elif path.suffix in (".pt", ".pth"):
        matrix = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(matrix, torch.Tensor):
            raise ValueError(f"PriorGuidance {key}: {path} holds a {type(matrix).__name__}, not a tensor")
    else:
        raise ValueError(f"PriorGuidance {key}: {path} is neither .pt nor .npy")
    expected = f"({rows}, {'d' if columns is None else columns})"
    if matrix.ndim != 2 or matrix.shape[0] != rows or (columns is not None and matrix.shape[1] != columns):
        raise ValueError(f"PriorGuidance {key}: {path} has shape {tuple(matrix.shape)}, expected {expected} "
                         "(one row per pool id)")
    return matrix.float()


class PriorGuidance(MethodPart):
    """Mixes prior pseudo-labels into the pseudo-label targets for the first ``switch_step`` steps.

    Steps are counted as the optimizer steps already taken in the current fit (0 at the first
    step): Eq. 5's t is 1-based, so ``t <= T`` is ``step < switch_step`` and exactly the first
    ``switch_step`` steps use the prior. "normalize" is division by the row sum (both terms are
    distributions, so y_post is their average).

    Args:
        switch_step: T of Eq. 5, in optimizer steps of each fit (default: the paper's 60 epochs of
            1024 iterations).
        features: what the clustering of section 4.3 runs on: ``pretrained`` (the cached features
            of the method's pre-training run, ``model.init_args.pretrained``: the paper's f_self),
            ``embedding`` (the method's EMA model at the start of the fit), ``pixels`` (flattened
            normalised images) or the path of a ``.pt``/``.npy`` file of shape ``(pool_size, d)``
            in pool-id order.
        finetune: first fine-tune the features with AS3L's Eq. 6 (K = the number of labels, as
            the selection), so the clustering runs on f_fine as in section 4.3-4.4.
        prior_file: path of a ready ``(pool_size, num_classes)`` PPL matrix; then ``features``
            is not used and nothing is computed.
        cluster_counts: the K of each constrained seed k-means run (default C x [1..6], the
            paper's 10..60 for CIFAR-10's 10 classes).
        seed: seed of the k-means runs.
    """

    def __init__(self, switch_step: int = PAPER_SWITCH_STEP, features: str = "embedding",
                 finetune: bool = False, prior_file: str | None = None,
                 cluster_counts: Sequence[int] | None = None, seed: int = 0) -> None:
        super().__init__()
        if switch_step < 0:
            raise ValueError(f"PriorGuidance.switch_step must be >= 0, got {switch_step}")
        self.switch_step, self.features, self.prior_file = switch_step, features, prior_file
        self.finetune = finetune
        self.cluster_counts = None if cluster_counts is None else list(cluster_counts)
        self.seed = seed
        self.prior: torch.Tensor | None = None

    def reset(self, method: Any, pool_size: int, unlabeled: np.ndarray) -> None:
        """Rank 0 loads or computes y_prior and broadcasts it, so every rank holds the same one."""
        trainer = getattr(method, "_trainer", None)
        if trainer is None and self.prior_file is None:
            raise RuntimeError("PriorGuidance computes the prior from the pool of the trainer's data module: "
                               "reset it inside a fit, or give prior_file")
        features = None
        if self.prior_file is None and self.features == "embedding":
            # a collective over all ranks: each embeds its shard, every rank gets all rows
            features = pool_inference(method.inference_model, trainer.datamodule.inference_dataloader,
                                      np.arange(pool_size), method.device, outputs=("embeddings",))["embeddings"]
        prior = None
        if trainer is None or trainer.is_global_zero:
            prior = self._build(method, trainer, pool_size, unlabeled, features)
        if trainer is not None:
            prior = trainer.strategy.broadcast(prior, src=0)
        self.prior = prior.to(method.device)

    def _build(self, method: Any, trainer: Any, pool_size: int, unlabeled: np.ndarray,
               features: torch.Tensor | None) -> torch.Tensor:
        if self.prior_file is not None:
            return load_matrix(self.prior_file, "prior_file", pool_size, method.num_classes)
        if features is None and self.features == "pretrained":
            features = method.pretrained_features()
            if features is None:
                raise ValueError("PriorGuidance features: pretrained needs model.init_args.pretrained (the run "
                                 "directory of 'al-lightning pretrain')")
        if features is None:
            features = (self._pixels(trainer.datamodule, pool_size) if self.features == "pixels"
                        else load_matrix(self.features, "features", pool_size))
        labeled = np.setdiff1d(np.arange(pool_size), np.asarray(unlabeled, dtype=np.int64))
        labels = trainer.datamodule.pool.labels_of(labeled)
        if self.finetune:
            features = finetune_features(features.float(), num_clusters=len(labeled), seed=self.seed)[0]
        prior = torch.from_numpy(prior_pseudo_labels(features.float().cpu().numpy(), labeled, labels,
                                                     method.num_classes, self.cluster_counts, self.seed)).float()
        log.info("prior pseudo-labels of %d samples from %s features: mean confidence %.3f", pool_size,
                 "file" if self.features not in ("pixels", "embedding", "pretrained") else self.features,
                 prior.max(dim=1).values.mean().item())
        return prior

    @staticmethod
    def _pixels(datamodule: Any, pool_size: int) -> torch.Tensor:
        batches = list(datamodule.inference_dataloader(np.arange(pool_size)))
        return torch.cat([batch["plain"].flatten(1) for batch in batches]).float()

    def guide(self, targets: torch.Tensor, index: torch.Tensor, step: int) -> torch.Tensor:
        """Eq. 5: y_post while ``step < switch_step``, the targets unchanged afterwards."""
        if step >= self.switch_step:
            return targets
        if self.prior is None:
            raise RuntimeError("PriorGuidance has no prior: reset() runs at the start of a fit")
        mixed = self.prior[index].to(targets.dtype) + targets
        return mixed / mixed.sum(dim=-1, keepdim=True)

    def state(self) -> dict[str, Any]:
        return {} if self.prior is None else {"prior": self.prior.cpu()}

    def load_state(self, state: dict[str, Any]) -> None:
        """The prior of the fit's start (``reset`` recomputed it from the checkpoint's weights)."""
        if "prior" in state:
            self.prior = state["prior"].to(self.prior.device if self.prior is not None else "cpu")
