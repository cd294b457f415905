"""Online per-sample scoring (ASSL) and training diagnostics, as Lightning callbacks."""

from al_lightning.scoring.callbacks import OnlineScoring, PseudoLabelAccuracy
from al_lightning.scoring.online import OnlineScoreState, pseudo_el2n, symmetric_kl

__all__ = ["OnlineScoreState", "OnlineScoring", "PseudoLabelAccuracy", "pseudo_el2n", "symmetric_kl"]
