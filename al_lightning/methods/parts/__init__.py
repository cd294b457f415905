"""Composable parts of pseudo-label methods, one file each (see :mod:`.base`)."""

from al_lightning.methods.parts.base import MethodPart, PseudoLabelStep
from al_lightning.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["MethodPart", "PseudoLabelStep"]
