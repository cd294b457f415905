"""SimSiam (Chen & He 2021), the self-supervised pre-training AS3L builds on (AS3L section 5.1.2:
"We adhere to the hyper-parameter settings proposed by SimSiam").

Two views ``x1, x2`` of an image pass the backbone and projector ``f`` (``z = f(x)``) and the predictor
``h`` (``p = h(z)``); the loss is Eq. 2 with the stop-gradient of Eq. 1:
``L = -(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2``.

Defaults are the paper's CIFAR setting (appendix D): projection MLP of 2 layers, 2048-d, BN on each
fc including the output fc (whose BN has no affine part, as the official code), no ReLU on the
output; prediction MLP 2048-512-2048 with BN and ReLU on its hidden layer only; SGD, momentum 0.9,
weight decay 5e-4 on every parameter, lr = 0.03 x batch / 256 with batch 512, cosine decay (here per
step; the official code steps it per epoch), and the predictor's learning rate kept fixed (Table 1c,
the code's ``--fix-pred-lr``). The heads and the loss are lightly's: its generic
``ProjectionHead`` with the 2-layer CIFAR blocks (its ``SimSiamProjectionHead`` is the 3-layer
ImageNet one), ``SimSiamPredictionHead`` and ``NegativeCosineSimilarity``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import ProjectionHead, SimSiamPredictionHead
from torch import nn

from al_lightning.data import ImageSplits
from al_lightning.pretrain.augment import ContrastiveView
from al_lightning.pretrain.base import PretrainMethod
from al_lightning.pretrain.registry import register_pretrainer


def simsiam_projector(input_dim: int, dim: int, layers: int) -> ProjectionHead:
    """``layers`` fc layers of width ``dim``, each followed by BN; ReLU on all but the output."""
    blocks = [(input_dim if i == 0 else dim, dim,
               nn.BatchNorm1d(dim, affine=i < layers - 1), nn.ReLU() if i < layers - 1 else None)
              for i in range(layers)]
    return ProjectionHead(blocks)


@register_pretrainer("simsiam")
class SimSiam(PretrainMethod):
    """Args (beyond :class:`PretrainMethod`'s):
        projection_dim: width of the projection MLP and of ``z`` (2048).
        projection_layers: fc layers of the projection MLP (2 on CIFAR, 3 on ImageNet).
        predictor_hidden_dim: bottleneck of the prediction MLP (512).
        fixed_predictor_lr: keep the predictor's learning rate constant while the rest decays.
        crop_min_scale: smallest crop area fraction of a view (0.2).
    """

    def __init__(self, backbone: str = "wrn28_2", num_classes: int = 10, in_channels: int = 3,
                 backbone_kwargs: dict[str, Any] | None = None, projection_dim: int = 2048,
                 projection_layers: int = 2, predictor_hidden_dim: int = 512, fixed_predictor_lr: bool = True,
                 crop_min_scale: float = 0.2, base_lr: float = 0.03, lr_batch_scaling: bool = True,
                 momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 5e-4,
                 decay_all_parameters: bool = True, optimizer: Literal["sgd", "lars"] = "sgd",
                 scheduler: Literal["cosine", "none"] = "cosine", warmup_epochs: int = 0, knn_k: int = 200,
                 knn_temperature: float = 0.1) -> None:
        super().__init__(backbone, num_classes, in_channels, backbone_kwargs, base_lr, lr_batch_scaling, momentum,
                         nesterov, weight_decay, decay_all_parameters, optimizer, scheduler, warmup_epochs, knn_k,
                         knn_temperature)
        if projection_layers < 2:
            raise ValueError("the SimSiam projection MLP has at least 2 layers")
        self.projector = simsiam_projector(self.backbone.num_features, projection_dim, projection_layers)
        self.predictor = SimSiamPredictionHead(projection_dim, predictor_hidden_dim, projection_dim)
        self.criterion = NegativeCosineSimilarity()

    def view_transforms(self, splits: ImageSplits) -> list:
        view = ContrastiveView(splits.image_size, splits.hflip, splits.mean, splits.std, self.hparams.crop_min_scale)
        return [view, view]

    def symmetric_loss(self, p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Eq. 2 with the stop-gradient on ``z``."""
        return 0.5 * (self.criterion(p1, z2.detach()) + self.criterion(p2, z1.detach()))

    def pretext_loss(self, views: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        z1, z2 = (self.projector(self.backbone.embed(x)) for x in views)  # one forward per view, as the paper
        return self.symmetric_loss(self.predictor(z1), self.predictor(z2), z1, z2)

    def heads(self) -> dict[str, nn.Module]:
        return {"projector": self.projector, "predictor": self.predictor}

    def fixed_lr_modules(self) -> list[nn.Module]:
        return [self.predictor] if self.hparams.fixed_predictor_lr else []
