"""Noise stability (Li et al., AAAI 2024, "Deep Active Learning with Noise Stability").

A sample is uncertain when small random perturbations of the weights move its prediction. Facts
from the official code (lixingjian/AL-noise-stability, ``noise_stability.py``):

- every parameter a module registers as ``weight`` (conv, linear and normalisation layers alike;
  biases and buffers untouched) gets Gaussian noise rescaled to exactly ``noise_scale`` times that
  tensor's Frobenius norm: ||eps||_F = 0.001 ||W||_F (``add_noise_to_weights``);
- the output is the softmax probability vector p(x); the change of perturbation k is
  (p_k(x) - p(x)) / ||p(x)||, and a sample's feature is the concatenation of its K changes
  (K x C values, K = 30 in the paper's runs);
- selection is greedy k-center on those features with the origin as the first centre
  (``kcenter_greedy`` starts from mu = 0), so the largest change (the most uncertain) comes
  first and later picks trade magnitude against diversity of the change directions.

At scale the K x C change values per sample do not fit (a million samples, K = 30 and C = 1,000
are 120 GB in float32). ``output_changes`` then takes a ``projection``: a fixed Gaussian matrix
``(K C, m) / sqrt(m)`` applied batch by batch (Johnson-Lindenstrauss), so k-center sees every
pairwise distance within a relative error of about 1 / sqrt(m) (3% at m = 1,024) in n x m memory.
This is our approximation: the official code holds the whole change matrix.

Perturbations are functional (:func:`torch.func.functional_call` with one perturbed weight dict
at a time), never model copies; perturbation k's noise is redrawn for every batch from its own seed,
so it is identical across batches and ranks while the pool is streamed once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call


@torch.no_grad()
def perturbed_weights(model: nn.Module, noise_scale: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every ``weight`` parameter plus noise of norm ``noise_scale * ||W||_F``, drawn from
    ``generator`` in ``named_parameters`` order; parameters left out of the dict (biases) keep
    their values under ``functional_call``."""
    perturbed = {}
    for name, weight in model.named_parameters():
        if name.rsplit(".", 1)[-1] != "weight":
            continue
        noise = torch.randn(weight.shape, generator=generator, device=weight.device, dtype=weight.dtype)
        perturbed[name] = weight + noise * (noise_scale * weight.norm() / noise.norm())
    return perturbed


def random_projection(rows: int, columns: int, seed: int, device: torch.device) -> torch.Tensor:
    """A ``(rows, columns)`` Gaussian matrix scaled by ``1 / sqrt(columns)`` (squared norms are
    preserved in expectation), the same for a seed on every rank."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, columns, generator=generator) / columns ** 0.5).to(device)


@torch.no_grad()
def output_changes(model: nn.Module, batches: Iterable[torch.Tensor], seeds: Sequence[int],
                   noise_scale: float = 1e-3, projection: torch.Tensor | None = None, total: int | None = None
                   ) -> torch.Tensor:
    """``(n, K * C)``: per sample, the K normalised probability changes
    ``(p_k(x) - p(x)) / ||p(x)||`` side by side, perturbation k drawn from ``seeds[k]``; with a
    ``projection`` ``(K * C, m)``, each batch's changes times it, ``(n, m)``. Given the number of
    samples ``total``, the rows are written into one tensor allocated once."""
    if noise_scale <= 0:
        raise ValueError(f"noise_scale must be positive, got {noise_scale}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows: list[torch.Tensor] = []
    out, start = None, 0
    for x in batches:
        clean = torch.softmax(model(x).float(), dim=1)
        scale = clean.norm(dim=1, keepdim=True)
        classes = clean.shape[1]
        width = len(seeds) * classes if projection is None else projection.shape[1]
        if total is None:
            block = clean.new_zeros(len(clean), width)
            rows.append(block)
        else:  # the batch's rows of the one output tensor: no per-batch copy of the K x C changes
            out = clean.new_zeros(total, width) if out is None else out
            block, start = out[start:start + len(clean)], start + len(clean)
        for k, seed in enumerate(seeds):
            generator = torch.Generator(device=device).manual_seed(int(seed))
            noisy = functional_call(model, perturbed_weights(model, noise_scale, generator), (x,))
            change = (torch.softmax(noisy.float(), dim=1) - clean) / scale
            if projection is None:
                block[:, k * classes:(k + 1) * classes] = change
            else:  # [c_1 ... c_K] @ P = sum_k c_k @ P_k: the batch's K x C changes are never side by side
                block.add_(change @ projection[k * classes:(k + 1) * classes])
    model.train(was_training)
    if out is not None:
        return out
    return torch.cat(rows) if rows else torch.empty(0, device=device)
