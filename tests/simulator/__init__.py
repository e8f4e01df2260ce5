"""A deterministic incident simulator: simulated time, replicas probing on the shipped cadence
(each with its platform watch), the platform buying and logging its calls, Alertmanager's pages,
admin holds, restarts.

It drives the production's pure decisions (`evidence.judge`, the reason classifier, the Kraken
error classification) and the incident core, applies their effects to a simulated world the way
the executor does, and checks the invariants of DESIGN.md's "Incident decisions" after every
step. Nothing sleeps, nothing touches a database or a socket: a run is a function of its seed.
"""

from tests.simulator.faults import Fault, Kind, random_timeline
from tests.simulator.invariants import Violation
from tests.simulator.params import Params
from tests.simulator.world import World, simulate

__all__ = ["Fault", "Kind", "Params", "Violation", "World", "random_timeline", "simulate"]
