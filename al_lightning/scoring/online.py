"""Online per-sample scores of ASSL (Lim, Na, Kwak), accumulated while the model trains.

For every unlabeled sample seen in a step, with p_w / p_s the weak / strong-view probabilities:
    u = || p_w - onehot(argmax p_w) ||_2                                   (Eq. 1, pseudo-EL2N)
    i = ( KL(p_w || p_s) + KL(p_s || p_w) ) / 2                           (Eq. 4)
    m_t = alpha * x_t + (1 - alpha) * m_{t-1}                              (Eq. 3, 4)
    v_t = alpha * (x_t - m_t)^2 + (1 - alpha) * v_{t-1}                    (Eq. 3, 5)
    UCB = m_t + c * sqrt(v_t);  score = u_UCB * i_UCB                      (Eq. 6)
with m_0 = v_0 = 0. Temporal instability (Eq. 2) counts prediction flips between consecutive
observations; ``confident`` counts observations with max p_w >= threshold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from al_lightning.ops.indexing import occurrence_rank


def pseudo_el2n(probs: torch.Tensor) -> torch.Tensor:
    """Eq. 1: L2 distance between the prediction and the one-hot of its own argmax."""
    onehot = F.one_hot(probs.argmax(dim=-1), probs.shape[-1]).to(probs.dtype)
    return (probs - onehot).norm(dim=-1)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 4: (KL(p||q) + KL(q||p)) / 2 = sum (p - q)(log p - log q) / 2, row-wise."""
    return 0.5 * ((p - q) * (p.clamp_min(eps).log() - q.clamp_min(eps).log())).sum(dim=-1)


class OnlineScoreState:
    """The per-sample EMA/EMV/UCB state of a whole pool; updates are exact sequential replays."""

    FIELDS = ("u_mean", "u_var", "i_mean", "i_var", "last_pred", "flips", "confident", "seen")

    def __init__(self, size: int, alpha: float = 0.8, c_u: float = 0.5, c_i: float = 2.0,
                 threshold: float = 0.95, device: torch.device | str = "cpu") -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.size, self.alpha, self.c_u, self.c_i, self.threshold = size, alpha, c_u, c_i, threshold
        zeros = lambda dtype: torch.zeros(size, dtype=dtype, device=device)  # noqa: E731
        self.u_mean, self.u_var = zeros(torch.float64), zeros(torch.float64)
        self.i_mean, self.i_var = zeros(torch.float64), zeros(torch.float64)
        self.last_pred = torch.full((size,), -1, dtype=torch.int64, device=device)
        self.flips, self.confident, self.seen = zeros(torch.int64), zeros(torch.int64), zeros(torch.int64)

    def update(self, index: torch.Tensor, u: torch.Tensor, i: torch.Tensor, pred: torch.Tensor,
               confidence: torch.Tensor) -> None:
        """Apply observations in order; an id seen twice in one call is updated twice, in order."""
        if index.numel() == 0:
            return
        rank = occurrence_rank(index)
        for r in range(int(rank.max()) + 1):
            sel = rank == r
            self._apply(index[sel], u[sel].double(), i[sel].double(), pred[sel], confidence[sel])

    def _apply(self, idx, u, i, pred, confidence) -> None:
        a = self.alpha
        u_mean = a * u + (1 - a) * self.u_mean[idx]
        self.u_var[idx] = a * (u - u_mean) ** 2 + (1 - a) * self.u_var[idx]
        self.u_mean[idx] = u_mean
        i_mean = a * i + (1 - a) * self.i_mean[idx]
        self.i_var[idx] = a * (i - i_mean) ** 2 + (1 - a) * self.i_var[idx]
        self.i_mean[idx] = i_mean
        previous = self.last_pred[idx]
        self.flips[idx] += ((previous >= 0) & (previous != pred)).long()
        self.last_pred[idx] = pred
        self.confident[idx] += (confidence >= self.threshold).long()
        self.seen[idx] += 1

    @property
    def u_ucb(self) -> torch.Tensor:
        return self.u_mean + self.c_u * self.u_var.sqrt()

    @property
    def i_ucb(self) -> torch.Tensor:
        return self.i_mean + self.c_i * self.i_var.sqrt()

    @property
    def score(self) -> torch.Tensor:
        return self.u_ucb * self.i_ucb

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name).cpu() for name in self.FIELDS}
        state.update(size=self.size, alpha=self.alpha, c_u=self.c_u, c_i=self.c_i, threshold=self.threshold)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"score state is for a pool of {state['size']}, this pool has {self.size}")
        self.alpha, self.c_u, self.c_i, self.threshold = (state[k] for k in ("alpha", "c_u", "c_i", "threshold"))
        for name in self.FIELDS:
            getattr(self, name).copy_(state[name])
