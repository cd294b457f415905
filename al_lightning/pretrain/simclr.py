"""SimCLR (Chen et al. 2020): contrast two views of each image against every other view in the batch.

``z = g(f(x))`` with the projection MLP ``g`` (section 2.1: ``W2 relu(W1 h)``, hidden width = the
backbone's feature width, 128-d output; BN on both layers as in the reference code), and the NT-Xent
loss of Eq. 1 averaged over all 2N anchors (Algorithm 1): the positive is the other view of the same
image, the 2N - 2 other views are the negatives, cosine similarities over a temperature (0.5, the
CIFAR-10 value of appendix B.9). Under DDP the views of every rank are gathered *with* gradient
(lightly's ``NTXentLoss(gather_distributed=True)``), so the negatives are the global batch's.

Defaults are SimCLR's CIFAR-10 run (appendix B.9 and the CIFAR-10 command of google-research/simclr):
batch 512, LARS with momentum 0.9, lr = 1.0 x batch / 256, weight decay 1e-4 off BN and biases
(which LARS also leaves unscaled), 10 warm-up epochs, then cosine decay; views cropped with area
fraction (0.08, 1). Head, loss and LARS are lightly's (``SimCLRProjectionHead``, ``NTXentLoss``, ``LARS``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import SimCLRProjectionHead
from torch import nn

from al_lightning.data import ImageSplits
from al_lightning.pretrain.augment import ContrastiveView
from al_lightning.pretrain.base import PretrainMethod
from al_lightning.pretrain.registry import register_pretrainer


@register_pretrainer("simclr")
class SimCLR(PretrainMethod):
    """Args (beyond :class:`PretrainMethod`'s):
        projection_dim: output width of the projection MLP (128).
        temperature: NT-Xent temperature (0.5).
        crop_min_scale: smallest crop area fraction of a view (0.08).
    """

    def __init__(self, backbone: str = "wrn28_2", num_classes: int = 10, in_channels: int = 3,
                 backbone_kwargs: dict[str, Any] | None = None, projection_dim: int = 128,
                 temperature: float = 0.5, crop_min_scale: float = 0.08, base_lr: float = 1.0,
                 lr_batch_scaling: bool = True, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 1e-4, decay_all_parameters: bool = False,
                 optimizer: Literal["sgd", "lars"] = "lars", scheduler: Literal["cosine", "none"] = "cosine",
                 warmup_epochs: int = 10, knn_k: int = 200, knn_temperature: float = 0.1) -> None:
        super().__init__(backbone, num_classes, in_channels, backbone_kwargs, base_lr, lr_batch_scaling, momentum,
                         nesterov, weight_decay, decay_all_parameters, optimizer, scheduler, warmup_epochs, knn_k,
                         knn_temperature)
        width = self.backbone.num_features
        self.projector = SimCLRProjectionHead(width, width, projection_dim, num_layers=2, batch_norm=True)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def view_transforms(self, splits: ImageSplits) -> list:
        view = ContrastiveView(splits.image_size, splits.hflip, splits.mean, splits.std, self.hparams.crop_min_scale)
        return [view, view]

    def pretext_loss(self, views: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.projector(self.backbone.embed(torch.cat(views))).chunk(2)  # one 2N batch, as the reference
        return self.criterion(z1, z2)

    def heads(self) -> dict[str, nn.Module]:
        return {"projector": self.projector}
