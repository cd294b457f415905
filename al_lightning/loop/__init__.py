"""The active-learning cycle controller and the oracles that answer labeling requests."""

from al_lightning.loop.active_loop import ActiveLoop
from al_lightning.loop.oracle import FileOracle, Oracle, SimulatedOracle

__all__ = ["ActiveLoop", "FileOracle", "Oracle", "SimulatedOracle"]
