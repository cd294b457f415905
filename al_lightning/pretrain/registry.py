"""Pre-training method registry: ``@register_pretrainer(name)`` on each pre-training method class."""

from __future__ import annotations

from al_lightning.registry import Registry

PRETRAINERS: Registry[type] = Registry("pretrainer")
register_pretrainer = PRETRAINERS.register
