"""Acquisition strategies, one file each, registered on import."""

from al_lightning.registry import import_submodules
from al_lightning.strategies.base import (STRATEGIES, AcquisitionContext, FeatureKind, RandomNetworkError, Strategy,
                                         register_strategy, top_k)

import_submodules(__name__, __path__)

from al_lightning.strategies.active_ft import ActiveFT  # noqa: E402
from al_lightning.strategies.alfamix import ALFAMix  # noqa: E402
from al_lightning.strategies.as3l import AS3L  # noqa: E402
from al_lightning.strategies.assl import ASSL  # noqa: E402
from al_lightning.strategies.assl_div import ASSLDiv  # noqa: E402
from al_lightning.strategies.badge import BADGE  # noqa: E402
from al_lightning.strategies.budget_aware import BudgetAware  # noqa: E402
from al_lightning.strategies.cdal import CDAL  # noqa: E402
from al_lightning.strategies.ceal import CEAL  # noqa: E402
from al_lightning.strategies.coreset import CoreSet  # noqa: E402
from al_lightning.strategies.entropy import Entropy  # noqa: E402
from al_lightning.strategies.jlp import JLP  # noqa: E402
from al_lightning.strategies.kmedoids import KMedoids  # noqa: E402
from al_lightning.strategies.least_confidence import LeastConfidence  # noqa: E402
from al_lightning.strategies.margin import Margin  # noqa: E402
from al_lightning.strategies.noise_stability import NoiseStability  # noqa: E402
from al_lightning.strategies.probcover import ProbCover  # noqa: E402
from al_lightning.strategies.random import Random  # noqa: E402
from al_lightning.strategies.typiclust import TypiClust  # noqa: E402
from al_lightning.strategies.usl import USL  # noqa: E402
from al_lightning.strategies.usl_t import USLT  # noqa: E402

__all__ = ["AcquisitionContext", "ActiveFT", "ALFAMix", "AS3L", "ASSL", "ASSLDiv", "BADGE", "BudgetAware", "CDAL", "CEAL",
           "CoreSet", "Entropy", "FeatureKind", "JLP", "KMedoids", "LeastConfidence", "Margin",
           "NoiseStability", "ProbCover", "Random", "RandomNetworkError", "register_strategy", "STRATEGIES",
           "Strategy", "top_k", "TypiClust", "USL", "USLT"]
