"""DeepCluster (Caron et al. 2018), the unsupervised pre-training (PRE) of "Rethinking deep active
learning" (section 4: "alternating between clustering the features by k-means and learning on cluster
assignment pseudo-labels"; section 6.1: "follow the settings of [5]").

At the start of every epoch (section 3.2-3.3 of DeepCluster):

1. the whole un-augmented train split goes through the backbone (sharded over ranks and gathered);
2. rank 0 PCA-whitens the features (``pca_dim``, 256 in DeepCluster), L2-normalises them and runs
   faiss k-means with ``k`` clusters (random initial centroids, as faiss's ``Clustering``), and
   broadcasts the assignments, so every rank holds the same pseudo-labels;
3. the classifier on top is re-initialised (weights N(0, 0.01), zero bias, fresh momentum buffers,
   as DeepCluster's ``top_layer``), identically on every rank;
4. the epoch samples uniformly over the non-empty clusters, then uniformly within each
   (:func:`al_lightning.pretrain.data.cluster_uniform_stream`), one train-split's worth of images.

The loss is the cross-entropy of the new head's logits against the pseudo-labels.

``k`` defaults to 5 x the number of classes, the Rethinking code's choice (``class_mltp = 5`` in
lib/pretraining.py of osimeoni/RethinkingDeepActiveLearning); DeepCluster's own k (10,000 on
ImageNet) does not carry over to 10-class data. Where the Rethinking code departs from DeepCluster,
this follows DeepCluster, the paper Rethinking says it follows: that code disables the PCA whitening
("Using PCA didn't help in our case": set ``pca_dim: null`` to drop it), keeps one classifier head
across epochs and samples every image once per epoch. Augmentation is the Rethinking code's train
transform (random translation by reflect-padding 4 pixels on 32x32 and a horizontal flip where the
dataset allows it), the data layer's ``weak`` view.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from al_lightning.data import ImageSplits
from al_lightning.data.transforms import build_views
from al_lightning.ops import kmeans
from al_lightning.pretrain.base import PretrainMethod
from al_lightning.pretrain.features import pca_whiten
from al_lightning.pretrain.registry import register_pretrainer


@register_pretrainer("deepcluster")
class DeepCluster(PretrainMethod):
    """Args (beyond :class:`PretrainMethod`'s):
        num_clusters: k of k-means; ``None``: ``clusters_per_class`` x the number of classes.
        clusters_per_class: see ``num_clusters`` (5, the Rethinking code).
        pca_dim: dimensions kept by the PCA whitening (256, DeepCluster; at most the feature width);
            ``None``: no PCA, only L2 normalisation (the Rethinking code).
        kmeans_iterations: Lloyd iterations per clustering (20 in DeepCluster's code, 10 in Rethinking's).
        seed: seeds each epoch's k-means and head initialisation (with the epoch).
    """

    def __init__(self, backbone: str = "cnn13", num_classes: int = 10, in_channels: int = 3,
                 backbone_kwargs: dict[str, Any] | None = None, num_clusters: int | None = None,
                 clusters_per_class: int = 5, pca_dim: int | None = 256, kmeans_iterations: int = 20,
                 seed: int = 0, base_lr: float = 0.05, lr_batch_scaling: bool = False, momentum: float = 0.9,
                 nesterov: bool = False, weight_decay: float = 1e-5, decay_all_parameters: bool = True,
                 optimizer: Literal["sgd", "lars"] = "sgd", scheduler: Literal["cosine", "none"] = "none",
                 warmup_epochs: int = 0, knn_k: int = 200, knn_temperature: float = 0.1) -> None:
        super().__init__(backbone, num_classes, in_channels, backbone_kwargs, base_lr, lr_batch_scaling, momentum,
                         nesterov, weight_decay, decay_all_parameters, optimizer, scheduler, warmup_epochs, knn_k,
                         knn_temperature)
        self.num_clusters = num_clusters or clusters_per_class * num_classes
        if self.num_clusters < 2 or (pca_dim is not None and pca_dim < 1):
            raise ValueError("DeepCluster needs at least 2 clusters and pca_dim >= 1 (or null)")
        self.cluster_head = nn.Linear(self.backbone.num_features, self.num_clusters)
        self.assignments: np.ndarray | None = None
        self.pseudo_labels: torch.Tensor | None = None
        self.clustered_epoch = -1

    def view_transforms(self, splits: ImageSplits) -> list:
        return [build_views(splits.image_size, splits.hflip, splits.mean, splits.std)["weak"]]

    def cluster_assignments(self) -> np.ndarray:
        """The current epoch's k-means assignment of every train id (the sampler's clusters).

        The first call clusters: Lightning may start the first epoch's loader iterator before any
        epoch hook (to count the steps of the schedule), and with loader workers the sampler is read
        right then. Every rank's main process asks at the same point, so the collectives line up."""
        if self.assignments is None:
            self.recluster()
        assert self.assignments is not None
        return self.assignments

    def cluster(self, features: torch.Tensor, seed: int) -> np.ndarray:
        """PCA-whiten, L2-normalise and k-means ``features``: a cluster id per row."""
        whitened = F.normalize(pca_whiten(features.float().cpu(), self.hparams.pca_dim), dim=1)
        _, assignments = kmeans(whitened, self.num_clusters, seed=seed, iterations=self.hparams.kmeans_iterations,
                                init="random")
        return assignments

    def recluster(self) -> None:
        epoch = self.current_epoch
        seed = self.hparams.seed * 1_000_003 + epoch
        features = self.embed_split("train")
        assignments = self.cluster(features, seed) if self.trainer.is_global_zero else None
        self.assignments = np.asarray(self.trainer.strategy.broadcast(assignments, src=0), dtype=np.int64)
        self.pseudo_labels = torch.as_tensor(self.assignments, device=self.device)
        self.reset_cluster_head(seed)
        self.clustered_epoch = epoch

    @torch.no_grad()
    def reset_cluster_head(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        weight = self.cluster_head.weight
        weight.copy_(torch.randn(weight.shape, generator=generator).mul_(0.01))
        self.cluster_head.bias.zero_()
        for optimizer in self.trainer.optimizers:
            for param in self.cluster_head.parameters():
                optimizer.state.pop(param, None)

    def on_train_epoch_start(self) -> None:
        if self.clustered_epoch != self.current_epoch:
            self.recluster()

    def pretext_loss(self, views: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        assert self.pseudo_labels is not None
        return F.cross_entropy(self.cluster_head(self.backbone.embed(views[0])), self.pseudo_labels[index])
