"""Self-supervised pre-training (``al-lightning pretrain``): SimSiam, SimCLR and DeepCluster, one file
each, registered on import. A layer of its own next to the methods: it reads the data, models and ops
layers only, and hands the fits and strategies files (``backbone.pt``, ``features.pt``)."""

from al_lightning.pretrain.base import PretrainMethod
from al_lightning.pretrain.data import PretrainDataModule
from al_lightning.pretrain.registry import PRETRAINERS, register_pretrainer
from al_lightning.registry import import_submodules

import_submodules(__name__, __path__)

from al_lightning.pretrain.deepcluster import DeepCluster  # noqa: E402
from al_lightning.pretrain.simclr import SimCLR  # noqa: E402
from al_lightning.pretrain.simsiam import SimSiam  # noqa: E402

__all__ = ["DeepCluster", "PRETRAINERS", "PretrainDataModule", "PretrainMethod", "SimCLR", "SimSiam",
           "register_pretrainer"]
