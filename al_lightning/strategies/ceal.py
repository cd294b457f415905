"""CEAL, Cost-Effective Active Learning (Wang et al., IEEE TCSVT 2017), as the baseline of "Rethinking
deep active learning" (Simeoni et al., Eq. 6-7): acquire the ``budget`` most uncertain unlabeled
samples by entropy, and train the next fit also on the most certain ones,
L^ = {i in U : H(p_i) <= epsilon}, with their predicted labels argmax p_i. The pseudo-labels last
one fit (the loop hands them to the data module, which adds them to the labeled training set, and
replaces them at the next acquisition); picks are never among them. (The released Rethinking code
writes them into its dataset but its labeled-only sampler never draws them; the text is followed.)

Threshold: CEAL decays it linearly with the iteration, delta_t = delta_0 - dr * t, on the raw
entropy, with a dataset-specific delta_0 (public re-implementations of CEAL on Caltech-256 use
delta_0 = 0.005, dr = 0.00033, one iteration per acquisition). The Rethinking code
(lib/selection_methods.py ``CEAL``, main_al.py) thresholds the entropy divided by log c, so one
value fits any number of classes, with ``ceal_th`` = 0.1 and dr = 0.00033 per cycle, t the cycle
just trained (0 for the initial fit), on the same model that acquired. Defaults follow the
Rethinking code; ``delta_0`` is on the normalised scale, i.e. epsilon = delta_t log c in Eq. 7.

Args:
    delta_0: threshold on H(p) / log c after the initial fit.
    decay: dr, subtracted once per cycle.
"""

from __future__ import annotations

import math

import numpy as np

from al_lightning.strategies.base import AcquisitionContext, register_strategy
from al_lightning.strategies.entropy import Entropy


@register_strategy("ceal")
class CEAL(Entropy):
    #: the entropy ranks and thresholds (float64: it compares values near 0.1 log C), the predicted
    #: class labels the certain samples; one pass computes both
    model_outputs = ("entropy", "predicted_class")

    def __init__(self, delta_0: float = 0.1, decay: float = 0.00033) -> None:
        self.delta_0, self.decay = delta_0, decay

    def threshold(self, cycle: int) -> float:
        """delta_t = delta_0 - dr * t on the normalised entropy."""
        return self.delta_0 - self.decay * cycle

    def pseudo_labels(self, context: AcquisitionContext, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unlabeled ids (ascending) whose normalised entropy is at most the cycle's threshold,
        picks excluded, with their argmax labels (Eq. 7)."""
        entropy = context.output("entropy").cpu().numpy() / math.log(context.num_classes)
        predicted = context.output("predicted_class").cpu().numpy()
        certain = (entropy <= self.threshold(context.cycle)) & ~np.isin(context.unlabeled, picks)
        return context.unlabeled[certain], predicted[certain]
