"""Early exits: a reconcile that stops before anything (more) is written, and the status and
Event that say why."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .. import status as st
from ..model import rfc3339
from .state import Event, Result


class Stop(Exception):
    """Ends a reconcile before anything (more) is written; `reason` names the status reason and
    the Event, `retry_in` when to look again (a human has to act, so not soon)."""

    reason = "Stopped"
    retry_in = 300.0

    def __init__(
        self, message: str, reason: str | None = None, retry_in: float = 0.0, event: bool = True
    ) -> None:
        super().__init__(message)
        self.message = message
        self.event = event
        if reason:
            self.reason = reason
        if retry_in:
            self.retry_in = retry_in


class Conflict(Stop):
    reason = "Conflict"


class ApplyRefused(Stop):
    reason = "ApplyRefused"


def stopped(body: Mapping[str, Any], now: datetime, stop: Stop) -> Result:
    """A reconcile that wrote nothing: bad input, policy, escalation, conflicts. The Event is
    posted when this outcome is new, not on every look."""
    meta = body.get("metadata", {})
    previous = body.get("status") or {}
    generation = meta.get("generation", 0)
    parts = [st.Condition(st.PROVISIONED, False, stop.reason, stop.message)]
    conditions = st.conditions(parts, previous.get("conditions", []), generation, rfc3339(now))
    status = {**previous, "observedGeneration": generation, "conditions": conditions}
    before: Mapping[str, Any] = next(
        (c for c in previous.get("conditions", []) if c["type"] == st.PROVISIONED), {}
    )
    again = (before.get("status"), before.get("reason"), before.get("message")) == (
        "False",
        stop.reason,
        stop.message,
    )
    events = [] if again or not stop.event else [Event("Warning", stop.reason, stop.message)]
    return Result(status, events, wake_in=stop.retry_in)
