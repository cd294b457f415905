"""Composable parts of pseudo-label methods, one file each (see :mod:`.base`)."""

from al_lightning.methods.parts.base import MethodPart, PseudoLabelStep
from al_lightning.registry import import_submodules

import_submodules(__name__, __path__)

from al_lightning.methods.parts.feature_realignment import FeatureRealignment  # noqa: E402
from al_lightning.methods.parts.prior_guidance import PriorGuidance  # noqa: E402

__all__ = ["FeatureRealignment", "MethodPart", "PriorGuidance", "PseudoLabelStep"]
