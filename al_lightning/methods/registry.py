"""Method registry: ``@register_method(name)`` on each method class."""

from __future__ import annotations

from al_lightning.registry import Registry

METHODS: Registry[type] = Registry("method")
register_method = METHODS.register
