"""The files a pre-training run leaves in its run directory, and how fits and strategies read them.

``backbone.pt`` and each head's ``<name>.pt`` are weights-only state dicts; ``features.pt`` is
``{"ids": int64 (N,), "features": float32 (N, d)}``. All are written atomically by rank 0.
"""

from __future__ import annotations

from pathlib import Path

import torch

from al_lightning.data.pool import write_atomic

BACKBONE_FILE = "backbone.pt"
FEATURES_FILE = "features.pt"


def save_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    """A state dict as CPU tensors, loadable with ``torch.load(path, weights_only=True)``."""
    cpu = {name: tensor.detach().cpu() for name, tensor in state.items()}
    write_atomic(path, lambda handle: torch.save(cpu, handle))


def save_features(path: Path, features: torch.Tensor) -> None:
    """Features of train ids ``0..N-1`` in id order."""
    payload = {"ids": torch.arange(features.shape[0], dtype=torch.int64), "features": features.detach().cpu()}
    write_atomic(path, lambda handle: torch.save(payload, handle))


def load_backbone_state(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The pre-trained backbone's state dict, for ``backbone.load_state_dict``."""
    path = Path(run_dir) / BACKBONE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {BACKBONE_FILE} in {run_dir}: point at the log_dir of an "
                                f"'al-lightning pretrain' run")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_features(run_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, features)`` of the train split through the pre-trained backbone."""
    path = Path(run_dir) / FEATURES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {FEATURES_FILE} in {run_dir}: point at the log_dir of an "
                                f"'al-lightning pretrain' run")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return payload["ids"], payload["features"]


def load_pool_features(run_dir: str | Path, what: str, pool_size: int | None = None) -> torch.Tensor:
    """The run's features checked to be one row per pool id ``0..N-1`` in order (and ``pool_size``
    rows when given); ``what`` names the setting in the one-line error."""
    ids, features = load_features(run_dir)
    expected = len(ids) if pool_size is None else pool_size
    if not torch.equal(ids, torch.arange(expected)):
        raise ValueError(f"{what}: {run_dir}/features.pt lists {len(ids)} ids, not the pool's ids "
                         f"0..{expected - 1} in order: pre-train on the same data section")
    return features
