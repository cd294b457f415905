"""Any timm model as a backbone (``timm:<name>``, e.g. ``timm:vit_small_patch16_224``).

Pre-trained weights only ever come from a local file (``weights``): nothing is downloaded, and
timm is never asked for ``pretrained=True``. A missing file is not an error: the model trains from
scratch and says so once, so a config that names USB's pre-trained ViT runs anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from al_lightning.models.base import Backbone, register_backbone

log = logging.getLogger("al_lightning")


class TimmBackbone(Backbone):
    """Args:
        model_name: a timm model name.
        num_classes, in_channels: passed to timm.
        weights: optional local state dict (``.pth``/``.pt`` or ``.safetensors``; a ``{"model": ...}``
            or ``{"state_dict": ...}`` wrapper and a DDP ``module.`` prefix are accepted, as in USB's
            checkpoints). Classifier tensors whose shape differs from this model's (another number
            of classes) are dropped and the head keeps its fresh initialisation; every other tensor
            must match exactly.
        kwargs: further timm arguments (``img_size``, ``patch_size``, ``drop_path_rate``, ...).
    """

    def __init__(self, model_name: str, num_classes: int, in_channels: int = 3, weights: str | None = None,
                 **kwargs) -> None:
        super().__init__()
        import timm

        if kwargs.pop("pretrained", False):
            raise ValueError("timm backbones never download weights: give a local file as backbone_kwargs.weights")
        self.model = timm.create_model(model_name, pretrained=False, num_classes=num_classes,
                                       in_chans=in_channels, **kwargs)
        self.num_features = self.model.num_features
        if weights is not None:
            if Path(weights).is_file():
                load_local_weights(self.model, weights)
            else:
                log.warning("weights file %s not found: training %s from scratch", weights, model_name)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def head(self) -> nn.Module:
        return self.model.get_classifier()

    def no_weight_decay(self) -> set[str]:
        """Parameter names (in this module) the timm model exempts from weight decay (ViT's
        ``pos_embed``, ``cls_token``)."""
        names = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else ()
        return {f"model.{name}" for name in names}


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    return {name.removeprefix("module."): tensor for name, tensor in state.items()}


def load_local_weights(model: nn.Module, path: str) -> None:
    """Load ``path`` into a timm ``model``: strict except for the classifier, whose tensors are
    dropped when their shape (or name) does not fit this model; the problems, if any, in one line."""
    state = read_state_dict(path)
    own = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))

    def in_classifier(name: str) -> bool:
        return name.startswith(prefixes)

    dropped = [k for k in state if in_classifier(k) and (k not in own or own[k].shape != state[k].shape)]
    for name in dropped:
        del state[name]
    missing = [k for k in own if k not in state and not in_classifier(k)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
                  if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(f"weights file {path} does not fit {type(model).__name__}: missing {missing[:8]} "
                         f"({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)}), "
                         f"shape mismatch {mismatched[:8]} ({len(mismatched)})")
    model.load_state_dict(state, strict=False)
    kept_head = [k for k in own if in_classifier(k) and k not in state]
    log.info("loaded %d tensors from %s%s", len(state), path,
             f" (classifier {kept_head} left at its initialisation)" if kept_head else "")


@register_backbone("timm")
def timm_backbone(model_name: str, num_classes: int, in_channels: int = 3, weights: str | None = None,
                  **kwargs) -> TimmBackbone:
    return TimmBackbone(model_name, num_classes, in_channels, weights, **kwargs)
