"""Prove: the self-check with the token just applied, when one is due; what is remembered of a
proof for the re-checks that follow; and the AccessVerified condition it yields."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .. import status as st
from .. import tokens
from ..model import Identity, rfc3339
from ..schedule import SETTLE_DELAYS, jittered
from ..verify.plan import Plan, build_plan
from ..verify.run import Verification, verify
from .gather import cluster_role_rules
from .recheck import adopt, previous_verified, timetable
from .state import Applied, Case, Event, Memory, Proof, Runtime, TokenState
from .token import audiences_of, schedule_message

# RBAC propagation lag: after the operator's own RBAC writes, a failure is asked again after
# these delays before it is declared. A change the operator did not make is reported at once.
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)
LEGACY_WAIT = 2.0
VERIFYING = "Verifying"  # a failed check being asked again; not yet an outcome worth an Event
KEYS_UNAVAILABLE = "KeysUnavailable"
KEYS_RETRY_DELAYS = (2.0, 5.0, 10.0, 30.0)  # then every 30 s while the keys cannot be read


def self_check(
    rt: Runtime, identity: Identity, consenting: set[str], token: str, audiences: list[str]
) -> tuple[Plan, Verification]:
    """The self-check: plan from the spec and the named ClusterRoles, asked with the token (or,
    for a token meant for other audiences only, with a probe token; see verify.run.verify)."""
    plan = build_plan(identity, consenting, cluster_role_rules(rt, identity.cluster_role_names))
    return plan, verify(rt.kube, identity, plan, token, audiences, rt.baseline, rt.facts)


def stored_token(rt: Runtime, identity: Identity) -> tuple[str | None, list[str]]:
    """(token, audiences) from the identity's Secret, for an on-demand check."""
    secret = rt.kube.get("Secret", identity.namespace, identity.secret_name)
    if secret is None:
        return None, []
    return tokens.secret_token(secret), audiences_of(secret)


def prove(rt: Runtime, case: Case, done: Applied, mem: Memory) -> Proof:
    """The full self-check with the token, when one is due. A failure right after the
    operator's own RBAC writes is asked again after RETRY_DELAYS before it is reported (RBAC
    reaches the authorizer a moment after it is written); any other outcome is reported at
    once."""
    identity, now = case.identity, case.now
    if not case.active:
        mem.timetable = None
        message = schedule_message(identity, now)
        return Proof(st.Condition(st.ACCESS_VERIFIED, False, "ScheduleInactive", message), None)
    if done.token.token is None:
        mem.timetable = None
        waiting = st.Condition(st.ACCESS_VERIFIED, None, "WaitingForToken", "no token to check yet")
        return Proof(waiting, None, LEGACY_WAIT)
    tt = mem.timetable
    due = (
        mem.verify_soon
        or mem.verified_generation != identity.generation
        or tt is None
        or now >= tt.full_at
    )
    if not due and tt is not None:  # the status holds this process's last proof
        last = case.previous.get("verification")
        return Proof(previous_verified(case.previous), last, tt.next_wake(now))
    adopted = adopt(rt, case, done, mem)
    if adopted is not None:
        return adopted

    plan, ver = self_check(rt, identity, case.consenting, done.token.token, done.token.audiences)
    cond = verified_condition(identity, ver)
    if plan.truncated:
        note = f" ({plan.truncated} allowed checks beyond the limit were not asked)"
        cond = st.Condition(cond.type, cond.status, cond.reason, cond.message + note)
    if cond.reason == KEYS_UNAVAILABLE:
        return _keys_unavailable(case, mem, cond)
    if cond.status is not True and (mem.retries or done.wrote) and mem.retries < len(RETRY_DELAYS):
        return ask_again(case, mem, cond)
    # A proof woken by an event that shows nothing new may have beaten the authorizer to it.
    settle = mem.verify_soon and not done.wrote and ver.rules_hash == mem.rules_hash
    _remember(rt, case, done.token, mem, plan, ver, cond.status is True, settle)
    extra = {"issuer": ver.jwt.issuer, "keyID": ver.jwt.key_id}
    assert mem.timetable is not None
    wake = mem.timetable.next_wake(now)
    return Proof(cond, verification_status(ver, now), wake, extra, "full")


def ask_again(case: Case, mem: Memory, cond: st.Condition) -> Proof:
    """A failure right after the operator's own RBAC writes: no outcome yet, the whole proof
    asked again after the next of RETRY_DELAYS. The last proof's timetable goes with it: kept,
    its re-check would answer the retry's wake-up and leave the identity Verifying until the
    next full proof (a day later), as a drift repaired under RBAC lag once did."""
    delay = RETRY_DELAYS[mem.retries]
    mem.retries += 1
    mem.timetable, mem.verify_soon = None, True
    pending = st.Condition(
        st.ACCESS_VERIFIED, None, VERIFYING, f"re-checking in {delay:.0f}s: {cond.message}"
    )
    return Proof(pending, case.previous.get("verification"), delay, check="full")


