"""SSL methods, one file each, registered on import."""

from al_lightning.methods.base import SSLMethod
from al_lightning.methods.ema import EMATeacher
from al_lightning.methods.registry import METHODS, register_method
from al_lightning.registry import import_submodules

import_submodules(__name__, __path__)

from al_lightning.methods.fixmatch import FixMatch  # noqa: E402
from al_lightning.methods.flexmatch import FlexMatch  # noqa: E402
from al_lightning.methods.freematch import FreeMatch  # noqa: E402
from al_lightning.methods.lp_semi import LPSemi  # noqa: E402
from al_lightning.methods.supervised import Supervised  # noqa: E402

__all__ = ["EMATeacher", "FixMatch", "FlexMatch", "FreeMatch", "LPSemi", "METHODS", "SSLMethod", "Supervised",
           "register_method"]
