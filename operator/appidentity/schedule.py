"""Pure: what an identity's wake-up has to do, and when the next one is.

A full proof (every review, the real reads, the JWT) runs for every new generation, token
rotation, schedule change, drift or RBAC event (the watches poke the identity), and otherwise
only after `full_every`. In between, a cheap re-check every `recheck_every` asks the token for
its effective rules (one SelfSubjectRulesReview per granted namespace) and compares them with the
last full proof's `rulesHash`: what the watches missed (an edited Role nobody binds through the
operator, an authorizer change, a dropped watch, a deleted token Secret, whose Bound token then
gets 401) turns the re-check into a full reconcile.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

FULL_PROOF_SECONDS = 86_400.0  # a full proof at least this often, even with nothing seen
SETTLE_DELAYS = (1.0, 3.0)  # re-checks after an event-driven proof that found nothing new


class Due(Enum):
    FULL = "full"  # the whole reconcile and, where due, the full proof
    RECHECK = "recheck"  # one rules review per granted namespace, with the kept token
    NOTHING = "nothing"  # woken early: nothing is due yet


@dataclass(slots=True)
class Timetable:
    """When the last full proof's facts go stale, as kept between wake-ups of one identity."""

    generation: int
    every: float  # seconds between re-checks
    recheck_at: datetime
    full_at: datetime
    refresh_at: datetime | None = None  # token rotation
    schedule_change: datetime | None = None  # spec.schedule's next edge
    settle: tuple[float, ...] = ()  # seconds until the remaining settle re-checks

    def due(self, generation: int, poked: bool, now: datetime) -> Due:
        edges = (self.full_at, self.refresh_at, self.schedule_change)
        if poked or generation != self.generation or any(e and now >= e for e in edges):
            return Due.FULL
        return Due.RECHECK if now >= self.recheck_at else Due.NOTHING

    def next_wake(self, now: datetime) -> float:
        edges = [self.recheck_at, self.full_at, self.refresh_at, self.schedule_change]
        soonest = min(e for e in edges if e is not None)
        return max(0.5, (soonest - now).total_seconds())

    def rechecked(self, now: datetime) -> None:
        """A re-check found nothing new: the next one after a settle delay or the interval."""
        if self.settle:
            delay, self.settle = self.settle[0], self.settle[1:]
            self.recheck_at = now + timedelta(seconds=delay)
        else:
            self.recheck_at = now + jittered(self.every)


def jittered(seconds: float) -> timedelta:
    """Spread over ±10 %, so identities created together do not re-check together forever."""
    return timedelta(seconds=seconds * random.uniform(0.9, 1.1))
