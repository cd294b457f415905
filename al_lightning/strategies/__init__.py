"""Acquisition strategies, one file each, registered on import."""

from al_lightning.registry import import_submodules
from al_lightning.strategies.base import STRATEGIES, AcquisitionContext, Strategy, register_strategy, top_k

import_submodules(__name__, __path__)

from al_lightning.strategies.assl import ASSL  # noqa: E402
from al_lightning.strategies.entropy import Entropy  # noqa: E402
from al_lightning.strategies.random import Random  # noqa: E402

__all__ = ["ASSL", "AcquisitionContext", "Entropy", "Random", "STRATEGIES", "Strategy",
           "register_strategy", "top_k"]