def _keys_unavailable(case: Case, mem: Memory, cond: st.Condition) -> Proof:
    """The signature could not be judged: no outcome, the whole proof asked again soon."""
    delay = KEYS_RETRY_DELAYS[min(mem.keys_failures, len(KEYS_RETRY_DELAYS) - 1)]
    mem.keys_failures += 1
    mem.timetable, mem.verify_soon = None, True
    pending = st.Condition(cond.type, None, cond.reason, f"{cond.message}; again in {delay:.0f}s")
    return Proof(pending, case.previous.get("verification"), delay, check="full")


def _remember(
    rt: Runtime,
    case: Case,
    token: TokenState,
    mem: Memory,
    plan: Plan,
    ver: Verification,
    verified: bool,
    settle: bool,
) -> None:
    """What the next wake-ups need: when this proof goes stale, and the token and namespaces a
    re-check asks with. A token for other audiences is never sent to the API server, so it is
    proven in full at every interval (with a probe), as is an identity that is not verified."""
    identity, now = case.identity, case.now
    mem.retries = mem.keys_failures = 0
    mem.verify_soon = False
    mem.verified_generation = identity.generation
    if (
        mem.rules_hash
        and ver.rules_hash != mem.rules_hash
        and mem.rules_hash_generation == identity.generation
    ):
        why = "the token's effective rules changed without a change of the spec"
        case.events.append(Event("Warning", "EffectiveRulesChanged", why))
    mem.rules_hash, mem.rules_hash_generation = ver.rules_hash, identity.generation
    cheap = verified and not ver.probed
    full_at = now + jittered(rt.full_proof_seconds) if cheap else None
    mem.token = token.token if cheap else None
    mem.rules_namespaces = plan.namespaces
    mem.timetable = timetable(rt, identity, token, now, full_at)
    if settle and cheap:
        mem.timetable.settle = SETTLE_DELAYS
        mem.timetable.rechecked(now)


def verification_status(ver: Verification, now: datetime) -> dict[str, Any]:
    return {
        "checkedAt": rfc3339(now),
        "authenticatedAs": ver.authenticated_as,
        "allowedChecks": ver.passed_count(True),
        "deniedChecks": ver.passed_count(False),
        "failed": [r.as_failure() for r in ver.failed][:50],
        "excess": ver.excess[:50],
        "rulesHash": ver.rules_hash,
    }


def verified_condition(identity: Identity, ver: Verification) -> st.Condition:
    if ver.error:
        return st.Condition(st.ACCESS_VERIFIED, False, "TokenRejected", ver.error)
    over_granted = bool(ver.excess) and all(r.got_allowed for r in ver.failed)
    if ver.excess and not identity.spec.verification.allow_excess and over_granted:
        item = ver.excess[0]
        what = ",".join(item.get("verbs", [])) + " "
        what += ",".join(item.get("resources", item.get("nonResourceURLs", [])))
        return st.Condition(
            st.ACCESS_VERIFIED,
            False,
            "ExcessPrivilege",
            f"the token can do more than granted: {len(ver.excess)} rule(s), "
            f"e.g. {what} in {item['namespace']}; {len(ver.failed)} boundary check(s) failed",
        )
    if ver.failed:
        first = ver.failed[0]
        expected = "allowed" if first.expected_allowed else "denied"
        got = "allowed" if first.got_allowed else "denied"
        return st.Condition(
            st.ACCESS_VERIFIED,
            False,
            "CheckFailed",
            f"{len(ver.failed)} check(s) failed; first: {first.request.describe()} "
            f"expected {expected}, got {got} (via {first.via})",
        )
    if ver.jwt.unavailable:
        return st.Condition(st.ACCESS_VERIFIED, None, KEYS_UNAVAILABLE, ver.jwt.reason)
    if not ver.jwt.ok:
        return st.Condition(st.ACCESS_VERIFIED, False, "TokenSignatureInvalid", ver.jwt.reason)
    msg = (
        f"{ver.passed_count(True)} allowed and {ver.passed_count(False)} denied checks passed; "
        f"signature verified (kid {ver.jwt.key_id})"
    )
    if ver.probed:
        msg += "; the token is for other audiences: verified offline, rights asked with a probe"
    if ver.incomplete:
        msg += "; rules review incomplete (an authorizer that cannot list rules): each check asked"
    if ver.excess:
        msg += f"; {len(ver.excess)} excess rule(s) allowed by spec.verification.allowExcess"
    return st.Condition(st.ACCESS_VERIFIED, True, "AccessVerified", msg)
