"""The weighted kNN monitor of self-supervised training (Wu et al. 2018, InstDisc, section 3.4).

Each query takes its ``k`` most cosine-similar bank rows, each neighbour votes for its label with
weight ``exp(s / T)``, and the class with the largest total wins; ``k = 200`` and ``T = 0.1`` are the
values of the kNN monitor in the MoCo CIFAR-10 demo that SimSiam-style CIFAR runs report (InstDisc
itself uses T = 0.07).

The bank is the test split itself, leave-one-out (each test image is classified by the 200 nearest
*other* test images): the usual bank is the train split with its labels, but those are the active
pool's labels, which pre-training never reads. Test labels serve the monitor only.
"""

from __future__ import annotations

import numpy as np
import torch

from al_lightning.ops.faiss_ops import knn_search, l2_normalised


def leave_one_out_knn_predict(features: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int = 200,
                              temperature: float = 0.1) -> torch.Tensor:
    """Predicted class of every row from the weighted vote of its ``k`` nearest other rows."""
    bank = l2_normalised(features)
    n = bank.shape[0]
    k = min(k, n - 1)
    similarities, neighbours = knn_search(bank, bank, k + 1, metric="ip")
    others = neighbours != np.arange(n)[:, None]
    self_missing = others.all(axis=1)  # a duplicate image may outrank the row itself
    others[self_missing, -1] = False
    similarities = torch.from_numpy(similarities[others].reshape(n, k))
    neighbours = torch.from_numpy(neighbours[others].reshape(n, k))
    votes = torch.zeros(n, num_classes, dtype=torch.float64)
    votes.scatter_add_(1, labels.cpu()[neighbours], (similarities.double() / temperature).exp())
    return votes.argmax(1)


def knn_monitor_accuracy(features: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int = 200,
                         temperature: float = 0.1) -> float:
    predictions = leave_one_out_knn_predict(features, labels, num_classes, k, temperature)
    return float((predictions == labels.cpu()).double().mean())
