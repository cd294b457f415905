"""LP-SEMI, the per-cycle training of "Rethinking deep active learning" (Simeoni et al., ICPR 2020,
Algorithm 1 lines 4-7, sections 3-4 and 6.1), which is inductive label propagation (Iscen et al.,
CVPR 2019) with weighted mini-batch sampling.

Per fit: ``warmup_epochs`` epochs of SUP (cross-entropy on the labeled batch alone, line 4), then
before every epoch LP (line 6): the features of the whole train split under the current model feed
label propagation on a kNN graph (:func:`al_lightning.ops.label_propagation`: k = 50,
s = [u.v]_+^3, alpha = 0.99, conjugate gradient; Eq. 8-10), giving every unlabeled sample a
pseudo-label y_i = argmax p_i and a weight w_i = 1 - H(p_i) / log c; then SEMI (line 7): the
standard cost J (Eq. 2), cross-entropy averaged over the whole mini-batch, whose labeled part is
drawn uniformly from L (true labels) and whose unlabeled part is drawn with replacement from the
l1-normalised weights on U (pseudo-labels). An epoch ends after ``unlabeled_epoch_fraction`` |U|
pseudo-labeled draws (half, section 6.1).

Decisions where the paper leaves room, with what the reference code does:

* Warm-up length: the released code (osimeoni/RethinkingDeepActiveLearning, main_al.py) runs no
  SUP epoch inside a cycle: it propagates on the features of the freshly initialised (or PRE)
  model before the first epoch and after every epoch from the second on. Iscen et al.'s code
  (ahmetius/LP-DeepSSL) instead starts from a separate 180-epoch supervised run (train_stage1.py).
  Algorithm 1 is explicit that SUP comes first (line 4) but not about its length, so the default is
  the shortest SUP that exists: one epoch, after which the first propagation runs on features
  trained on L rather than on a random network; ``warmup_epochs: 0`` is the released code.
* Features: the student (``self.model``) in eval mode, as both codes (neither propagates with an
  EMA teacher), on un-augmented images (both codes happen to embed their training augmentation).
* Weights enter through sampling only, as the paper's text says ("Different than [15] ... we take
  weights into account in mini-batch sampling"). The released code also multiplies each
  pseudo-labeled loss by its weight (``is_pW`` forced on with label propagation) and draws the
  half-epoch without replacement (``lp_mode='prob'``); it computes class weights but applies
  them only when ``is_cW == 4`` (never by default). The loss is the mean over the concatenated
  batch, as in both codes (sum / mini-batch size).
* Graph and label matrix: see :mod:`al_lightning.ops.label_propagation` (union graph as the codes,
  zero-one Y as Eq. 8).

State: ``pseudo_labels`` and ``weights`` over the pool (labeled ids keep their label, weight 1),
computed on rank 0 and broadcast, so every rank samples the same stream and reads the same
pseudo-labels. The step hands the scoring callbacks nothing for unlabeled samples: there is no
strong view, and :class:`~al_lightning.scoring.OnlineScoring` needs one (``probs_strong``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from al_lightning.methods.base import SSLMethod
from al_lightning.methods.inference import pool_inference
from al_lightning.methods.registry import register_method
from al_lightning.ops.label_propagation import Graph, label_propagation


@register_method("lp_semi")
class LPSemi(SSLMethod):
    """Args (besides :class:`SSLMethod`'s):
        warmup_epochs: supervised epochs on L before the first propagation of each fit.
        k: neighbours per node of the kNN graph (50).
        alpha: propagation weight alpha of Eq. 9 (0.99).
        gamma: affinity exponent, s = [u.v]_+^gamma (3).
        graph: ``union`` (W = A + A^T, the codes) or ``mutual`` (reciprocal kNN, the text).
        cg_iterations: conjugate-gradient iterations per propagation (20, both codes).
        unlabeled_epoch_fraction: pseudo-labeled draws per epoch as a fraction of |U| (0.5).
    """

    #: the paper's augmentation (random translation and horizontal flip) is the weak view
    unlabeled_views = ("weak",)
    #: an epoch's propagation reads the weights of the epoch's start, which a mid-fit checkpoint
    #: does not hold: a resumed run restarts an interrupted fit from its beginning
    resumable_mid_fit = False

    def __init__(self, warmup_epochs: int = 1, k: int = 50, alpha: float = 0.99, gamma: float = 3.0,
                 graph: Graph = "union", cg_iterations: int = 20, unlabeled_epoch_fraction: float = 0.5,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if warmup_epochs < 0 or k < 1 or not 0.0 <= alpha < 1.0 or cg_iterations < 1 or unlabeled_epoch_fraction <= 0:
            raise ValueError("LPSemi needs warmup_epochs >= 0, k >= 1, 0 <= alpha < 1, cg_iterations >= 1 and "
                             "unlabeled_epoch_fraction > 0")
        if graph not in ("union", "mutual"):
            raise ValueError(f"graph must be 'union' or 'mutual', got {graph!r}")
        self.warmup_epochs, self.k, self.alpha, self.gamma = warmup_epochs, k, alpha, gamma
        self.graph, self.cg_iterations = graph, cg_iterations
        self.unlabeled_epoch_fraction = unlabeled_epoch_fraction
        self.pseudo_labels = torch.empty(0, dtype=torch.long)
        self.weights = torch.empty(0)
        #: the weights the sampler reads; None (uniform) until this fit's first propagation
        self.sampling_weights: torch.Tensor | None = None

    # ------------------------------------------------------------ per-sample state
    def reset_sample_state(self, pool_size: int, unlabeled: np.ndarray) -> None:
        """No pseudo-label yet (-1), uniform weights, and uniform sampling until the first propagation."""
        self.pseudo_labels = torch.full((pool_size,), -1, dtype=torch.long, device=self.device)
        self.weights = torch.ones(pool_size, device=self.device)
        self.sampling_weights = None

    def sample_state(self) -> dict[str, Any]:
        return {"pseudo_labels": self.pseudo_labels.cpu(), "weights": self.weights.cpu()}

    def unlabeled_weights(self, ids: np.ndarray) -> np.ndarray:
        """Sampling weights of ``ids``, read by the data module when an epoch's indices are drawn;
        uniform before this fit's first propagation (warm-up epochs, and the first epoch of a
        loader with workers: see :meth:`on_fit_start`)."""
        if self.sampling_weights is None:
            return np.ones(len(ids))
        return self.sampling_weights[torch.as_tensor(ids, device=self.sampling_weights.device)].double().cpu().numpy()

    # ------------------------------------------------------------ label propagation
    def on_fit_start(self) -> None:
        """Resets the state and, without warm-up, propagates for the first epoch here rather than in
        ``on_train_epoch_start``: Lightning creates the first epoch's loader iterator before that
        hook (``FitLoop.run`` calls ``setup_data``, which calls ``iter``). Without loader workers
        the indices are still drawn in time, at the epoch's first batch (the batch sampler is a
        lazy generator). With workers they are drawn when the iterator is created, and that can be
        before this hook too: ``configure_optimizers`` reads ``trainer.estimated_stepping_batches``
        for every schedule but ``none``, which runs ``setup_data`` inside ``strategy.setup``. That
        first epoch then samples U uniformly (still with LP pseudo-labels)."""
        super().on_fit_start()
        pool = self.trainer.datamodule.pool
        labeled = pool.labeled_indices
        self.pseudo_labels[torch.as_tensor(labeled, device=self.device)] = \
            torch.as_tensor(pool.labels_of(labeled), device=self.device)
        if self.warmup_epochs == 0:
            self.update_pseudo_labels()

    def on_train_epoch_start(self) -> None:
        """From the second epoch on, the loader's iterator is created after this hook
        (``TrainingEpochLoop.on_run_start``), so weights set here drive this epoch's draws."""
        if self.current_epoch > 0 and self.current_epoch >= self.warmup_epochs:
            self.update_pseudo_labels()

    def on_train_end(self) -> None:
        """The next fit's first loader iterator may be created before its ``on_fit_start``: let it
        sample uniformly rather than with this fit's last weights."""
        self.sampling_weights = None

    def pool_features(self) -> torch.Tensor:
        """Student features of every pool id, in id order, identical on every rank."""
        datamodule = self.trainer.datamodule
        return pool_inference(self.model, datamodule.inference_dataloader, np.arange(datamodule.pool.size),
                              self.device, outputs=("embeddings",))["embeddings"]

    def propagate(self, features: Any, labeled: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(pseudo_labels, weights)`` over all rows of ``features`` (Eq. 8-10)."""
        _, pseudo, weights = label_propagation(features, labeled, labels, self.num_classes, self.k, self.alpha,
                                               self.gamma, self.cg_iterations, self.graph)
        return pseudo.astype(np.int64), weights.astype(np.float32)

    def update_pseudo_labels(self) -> None:
        """LP on rank 0, broadcast to every rank (all ranks embed their shard of the pool)."""
        pool = self.trainer.datamodule.pool
        features = self.pool_features()
        labeled = pool.labeled_indices
        result = self.propagate(features, labeled, pool.labels_of(labeled)) if self.trainer.is_global_zero else None
        pseudo, weights = self.trainer.strategy.broadcast(result, src=0)
        self.pseudo_labels = torch.as_tensor(pseudo, device=self.device)
        self.weights = self.sampling_weights = torch.as_tensor(weights, device=self.device)

    # ------------------------------------------------------------ the step
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        labeled = batch["labeled"]
        x, y = labeled["weak"], labeled["target"]
        unlabeled = batch.get("unlabeled")
        if unlabeled is None or self.current_epoch < self.warmup_epochs:
            return self.labeled_step(labeled)
        pseudo = self.pseudo_labels[unlabeled["index"]]
        per_sample = F.cross_entropy(self.model(torch.cat([x, unlabeled["weak"]])), torch.cat([y, pseudo]),
                                     reduction="none")
        loss = per_sample.mean()
        self.log_train("loss_x", per_sample[: len(y)].detach().mean())
        self.log_train("loss_u", per_sample[len(y):].detach().mean())
        self.log_train("loss", loss)
        return loss
