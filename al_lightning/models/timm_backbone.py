"""Any timm model as a backbone (``timm:<name>``, e.g. ``timm:vit_small_patch16_224``)."""

from __future__ import annotations

import torch
from torch import nn

from al_lightning.models.base import Backbone, register_backbone


class TimmBackbone(Backbone):
    def __init__(self, model_name: str, num_classes: int, in_channels: int = 3, **kwargs) -> None:
        super().__init__()
        import timm

        self.model = timm.create_model(model_name, pretrained=kwargs.pop("pretrained", False),
                                       num_classes=num_classes, in_chans=in_channels, **kwargs)
        self.num_features = self.model.num_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def head(self) -> nn.Module:
        return self.model.get_classifier()


@register_backbone("timm")
def timm_backbone(model_name: str, num_classes: int, in_channels: int = 3, **kwargs) -> TimmBackbone:
    return TimmBackbone(model_name, num_classes, in_channels, **kwargs)
