"""Pure: the outcome of one reconcile in, the AppIdentity's status out.

Conditions have the metav1.Condition shape and the whole list is written every time, with
`lastTransitionTime` carried over while a condition's status stays the same, so kstatus,
`kubectl wait --for=condition=Ready`, Argo CD and Flux read the truth.

Besides the normal-true conditions (Provisioned, TokenIssued, AccessVerified, Ready), the two
abnormal-true ones of the kstatus conventions are derived from them here, present only while
true: `Reconciling` while the operator is still at work on the identity (kstatus: InProgress)
and `Stalled` when it cannot progress until a human changes something (kstatus: Failed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PROVISIONED = "Provisioned"
TOKEN_ISSUED = "TokenIssued"
ACCESS_VERIFIED = "AccessVerified"
READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
# Informational only (the audit webhook receiver's usage summary): always True, never among the
# parts Ready, Reconciling and Stalled are derived from, so it cannot change what kstatus reads.
USAGE_OBSERVED = "UsageObserved"

# Outcomes no retry by the operator can change: the spec, the policy, an object someone else
# owns, a namespace's consent, the requester's or the operator's own RBAC, or RBAC granted
# from outside must be changed by a human first. The operator re-reconciles when any of those
# change (spec, namespaces and RBAC are watched), so Stalled clears by itself once they do.
# CheckFailed, TokenRejected and TokenSignatureInvalid are reported only after the propagation
# retries (reconcile/prove.py, RETRY_DELAYS) have run out, so they are outcomes too, not flukes.
STALLED_REASONS = frozenset(
    {
        "InvalidSpec",
        "PolicyViolation",
        "UnknownRule",
        "EscalationRefused",
        "Conflict",
        "ConsentMissing",
        "ApplyRefused",
        "ExcessPrivilege",
        "CheckFailed",
        "TokenRejected",
        "TokenSignatureInvalid",
    }
)
# Settled but not Ready by design: the identity is exactly as its spec wants it for now.
SETTLED_REASONS = frozenset({"ScheduleInactive"})
# Work the operator finishes by itself: a check or a requester's refusal being asked again while
# RBAC propagates (VERIFYING in reconcile/prove.py, JUDGING in reconcile/judge.py), a token the
# cluster has yet to issue, an interrupted reconcile, the issuer's keys that could not be read.
RECONCILING_REASONS = frozenset(
    {
        "Verifying",
        "VerifyingRequester",
        "WaitingForToken",
        "WaitingForTokenController",
        "ApiError",
        "KeysUnavailable",
    }
)


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


def abnormal_condition(parts: Sequence[Condition]) -> Condition | None:
    """Reconciling or Stalled, or None when neither is true. Work still under way wins over a
    stall found beside it (kstatus reads the first true one, so never both): until every part
    has settled, the outcome is not final. A reason of unknown kind counts as work under way,
    the cautious choice for a GitOps tool (it waits rather than fails)."""
    pending = [c for c in parts if c.status is not True and c.reason not in STALLED_REASONS]
    working = [c for c in pending if c.reason not in SETTLED_REASONS]
    if working:
        return Condition(RECONCILING, True, working[0].reason, working[0].message)
    stalled = [c for c in parts if c.status is not True and c.reason in STALLED_REASONS]
    if stalled:
        return Condition(STALLED, True, stalled[0].reason, stalled[0].message)
    return None


def _as_dict(
    cond: Condition, old: Mapping[str, Any] | None, generation: int, now: str
) -> dict[str, Any]:
    changed = old is None or old.get("status") != cond.status_text
    return {
        "type": cond.type,
        "status": cond.status_text,
        "reason": cond.reason,
        "message": cond.message,
        "observedGeneration": generation,
        "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),  # type: ignore[union-attr]
    }


def conditions(
    parts: Sequence[Condition],
    previous: Sequence[Mapping[str, Any]],
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """The whole list: the parts, Ready, and Reconciling or Stalled while one of them is true."""
    before = {c.get("type"): c for c in previous}
    abnormal = abnormal_condition(parts)
    every = [*parts, ready_condition(parts), *([abnormal] if abnormal else [])]
    return [_as_dict(c, before.get(c.type), generation, now) for c in every]


def with_informational(
    current: Sequence[Mapping[str, Any]],
    cond: Condition,
    previous: Sequence[Mapping[str, Any]],
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """The conditions with an informational one put in (or replaced) after the others; Ready,
    Reconciling and Stalled are left exactly as they were derived."""
    old = next((c for c in previous if c.get("type") == cond.type), None)
    kept = [dict(c) for c in current if c.get("type") != cond.type]
    return [*kept, _as_dict(cond, old, generation, now)]


def interrupted(
    previous: Mapping[str, Any], generation: int, message: str, now: str
) -> dict[str, Any]:
    """The status to write when a reconcile could not finish (an API error): what the last
    outcome said stays, Reconciling says it is being worked on, Stalled goes (the next attempt
    may settle it). `observedGeneration` is left at the generation that outcome describes, so it
    never claims a generation whose outcome is not known yet."""
    kept = [
        c for c in previous.get("conditions", []) if c.get("type") not in (RECONCILING, STALLED)
    ]
    old = next((c for c in previous.get("conditions", []) if c.get("type") == RECONCILING), None)
    working = Condition(RECONCILING, True, "ApiError", message)
    return {**previous, "conditions": [*kept, _as_dict(working, old, generation, now)]}


def reported(status: Mapping[str, Any]) -> bool:
    """Whether the operator has written an outcome yet. Before it has, the CRD defaults the
    status to `{observedGeneration: 0}`, so an empty status is not the test."""
    return bool(status.get("conditions"))


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
