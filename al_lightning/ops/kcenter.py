"""Greedy k-center (CoreSet; Sener & Savarese 2018; Rethinking deep AL, Eq. 4).

Each pick is the point farthest from every centre so far. The min-distance vector is updated
incrementally, and a new centre only re-examines the clusters it can possibly steal from: a point
x of centre j is unaffected when ||c_new - c_j|| >= 2 r_j, where r_j is the largest distance
in cluster j (triangle inequality). Exact, O(n d) memory, never an n x n matrix.
"""

from __future__ import annotations

import torch


def _sq_dist(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (x_sq[:, None] + (c * c).sum(1)[None, :] - 2.0 * x @ c.T).clamp_min_(0.0)


#: the most feature values gathered at once when a new centre updates distances (8 MiB of float32:
#: a block stays in cache while its matrix-vector product reads it)
BLOCK_VALUES = 2**21
#: from this share of touched rows on, a new centre's distances are computed for every row in
#: place: at 1,000,000 x 512 the two cost the same at 0.7 of the rows gathered on one thread and at
#: 0.5 on two (reading in place is bound by memory bandwidth, more threads do not help it); a
#: gather into a fresh tensor rather than the reused block cost five times as much per row
DENSE_SHARE = 1 / 2


def _rows_per_block(x: torch.Tensor) -> int:
    return max(1, BLOCK_VALUES // max(1, x.shape[1]))


def row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of every row of ``x``, a block of rows at a time squared into one reused
    buffer: never an n x d temporary, and no new block per block. With a fresh 8 MiB block each
    time, glibc's heap grew by up to a block a step in some runs instead of reusing the freed ones
    (k-means++ seeding at 1,000,000 x 512: 1.4 GiB more resident memory in 2 of 5 runs)."""
    out = x.new_empty(len(x))
    step = _rows_per_block(x)
    squares = x.new_empty(min(step, len(x)), x.shape[1])
    for start in range(0, len(x), step):
        block = x[start:start + step]
        squared = torch.mul(block, block, out=squares[:len(block)])
        torch.sum(squared, 1, out=out[start:start + len(block)])
    return out


def _sq_dist_to(x: torch.Tensor, x_sq: torch.Tensor, rows: torch.Tensor, i: int, block: torch.Tensor
                ) -> torch.Tensor:
    """Squared distances of ``x[rows]`` to ``x[i]``: for most rows, of every row in place and then
    indexed; otherwise gathered into ``block`` (reused, :data:`BLOCK_VALUES` values) a block at a
    time. Neither copies ``x``."""
    if len(rows) >= DENSE_SHARE * len(x):
        return (x_sq + x_sq[i] - 2.0 * (x @ x[i])).clamp_min_(0.0)[rows]
    step = len(block)
    dot = torch.empty(len(rows), device=x.device)
    for start in range(0, len(rows), step):
        part = rows[start:start + step]
        gathered = block[:len(part)]
        torch.index_select(x, 0, part, out=gathered)
        torch.mv(gathered, x[i], out=dot[start:start + step])
    return (x_sq[rows] + x_sq[i] - 2.0 * dot).clamp_min_(0.0)


def k_center_greedy(features: torch.Tensor, budget: int, centres: torch.Tensor | None = None,
                    first: int = 0, chunk: int = 4096) -> list[int]:
    """``budget`` distinct rows of ``features`` picked greedily to minimise the largest distance
    to a centre.

    ``centres`` (e.g. the labeled embeddings) start the cover; with none, row ``first`` is the
    first pick. Ties go to the smallest row index not yet picked.
    """
    x = features.float()
    n = x.shape[0]
    budget = min(budget, n)
    x_sq = row_sq_norms(x)
    min_d2 = torch.full((n,), float("inf"), device=x.device)
    assign = torch.full((n,), -1, dtype=torch.long, device=x.device)
    centre_rows: list[torch.Tensor] = []
    if centres is not None and len(centres):
        c = centres.float().to(x.device)
        for start in range(0, n, chunk):
            d2 = _sq_dist(x[start:start + chunk], x_sq[start:start + chunk], c)
            best, arg = d2.min(1)
            min_d2[start:start + chunk], assign[start:start + chunk] = best, arg
        centre_rows = list(c)
    picks: list[int] = []
    if not centre_rows and budget > 0:
        picks.append(first)
        min_d2 = _sq_dist(x, x_sq, x[first:first + 1])[:, 0]
        min_d2[first] = 0.0
        assign.zero_()
        centre_rows.append(x[first])
    capacity = len(centre_rows) + budget
    all_centres = torch.zeros(capacity, x.shape[1], device=x.device)
    all_centres[:len(centre_rows)] = torch.stack(centre_rows)
    radius = torch.zeros(capacity, device=x.device)
    radius.scatter_reduce_(0, assign, min_d2.sqrt(), reduce="amax")
    count = len(centre_rows)
    taken = torch.zeros(n, dtype=torch.bool, device=x.device)
    taken[picks] = True
    block = torch.empty(min(n, _rows_per_block(x)), x.shape[1], dtype=x.dtype, device=x.device)
    while len(picks) < budget:
        # picked rows leave the race: with duplicates (or rows on a centre) every distance can be 0
        open_d2 = torch.where(taken, -1.0, min_d2)
        i = int(torch.nonzero(open_d2 == torch.max(open_d2))[0, 0])
        picks.append(i)
        taken[i] = True
        new = x[i]
        gap = (all_centres[:count] - new).norm(dim=1)
        touched = gap <= 2.0 * radius[:count] * (1.0 + 1e-4) + 1e-6  # margin for float rounding
        rows = torch.nonzero(touched[assign], as_tuple=True)[0]
        d2 = _sq_dist_to(x, x_sq, rows, i, block)
        closer = d2 < min_d2[rows]
        moved = rows[closer]
        min_d2[moved], assign[moved] = d2[closer], count
        min_d2[i], assign[i] = 0.0, count
        all_centres[count] = new
        radius[:count][touched] = 0.0
        radius[:count + 1].scatter_reduce_(0, assign[rows], min_d2[rows].sqrt(), reduce="amax")
        count += 1
    return picks
