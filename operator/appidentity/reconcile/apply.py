"""Apply: the children (created, applied where they differ, pruned where no longer wanted),
then the token. A conflict undoes what this reconcile created: nothing is half-applied."""

from __future__ import annotations

from typing import Any

from .. import desired as build
from .. import status as st
from . import children
from .state import Applied, Case, Event, Memory, Runtime, TokenState
from .stop import Conflict
from .token import first_secret, token_phase


def apply(rt: Runtime, case: Case, mem: Memory) -> Applied:
    """Refuses (Conflict, ApplyRefused) with nothing of this reconcile left behind."""
    identity, want = case.identity, case.want
    keys = [build.object_key(o) for o in want.objects] + [case.secret_key]
    created: list[dict[str, Any]] = []
    try:
        wanted = {build.object_key(o): o for o in want.objects}
        live = children.live(rt, identity, keys, wanted, new=not st.reported(case.previous))
        # Recorded before applying, so the watch events of the operator's own writes match
        # what it wants and do not wake the identity again.
        mem.desired = wanted
        applied, wrote = children.write(rt, identity, want.objects, live, created)
        if case.active and live[case.secret_key] is None:
            secret = children.create(rt, identity, first_secret(rt, identity), created)[0]
            live[case.secret_key] = secret
    except Conflict:
        children.undo(rt, created)
        raise
    mem.namespace = identity.namespace
    mem.service_account = identity.service_account
    mem.grant_namespaces = set(identity.grant_namespaces)
    mem.cluster_roles = identity.cluster_role_names
    wrote |= _prune_unwanted(rt, case, mem)
    sa = applied[("ServiceAccount", identity.namespace, identity.service_account)]
    token = token_phase(rt, case, sa, live[case.secret_key], mem)
    if token.secret_uid:
        _sentinel(rt, case, mem, token.secret_uid)
    return Applied(_provisioned(case), _grants(case), token, _base_wake(case, token), wrote)


def _sentinel(rt: Runtime, case: Case, mem: Memory, secret_uid: str) -> None:
    """The token Secret's sentinel (desired.token_sentinel), owned by the Secret as it is now.
    It only speeds up noticing a deleted Secret (the re-check notices it anyway), so an object
    of its name that is not this identity's is left alone rather than stopping the reconcile."""
    obj = build.token_sentinel(case.identity, secret_uid)
    key = build.object_key(obj)
    mem.desired[key] = obj  # before the write: its watch event then matches what is wanted
    try:
        found = children.live(rt, case.identity, [key], {key: obj}, not st.reported(case.previous))
        children.write(rt, case.identity, [obj], found, [])
    except Conflict:
        del mem.desired[key]


def _prune_unwanted(rt: Runtime, case: Case, mem: Memory) -> bool:
    """Whether anything was removed."""
    identity = case.identity
    if mem.pruned_for is None:
        mem.pruned_for = children.already_pruned(identity, case.previous)
    if mem.pruned_for == (identity.generation, case.active):
        return False
    keep = case.want.keys() | {case.secret_key}
    if case.active:
        keep.add(build.sentinel_key(identity))
    removed = children.prune(rt, identity, keep, case.previous)
    if removed:
        message = "removed what the spec no longer asks for: " + ", ".join(removed)
        case.events.append(Event("Normal", "Pruned", message))
    mem.pruned_for = (identity.generation, case.active)
    return bool(removed)


def _grants(case: Case) -> list[dict[str, str]]:
    ns = case.identity.namespace
    out = [{"namespace": ns, "state": "Applied", "message": ""}]
    for other in case.identity.grant_namespaces:
        if other in case.consenting:
            out.append({"namespace": other, "state": "Applied", "message": ""})
        else:
            why = f"namespace lacks the annotation appidentity.dev/accept-grants-from: {ns}"
            out.append({"namespace": other, "state": "Refused", "message": why})
    return out


def _provisioned(case: Case) -> st.Condition:
    refused = case.want.refused_namespaces
    if refused:
        why = "grants refused by namespaces without consent: " + ", ".join(refused)
        return st.Condition(st.PROVISIONED, False, "ConsentMissing", why)
    applied = f"{len(case.want.objects) + 1} objects applied"
    return st.Condition(st.PROVISIONED, True, "Applied", applied)


def _base_wake(case: Case, token: TokenState) -> float:
    spec = case.identity.spec
    wake = float(spec.verification.interval_seconds)
    change = spec.schedule.next_change_after(case.now)
    if change:
        wake = min(wake, (change - case.now).total_seconds() + 0.5)
    if token.token is not None and token.refresh_at:
        wake = min(wake, max(1.0, (token.refresh_at - case.now).total_seconds()))
    return wake
