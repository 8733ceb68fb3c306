"""The re-check timetable: a wake-up that the last full proof still answers costs nothing or one
rules review; a restarted operator adopts the last process's proof instead of repeating it.
Anything these cannot vouch for falls through to a full reconcile and proof."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .. import status as st
from .. import tokens
from ..model import Identity
from ..schedule import Due, Timetable, jittered
from ..verify.plan import proven_namespaces
from ..verify.run import check_jwt, for_api_server, rules_unchanged
from .state import Applied, Case, Memory, Proof, Result, Runtime, TokenState


def recheck(rt: Runtime, body: Mapping[str, Any], mem: Memory, now: datetime) -> Result | None:
    """A wake-up the last full proof still answers: nothing to do, or a re-check of the
    token's effective rules that finds them unchanged. None when a full reconcile is due
    (poked, a new generation, rotation, the long interval, or the re-check saw a change)."""
    tt, token = mem.timetable, mem.token
    generation = body.get("metadata", {}).get("generation", 0)
    if tt is None or token is None:
        return None
    due = tt.due(generation, mem.poked, now)
    if due is Due.FULL:
        return None
    check = ""
    if due is Due.RECHECK:
        check = "rules"
        if not rules_unchanged(rt.kube.token_client(token), mem.rules_namespaces, mem.rules_hash):
            mem.verify_soon = True
            return None
        tt.rechecked(now)
    return Result(dict(body.get("status") or {}), [], tt.next_wake(now), check)


def timetable(
    rt: Runtime, identity: Identity, token: TokenState, now: datetime, full_at: datetime | None
) -> Timetable:
    """The next re-check after one interval; the next full proof at `full_at`, or with that
    re-check when None (a failing identity, a token for other audiences)."""
    every = rt.recheck_seconds or float(identity.spec.verification.interval_seconds)
    recheck_at = now + jittered(every)
    change = identity.spec.schedule.next_change_after(now)
    return Timetable(
        identity.generation, every, recheck_at, full_at or recheck_at, token.refresh_at, change
    )


def previous_verified(previous: Mapping[str, Any]) -> st.Condition:
    found: Mapping[str, Any] = next(
        (c for c in previous.get("conditions", []) if c.get("type") == st.ACCESS_VERIFIED), {}
    )
    status = {"True": True, "False": False}.get(found.get("status", ""))
    return st.Condition(
        st.ACCESS_VERIFIED, status, found.get("reason", ""), found.get("message", "")
    )


def _adoptable(rt: Runtime, case: Case, done: Applied, mem: Memory) -> bool:
    """The status shows this generation verified by a full proof, and nothing changed since."""
    previous, token = case.previous, done.token
    last = previous.get("verification") or {}
    return not (
        mem.verified_generation != -1
        or mem.verify_soon
        or done.wrote
        or token.issued
        or token.token is None
        or previous.get("observedGeneration") != case.identity.generation
        or previous_verified(previous).status is not True
        or not last.get("rulesHash")
        or not last.get("checkedAt")
        or not for_api_server(token.audiences, rt.baseline.api_audiences())
    )


def adopt(rt: Runtime, case: Case, done: Applied, mem: Memory) -> Proof | None:
    """A restarted operator takes over the last process's full proof instead of repeating it,
    when the status shows this generation verified within the full-proof interval and this
    reconcile changed nothing: the token's signature is checked offline and its effective rules
    re-read (a re-check); any difference means a full proof."""
    if not _adoptable(rt, case, done, mem):
        return None
    identity, now, token = case.identity, case.now, done.token
    assert token.token is not None
    last = case.previous["verification"]
    checked = last["checkedAt"]
    age = (now - tokens.parse_time(checked)).total_seconds()
    if not 0 <= age < rt.full_proof_seconds:
        return None
    http = rt.kube.token_client(token.token)
    namespaces = proven_namespaces(identity, case.consenting)
    if not rules_unchanged(http, namespaces, last["rulesHash"]):
        return None
    if not check_jwt(http, identity, token.token, token.audiences, rt.facts).ok:
        return None
    mem.verified_generation = identity.generation
    mem.rules_hash, mem.rules_hash_generation = last["rulesHash"], identity.generation
    mem.token, mem.rules_namespaces = token.token, namespaces
    full_at = tokens.parse_time(checked) + jittered(rt.full_proof_seconds)
    mem.timetable = timetable(rt, identity, token, now, full_at)
    cond = previous_verified(case.previous)
    return Proof(cond, last, mem.timetable.next_wake(now), check="rules")
