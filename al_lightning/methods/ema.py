"""The EMA teacher of FixMatch's reference code: parameters averaged, buffers copied."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMATeacher(nn.Module):
    """``theta_ema <- decay * theta_ema + (1 - decay) * theta`` after every optimizer step.

    BatchNorm running statistics are copied from the student rather than averaged, as in the
    reference implementation, so the teacher always normalises with the student's latest statistics.
    """

    def __init__(self, student: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> "EMATeacher":
        super().train(False)  # the teacher only ever evaluates
        return self

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        for ema_p, p in zip(self.module.parameters(), student.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), student.buffers()):
            ema_b.copy_(b)

    @torch.no_grad()
    def reset(self, student: nn.Module) -> None:
        self.module.load_state_dict(student.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)
