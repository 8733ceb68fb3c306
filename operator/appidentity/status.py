"""Pure: the outcome of one reconcile in, the AppIdentity's status out.

Conditions have the metav1.Condition shape and the whole list is written every time, with
`lastTransitionTime` carried over while a condition's status stays the same, so kstatus,
`kubectl wait --for=condition=Ready`, Argo CD and Flux read the truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PROVISIONED = "Provisioned"
TOKEN_ISSUED = "TokenIssued"
ACCESS_VERIFIED = "AccessVerified"
READY = "Ready"


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str

    @property
    def status_text(self) -> str:
        return {True: "True", False: "False", None: "Unknown"}[self.status]


def ready_condition(parts: Sequence[Condition]) -> Condition:
    """Ready is True only when every other condition is; otherwise it repeats the first
    condition that is not, so the Ready reason alone tells a user what to look at."""
    for cond in parts:
        if cond.status is not True:
            return Condition(READY, cond.status, cond.reason, cond.message)
    verified = next((c for c in parts if c.type == ACCESS_VERIFIED), None)
    reason = verified.reason if verified else "Provisioned"
    return Condition(READY, True, reason, "identity provisioned, token valid and access verified")


def conditions(
    parts: Sequence[Condition],
    previous: Sequence[Mapping[str, Any]],
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous}
    out = []
    for cond in [*parts, ready_condition(parts)]:
        old = before.get(cond.type)
        changed = old is None or old.get("status") != cond.status_text
        out.append(
            {
                "type": cond.type,
                "status": cond.status_text,
                "reason": cond.reason,
                "message": cond.message,
                "observedGeneration": generation,
                "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),  # type: ignore[union-attr]
            }
        )
    return out


def outcome_of(status: Mapping[str, Any]) -> tuple[str, str]:
    """The (Ready status, reason) pair whose change deserves an Event."""
    for cond in status.get("conditions", []):
        if cond.get("type") == READY:
            return cond.get("status", "Unknown"), cond.get("reason", "")
    return "Unknown", ""


def without_timestamps(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status minus what changes on every check, to decide whether a write is needed."""
    out = dict(status)
    out["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"}
        for c in status.get("conditions", [])
    ]
    if "verification" in out:
        out["verification"] = {k: v for k, v in out["verification"].items() if k != "checkedAt"}
    return out
