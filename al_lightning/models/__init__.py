"""Backbones: a decorator-filled registry and ``create_backbone(name, num_classes, in_channels)``."""

from al_lightning.models.base import BACKBONES, Backbone, create_backbone, register_backbone
from al_lightning.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["BACKBONES", "Backbone", "create_backbone", "register_backbone"]
