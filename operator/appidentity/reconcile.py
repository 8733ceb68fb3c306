"""One reconcile of one AppIdentity, as five phases: gather the inputs, judge the spec (policy,
and the requester's own rights), apply the children and the token, prove the grant with that
token, and report the outcome as a status and Events. Handlers call `reconcile` and `cleanup`.

Order matters and is chosen so that nothing is half-applied: bad input, policy violations and
requests beyond the requester's own rights stop before any write; conflicts with objects the
operator did not create stop before any write; the ServiceAccount exists before anything names
it; grants dropped from the spec are removed after the new ones exist.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import desired as build
from . import escalation as esc
from . import status as st
from . import tokens
from .discovery import Discovery, DiscoveryCache
from .kube import ApiError, Kube
from .model import (
    IDENTITY_LABEL,
    MANAGED_BY,
    Identity,
    SpecError,
    identity_key,
    parse_identity,
    rfc3339,
)
from .policy import Policy, check
from .schedule import FULL_PROOF_SECONDS, SETTLE_DELAYS, Due, Timetable, jittered
from .verify.baseline import Baseline
from .verify.plan import Plan, build_plan, proven_namespaces
from .verify.rbac import Request, RuleDict
from .verify.run import (
    REVIEWS,
    ClusterFacts,
    Verification,
    check_jwt,
    for_api_server,
    rules_unchanged,
    verify,
)

log = logging.getLogger(__name__)
# RBAC propagation lag: after the operator's own RBAC writes, a failure is asked again after
# these delays before it is declared. A change the operator did not make is reported at once.
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)
LEGACY_WAIT = 2.0
PRUNE_KINDS = ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
AUDIENCES = "appidentity.dev/token-audiences"
VERIFYING = "Verifying"  # a failed check being asked again; not yet an outcome worth an Event
MATCHED = "appidentity.dev/matched"  # in a remembered child: the desired object it matched
ESCALATION_REFUSED = "EscalationRefused"
JUDGING = "VerifyingRequester"  # a refusal being asked again once before it is reported
JUDGE_FIRST_RETRY = 2.0
JUDGE_AGAIN = 15.0  # seconds until a refused requester is asked about again
UNKNOWN_RULE_AGAIN = 60.0  # a rule naming what the cluster lacks: its CRD may be on its way


@dataclass
class Runtime:
    """Process-wide collaborators, built once at start."""

    kube: Kube
    policy: Policy
    baseline: Baseline
    facts: ClusterFacts = field(default_factory=ClusterFacts)
    recheck_seconds: float | None = None  # every identity's re-check interval, if set
    full_proof_seconds: float = FULL_PROOF_SECONDS
    # Managed children as the watches last saw them (see `remember_child`): lets a reconcile
    # skip applies that would change nothing, so a restarted operator with nothing drifted
    # writes nothing.
    children: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    # Namespace name -> its annotations, as watched (consent lives there); absent = not yet seen.
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    # The watch (event loop) and reconciles (worker threads) both write `children`.
    _children_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    discovery: DiscoveryCache = field(init=False, repr=False)  # read at its first use

    def __post_init__(self) -> None:
        self.discovery = DiscoveryCache(lambda: Discovery.from_aggregated(*self.kube.discovery()))

    def remember_child(
        self, key: tuple[str, str, str], obj: Mapping[str, Any], matches: dict[str, Any] | None
    ) -> None:
        """A child as watched. One that `matches` what its identity wants (that desired object,
        shared with the identity's Memory) is kept as just its uid, labels and that object:
        thousands of identities' children would otherwise be held twice."""
        with self._children_lock:
            self.children[key] = _kept(obj, matches)

    def forget_child(self, key: tuple[str, str, str]) -> None:
        with self._children_lock:
            self.children.pop(key, None)

    def child_matched(
        self, key: tuple[str, str, str], seen: Mapping[str, Any], matches: dict[str, Any]
    ) -> None:
        """A child watched before its identity wanted anything (a restart's listing) was found
        to match: kept compactly from now on, unless the watch has delivered a newer one."""
        with self._children_lock:
            if self.children.get(key) is seen:
                self.children[key] = _kept(seen, matches)


def _kept(obj: Mapping[str, Any], matches: dict[str, Any] | None) -> dict[str, Any]:
    meta = obj["metadata"]
    if matches is not None:
        return {
            "metadata": {"uid": meta.get("uid"), "labels": meta.get("labels")},
            MATCHED: matches,
        }
    # kopf replaces an object's dict on every event and never edits one in place, so a shallow
    # copy is enough; managedFields is the bulk of it and never compared.
    trimmed = {k: v for k, v in meta.items() if k != "managedFields"}
    return {**obj, "metadata": trimmed}


@dataclass
class Memory:
    """What the operator remembers about one identity between reconciles, in this process only.
    Losing it (a restart) costs reads, never correctness."""

    desired: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    pruned_for: tuple[int, bool] | None = None
    verified_generation: int = -1  # -1: not proven by this process yet
    verify_soon: bool = False
    # Set by every poke (a spec change, drift, an RBAC event) and after an API error: the next
    # wake-up is a full reconcile, not a re-check.
    poked: bool = True
    # After a full proof: when it goes stale, and what a re-check needs (the token that was
    # proven, in this process's memory only, and the namespaces its rules were read in).
    timetable: Timetable | None = None
    token: str | None = field(default=None, repr=False)
    rules_namespaces: list[str] = field(default_factory=list)
    rules_hash: str = ""
    rules_hash_generation: int = -1
    retries: int = 0
    # (generation, requester stamp) whose spec the requester was found entitled to / refused.
    judged: tuple[int, str | None] | None = None
    refused: tuple[int, str | None] | None = None
    cluster_roles: set[str] = field(default_factory=set)
    namespace: str = ""
    service_account: str = ""
    grant_namespaces: set[str] = field(default_factory=set)


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Result:
    status: dict[str, Any]
    events: list[Event]
    wake_in: float  # seconds until this identity needs attention again
    check: str = ""  # "full" or "rules" when this wake-up proved or re-checked the token


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


def _now_text(now: datetime) -> str:
    return rfc3339(now)


def _stop(body: Mapping[str, Any], now: datetime, stop: Stop) -> Result:
    """A reconcile that wrote nothing: bad input, policy, escalation, conflicts. The Event is
    posted when this outcome is new, not on every look."""
    meta = body.get("metadata", {})
    previous = body.get("status") or {}
    generation = meta.get("generation", 0)
    parts = [st.Condition(st.PROVISIONED, False, stop.reason, stop.message)]
    conditions = st.conditions(parts, previous.get("conditions", []), generation, _now_text(now))
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


# --- provisioning --------------------------------------------------------------------------


def consenting_namespaces(rt: Runtime, identity: Identity) -> set[str]:
    """Namespaces that accept this identity's grants: from the namespace watch, with a GET only
    for a namespace the watch has not delivered yet."""
    out = set()
    for ns in identity.grant_namespaces:
        annotations = rt.namespaces.get(ns)
        if annotations is None:
            found = rt.kube.get("Namespace", None, ns)
            if found is None:
                continue
            annotations = found.get("metadata", {}).get("annotations") or {}
        if build.consents(annotations, identity.namespace):
            out.add(ns)
    return out


def _is_ours(identity: Identity, obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata", {}).get("labels") or {}).get(IDENTITY_LABEL) == identity.key)


def _foreign(identity: Identity, found: Mapping[tuple[str, str, str], Any]) -> Conflict | None:
    names = [
        f"{k[0]} {k[1] + '/' if k[1] else ''}{k[2]}"
        for k, obj in found.items()
        if obj is not None and not _is_ours(identity, obj)
    ]
    if not names:
        return None
    return Conflict(
        "these objects exist and were not created for this identity, so they are left "
        "untouched: " + ", ".join(names)
    )


def _live(
    rt: Runtime,
    identity: Identity,
    keys: list[tuple[str, str, str]],
    want: Mapping[tuple[str, str, str], dict[str, Any]],
    new: bool,
) -> dict[tuple[str, str, str], dict[str, Any] | None]:
    """What exists now under each name: the watch cache where it has the object (one that
    matched an older desired state does not count); else, for a new identity, presumably
    nothing (its creates will tell, see `_create`); else a GET. Refuses (Conflict) when an
    object of the same name was not created for this identity."""
    found = {}
    for key in keys:
        kind, ns, name = key
        cached = rt.children.get(key)
        if cached is not None and MATCHED in cached and cached[MATCHED] != want.get(key):
            cached = None
        if cached is None and not new:
            cached = rt.kube.get(kind, ns or None, name)
        found[key] = cached
    conflict = _foreign(identity, found)
    if conflict:
        raise conflict
    return found


def _create(
    rt: Runtime, identity: Identity, obj: dict[str, Any], created: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, bool]:
    """Creates an object believed absent: (it, True), also recorded in `created`. If it exists
    after all: Conflict when it is not this identity's, else (what exists or None, False)."""
    try:
        out = rt.kube.create(obj)
        created.append(out)
        return out, True
    except ApiError as exc:
        if exc.status != 409:
            raise
    key = build.object_key(obj)
    found = rt.kube.get(key[0], key[1] or None, key[2])
    conflict = _foreign(identity, {key: found})
    if conflict:
        raise conflict
    return found, False


def _undo(rt: Runtime, created: list[dict[str, Any]]) -> None:
    """Removes what this reconcile created before it met a conflict: nothing half-applied."""
    for obj in reversed(created):
        meta = obj["metadata"]
        rt.kube.delete(obj["kind"], meta.get("namespace"), meta["name"], meta.get("uid"))


def _already_pruned(identity: Identity, previous: Mapping[str, Any]) -> tuple[int, bool] | None:
    """After a restart: the status proves the last process pruned for this generation and
    schedule state, so nothing needs listing. A brand-new identity has nothing to prune."""
    if not st.reported(previous):
        return (1, True) if identity.generation == 1 else None
    conditions = {c.get("type"): c for c in previous.get("conditions", [])}
    provisioned = conditions.get(st.PROVISIONED, {}).get("status") == "True"
    if previous.get("observedGeneration") != identity.generation or not provisioned:
        return None
    was_active = conditions.get(st.READY, {}).get("reason") != "ScheduleInactive"
    return (identity.generation, was_active)


def _apply_object(rt: Runtime, obj: dict[str, Any]) -> dict[str, Any]:
    try:
        return rt.kube.apply(obj)
    except ApiError as exc:
        # roleRef is immutable: a binding that must point elsewhere is replaced.
        if (
            exc.status == 422
            and obj["kind"] in ("RoleBinding", "ClusterRoleBinding")
            and "roleRef" in exc.message
        ):
            meta = obj["metadata"]
            rt.kube.delete(obj["kind"], meta.get("namespace"), meta["name"])
            return rt.kube.apply(obj)
        raise


def _write(
    rt: Runtime,
    identity: Identity,
    objects: list[dict[str, Any]],
    live: Mapping[tuple[str, str, str], dict[str, Any] | None],
    created: list[dict[str, Any]],
) -> tuple[dict[tuple[str, str, str], dict[str, Any]], bool]:
    """Creates what is missing and applies what differs; what is already as desired costs no
    request at all. Returns the objects and whether anything was written."""
    applied = {}
    wrote = False
    for obj in objects:
        key = build.object_key(obj)
        current = live[key]
        try:
            made = False
            if current is None:
                current, made = _create(rt, identity, obj, created)
            wrote |= made
            if current is not None and (
                made or MATCHED in current or build.is_subset(obj, current)
            ):
                if not made and MATCHED not in current:
                    rt.child_matched(key, current, obj)
                applied[key] = current
                continue
            applied[key] = _apply_object(rt, obj)
            wrote = True
        except ApiError as exc:
            if exc.status not in (403, 422):
                raise
            # e.g. RBAC escalation prevention: the operator does not hold what it would grant.
            kind, ns, name = key
            where = f"{kind} {ns + '/' if ns else ''}{name}"
            raise ApplyRefused(f"the API server refused {where}: {exc.message}") from exc
    return applied, wrote


def _prune(
    rt: Runtime, identity: Identity, keep: set[tuple[str, str, str]], previous: Mapping[str, Any]
) -> list[str]:
    """Deletes what this identity created and no longer wants: RBAC objects found by label, and
    a ServiceAccount or Secret left behind by a rename (named in the previous status)."""
    removed = []
    selector = f"{IDENTITY_LABEL}={identity.key}"
    for kind in PRUNE_KINDS:
        for obj in rt.kube.list_objects(kind, None, selector):
            key = build.object_key({"kind": kind, "metadata": obj["metadata"]})
            if key not in keep and rt.kube.delete(
                kind, key[1] or None, key[2], obj["metadata"].get("uid")
            ):
                removed.append(f"{kind} {key[1] + '/' if key[1] else ''}{key[2]}")
    for kind, field_name in (("ServiceAccount", "serviceAccountName"), ("Secret", "secretName")):
        old = previous.get(field_name)
        if old and (kind, identity.namespace, old) not in keep:
            found = rt.kube.get(kind, identity.namespace, old)
            if (
                found
                and _is_ours(identity, found)
                and rt.kube.delete(kind, identity.namespace, old, found["metadata"]["uid"])
            ):
                removed.append(f"{kind} {identity.namespace}/{old}")
    return removed


# --- tokens --------------------------------------------------------------------------------


@dataclass
class TokenState:
    condition: st.Condition
    token: str | None = field(default=None, repr=False)
    audiences: list[str] = field(default_factory=list)
    expires_at: str = ""
    refresh_at: datetime | None = None
    issued: bool = False  # a new token was minted in this reconcile
    why: str = ""


def _bound_token(
    rt: Runtime,
    identity: Identity,
    sa: Mapping[str, Any],
    secret: dict[str, Any] | None,
    now: datetime,
) -> TokenState:
    ns, name = identity.namespace, identity.secret_name
    if secret is None:  # it vanished since this reconcile created or read it
        secret = rt.kube.apply(build.token_secret(identity))
    sa_uid = sa["metadata"]["uid"]
    why = tokens.why_mint(identity, secret, sa_uid, now)
    if why is None and not build.is_subset(build.token_secret(identity), secret):
        # Re-applying the Secret means re-stating its token; a fresh one is the clean way.
        why = "the token Secret was modified"
    if why is None:
        annotations = secret["metadata"].get("annotations") or {}
        return TokenState(
            st.Condition(
                st.TOKEN_ISSUED,
                True,
                "TokenValid",
                f"Bound token valid until {annotations[tokens.EXPIRES_AT]}",
            ),
            token=tokens.secret_token(secret),
            audiences=_audiences_of(secret),
            expires_at=annotations[tokens.EXPIRES_AT],
            refresh_at=tokens.parse_time(annotations[tokens.REFRESH_AT]),
        )
    response = rt.kube.request_token(
        ns,
        identity.service_account,
        identity.spec.token.lifetime_seconds,
        list(identity.spec.token.audiences),
        bound_secret=(name, secret["metadata"]["uid"]),
    )
    token = response["status"]["token"]
    expires = tokens.parse_time(response["status"]["expirationTimestamp"])
    audiences = list(response.get("spec", {}).get("audiences") or [])
    material = build.TokenMaterial(token, rfc3339(expires), rt.kube.ca_crt, rt.kube.public_server)
    manifest = build.token_secret(identity, material)
    manifest["metadata"]["annotations"] = {
        **tokens.token_annotations(identity, now, expires, secret["metadata"]["uid"], sa_uid),
        AUDIENCES: ",".join(audiences),
    }
    rt.kube.apply(manifest)
    return TokenState(
        st.Condition(
            st.TOKEN_ISSUED,
            True,
            "TokenValid",  # the same words as for a kept token: no status write just for wording
            f"Bound token valid until {rfc3339(expires)}",
        ),
        token=token,
        audiences=audiences,
        expires_at=rfc3339(expires),
        refresh_at=tokens.refresh_at(now, expires),
        issued=True,
        why=why,
    )


def _audiences_of(secret: Mapping[str, Any]) -> list[str]:
    raw = (secret["metadata"].get("annotations") or {}).get(AUDIENCES, "")
    return [a for a in raw.split(",") if a]


def _first_secret(rt: Runtime, identity: Identity) -> dict[str, Any]:
    """The token Secret as it is created, before any token is in it."""
    if identity.spec.token.type == "Bound":
        return build.token_secret(identity)
    return _legacy_secret(rt, identity, None)


def _legacy_secret(rt: Runtime, identity: Identity, token: str | None) -> dict[str, Any]:
    material = build.TokenMaterial("", "never", rt.kube.ca_crt, rt.kube.public_server)
    return build.token_secret(identity, material, legacy_token=token)


def _legacy_token(rt: Runtime, identity: Identity, secret: dict[str, Any] | None) -> TokenState:
    token = tokens.secret_token(secret)
    want = _legacy_secret(rt, identity, token)
    if secret is None or not build.is_subset(want, secret):
        secret = rt.kube.apply(want)
    if token is None:
        return TokenState(
            st.Condition(
                st.TOKEN_ISSUED,
                False,
                "WaitingForTokenController",
                "waiting for the cluster's token controller to fill the Secret",
            )
        )
    return TokenState(
        st.Condition(
            st.TOKEN_ISSUED,
            True,
            "TokenValid",
            "Legacy token filled by the token controller; it never expires",
        ),
        token=token,
        expires_at="never",
    )


def _revoke(rt: Runtime, identity: Identity, secret: Mapping[str, Any] | None) -> bool:
    if secret is None:
        return False
    uid = secret["metadata"]["uid"]
    return rt.kube.delete("Secret", identity.namespace, identity.secret_name, uid)


# --- verification --------------------------------------------------------------------------


def _cluster_role_rules(rt: Runtime, names: set[str]) -> dict[str, list[RuleDict]]:
    rules = {}
    for name in sorted(names):
        found = rt.kube.get("ClusterRole", None, name)
        rules[name] = list((found or {}).get("rules") or [])
    return rules


def prove(
    rt: Runtime, identity: Identity, consenting: set[str], token: str, audiences: list[str]
) -> tuple[Plan, Verification]:
    """The self-check: plan from the spec and the named ClusterRoles, asked with the token (or,
    for a token meant for other audiences only, with a probe token; see verify.run.verify)."""
    plan = build_plan(identity, consenting, _cluster_role_rules(rt, identity.cluster_role_names))
    return plan, verify(rt.kube, identity, plan, token, audiences, rt.baseline, rt.facts)


def stored_token(rt: Runtime, identity: Identity) -> tuple[str | None, list[str]]:
    """(token, audiences) from the identity's Secret, for an on-demand check."""
    secret = rt.kube.get("Secret", identity.namespace, identity.secret_name)
    if secret is None:
        return None, []
    return tokens.secret_token(secret), _audiences_of(secret)


def _verification_status(ver: Verification, now: datetime) -> dict[str, Any]:
    return {
        "checkedAt": rfc3339(now),
        "authenticatedAs": ver.authenticated_as,
        "allowedChecks": ver.passed_count(True),
        "deniedChecks": ver.passed_count(False),
        "failed": [r.as_failure() for r in ver.failed][:50],
        "excess": ver.excess[:50],
        "rulesHash": ver.rules_hash,
    }


def _verified_condition(identity: Identity, ver: Verification) -> st.Condition:
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
    if not ver.jwt.ok:
        return st.Condition(st.ACCESS_VERIFIED, False, "TokenSignatureInvalid", ver.jwt.reason)
    msg = (
        f"{ver.passed_count(True)} allowed and {ver.passed_count(False)} denied checks passed; "
        f"signature verified (kid {ver.jwt.key_id})"
    )
    if ver.probed:
        msg += "; the token is for other audiences: verified offline, rights asked with a probe"
    if ver.excess:
        msg += f"; {len(ver.excess)} excess rule(s) allowed by spec.verification.allowExcess"
    return st.Condition(st.ACCESS_VERIFIED, True, "AccessVerified", msg)


# --- the reconcile: gather, judge, apply, prove, report ------------------------------------


def reconcile(rt: Runtime, body: Mapping[str, Any], mem: Memory, now: datetime) -> Result:
    quiet = _recheck(rt, body, mem, now)
    if quiet is not None:
        return quiet
    mem.poked = False
    try:
        case = _gather(rt, body, now)
        _judge(rt, case, mem)
        done = _apply(rt, case, mem)
    except Stop as stop:
        # Stopped for a human to act (a conflict, a refusal): its retries are full reconciles,
        # not re-checks of a proof that no longer describes the identity.
        mem.timetable = None
        return _stop(body, now, stop)
    return _report(case, done, _prove(rt, case, done, mem))


@dataclass
class Case:
    """One identity's inputs to this reconcile; the phases add the Events they produce."""

    body: Mapping[str, Any]
    identity: Identity
    previous: dict[str, Any]
    now: datetime
    active: bool
    consenting: set[str]
    want: build.Desired
    events: list[Event] = field(default_factory=list)

    @property
    def secret_key(self) -> tuple[str, str, str]:
        return ("Secret", self.identity.namespace, self.identity.secret_name)


@dataclass
class Applied:
    """What the apply phase achieved: the children's condition and the token."""

    provisioned: st.Condition
    grants: list[dict[str, str]]
    token: TokenState
    wake: float  # the interval, the next schedule change, token refresh
    wrote: bool  # RBAC objects were written or removed: the authorizer may lag behind


@dataclass
class Proof:
    """The prove phase's outcome: AccessVerified, the verification status to show, and when to
    look again (at the latest)."""

    condition: st.Condition
    verification: Mapping[str, Any] | None
    wake: float = float("inf")
    token_extra: Mapping[str, str] | None = None
    check: str = ""  # "full" when the self-check ran


def _gather(rt: Runtime, body: Mapping[str, Any], now: datetime) -> Case:
    try:
        identity = parse_identity(dict(body))
    except SpecError as exc:
        raise Stop(str(exc), "InvalidSpec") from exc
    active = identity.spec.schedule.active_at(now)
    consenting = consenting_namespaces(rt, identity)
    want = build.desired_state(identity, consenting, active)
    return Case(body, identity, dict(body.get("status") or {}), now, active, consenting, want)


# --- judge ---------------------------------------------------------------------------------


def _judge(rt: Runtime, case: Case, mem: Memory) -> None:
    """The operator-wide policy, the cluster's discovery (a rule must name what it serves),
    then the requester's own rights (escalation.py)."""
    violations = check(case.identity, rt.policy)
    if violations:
        raise Stop("; ".join(str(v) for v in violations), "PolicyViolation")
    unknown = rt.discovery.judge(case.identity, rt.policy.extra_verbs)
    if unknown:
        raise Stop("; ".join(map(str, unknown)), "UnknownRule", retry_in=UNKNOWN_RULE_AGAIN)
    annotations = case.body.get("metadata", {}).get("annotations") or {}
    stamp = annotations.get(esc.REQUESTER_ANNOTATION)
    verdict = (case.identity.generation, stamp)
    if mem.judged == verdict:
        return
    where = f"metadata.annotations[{esc.REQUESTER_ANNOTATION}]"
    # No exemption for an unstamped spec, whatever its status says: status is written by more
    # than this operator, and admission records a requester on every supported version.
    if stamp is None:
        raise Stop(
            f"{where}: no requester recorded for generation {case.identity.generation}; "
            "the requester recording appidentity-requester (README, Install) must be "
            "installed when the spec is written: change the spec once it is",
            ESCALATION_REFUSED,
        )
    try:
        requester = esc.parse_stamp(stamp)
    except esc.StampError as exc:
        raise Stop(f"{where}: malformed ({exc})", ESCALATION_REFUSED) from exc
    refused = _refusals(rt, case.identity, requester)
    if refused:
        message = "; ".join(r.message(requester.username) for r in refused)
        if mem.refused != verdict:
            # A GitOps apply writes the requester's RBAC together with the identity, and
            # RBAC reaches the authorizer a moment later: one more look before refusing.
            mem.refused = verdict
            pending = f"re-checking in {JUDGE_FIRST_RETRY:.0f}s: {message}"
            raise Stop(pending, JUDGING, retry_in=JUDGE_FIRST_RETRY, event=False)
        # Asked again from time to time: rights granted after the refusal take effect.
        raise Stop(message, ESCALATION_REFUSED, retry_in=JUDGE_AGAIN)
    mem.judged = verdict


def _refusals(rt: Runtime, identity: Identity, requester: esc.Requester) -> list[esc.Refusal]:
    """Asks SubjectAccessReviews for the requester: the overrides first, then the permissions
    of the grants they do not cover (reading a ClusterRole only when `bind` on it is denied)."""
    user = requester.review_user()

    def ask(questions: list[Request]) -> dict[Request, bool]:
        allowed = REVIEWS.map(lambda r: rt.kube.subject_access_review(user, r), questions)
        return dict(zip(questions, allowed, strict=True))

    wanted = esc.grants(identity)
    answers = ask(esc.questions(wanted, {}))
    roles = esc.unexpanded(wanted, answers)
    if roles:
        wanted = esc.grants(identity, _cluster_role_rules(rt, roles))
    answers |= ask(esc.questions(wanted, answers))
    return esc.refusals(wanted, answers)


# --- apply ---------------------------------------------------------------------------------


def _apply(rt: Runtime, case: Case, mem: Memory) -> Applied:
    """The children (created, applied where they differ, pruned where no longer wanted), then
    the token; refuses (Conflict, ApplyRefused) with nothing of this reconcile left behind."""
    identity, want = case.identity, case.want
    keys = [build.object_key(o) for o in want.objects] + [case.secret_key]
    created: list[dict[str, Any]] = []
    try:
        wanted = {build.object_key(o): o for o in want.objects}
        live = _live(rt, identity, keys, wanted, new=not st.reported(case.previous))
        # Recorded before applying, so the watch events of the operator's own writes match
        # what it wants and do not wake the identity again.
        mem.desired = wanted
        applied, wrote = _write(rt, identity, want.objects, live, created)
        if case.active and live[case.secret_key] is None:
            secret = _create(rt, identity, _first_secret(rt, identity), created)[0]
            live[case.secret_key] = secret
    except Conflict:
        _undo(rt, created)
        raise
    mem.namespace = identity.namespace
    mem.service_account = identity.service_account
    mem.grant_namespaces = set(identity.grant_namespaces)
    mem.cluster_roles = identity.cluster_role_names
    wrote |= _prune_unwanted(rt, case, mem)
    sa = applied[("ServiceAccount", identity.namespace, identity.service_account)]
    token = _token(rt, case, sa, live[case.secret_key], mem)
    return Applied(_provisioned(case), _grants(case), token, _base_wake(case, token), wrote)


def _prune_unwanted(rt: Runtime, case: Case, mem: Memory) -> bool:
    """Whether anything was removed."""
    identity = case.identity
    if mem.pruned_for is None:
        mem.pruned_for = _already_pruned(identity, case.previous)
    if mem.pruned_for == (identity.generation, case.active):
        return False
    removed = _prune(rt, identity, case.want.keys() | {case.secret_key}, case.previous)
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


def _schedule_message(identity: Identity, now: datetime) -> str:
    schedule = identity.spec.schedule
    when: datetime | None
    if schedule.not_before and now < schedule.not_before:
        state, when = "not active before", schedule.not_before
    else:
        state, when = "expired at", schedule.expires_at
    return f"schedule: {state} {rfc3339(when) if when else ''}; no bindings, no token"


def _token(
    rt: Runtime,
    case: Case,
    sa: Mapping[str, Any],
    secret: dict[str, Any] | None,
    mem: Memory,
) -> TokenState:
    """Outside the schedule: the Secret deleted (revoking its token). Inside: a valid token,
    minted or kept; a new one is due for a proof."""
    identity = case.identity
    if not case.active:
        if _revoke(rt, identity, secret):
            why = "outside the schedule window: token Secret deleted"
            case.events.append(Event("Normal", "TokenRevoked", why))
        message = _schedule_message(identity, case.now)
        return TokenState(st.Condition(st.TOKEN_ISSUED, False, "ScheduleInactive", message))
    token = (
        _bound_token(rt, identity, sa, secret, case.now)
        if identity.spec.token.type == "Bound"
        else _legacy_token(rt, identity, secret)
    )
    if token.issued:
        mem.verify_soon = True
        # The first token of an identity is part of its provisioning, which its first outcome
        # Event reports; later ones (rotation, repair) get an Event of their own.
        if (case.previous.get("token") or {}).get("expiresAt"):
            why = f"new token minted ({token.why}), valid until {token.expires_at}"
            case.events.append(Event("Normal", "TokenIssued", why))
    return token


def _base_wake(case: Case, token: TokenState) -> float:
    spec = case.identity.spec
    wake = float(spec.verification.interval_seconds)
    change = spec.schedule.next_change_after(case.now)
    if change:
        wake = min(wake, (change - case.now).total_seconds() + 0.5)
    if token.token is not None and token.refresh_at:
        wake = min(wake, max(1.0, (token.refresh_at - case.now).total_seconds()))
    return wake


# --- prove ---------------------------------------------------------------------------------


def _prove(rt: Runtime, case: Case, done: Applied, mem: Memory) -> Proof:
    """The full self-check with the token, when one is due. A failure right after the
    operator's own RBAC writes is asked again after RETRY_DELAYS before it is reported (RBAC
    reaches the authorizer a moment after it is written); any other outcome is reported at
    once."""
    identity, now = case.identity, case.now
    if not case.active:
        mem.timetable = None
        message = _schedule_message(identity, now)
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
        return Proof(_previous_verified(case.previous), last, tt.next_wake(now))
    adopted = _adopt(rt, case, done, mem)
    if adopted is not None:
        return adopted

    plan, ver = prove(rt, identity, case.consenting, done.token.token, done.token.audiences)
    cond = _verified_condition(identity, ver)
    if plan.truncated:
        note = f" ({plan.truncated} allowed checks beyond the limit were not asked)"
        cond = st.Condition(cond.type, cond.status, cond.reason, cond.message + note)
    if cond.status is not True and (mem.retries or done.wrote) and mem.retries < len(RETRY_DELAYS):
        delay = RETRY_DELAYS[mem.retries]
        mem.retries += 1
        pending = st.Condition(
            st.ACCESS_VERIFIED, None, VERIFYING, f"re-checking in {delay:.0f}s: {cond.message}"
        )
        return Proof(pending, case.previous.get("verification"), delay, check="full")
    # A proof woken by an event that shows nothing new may have beaten the authorizer to it.
    settle = mem.verify_soon and not done.wrote and ver.rules_hash == mem.rules_hash
    _remember_proof(rt, case, done.token, mem, plan, ver, cond, settle)
    verification = _verification_status(ver, now)
    extra = {"issuer": ver.jwt.issuer, "keyID": ver.jwt.key_id}
    assert mem.timetable is not None
    return Proof(cond, verification, mem.timetable.next_wake(now), extra, "full")


def _remember_proof(
    rt: Runtime,
    case: Case,
    token: TokenState,
    mem: Memory,
    plan: Plan,
    ver: Verification,
    cond: st.Condition,
    settle: bool,
) -> None:
    """What the next wake-ups need: when this proof goes stale, and the token and namespaces a
    re-check asks with. A token for other audiences is never sent to the API server, so it is
    proven in full at every interval (with a probe), as is an identity that is not verified."""
    identity, now = case.identity, case.now
    mem.retries = 0
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
    cheap = cond.status is True and not ver.probed
    full_at = now + jittered(rt.full_proof_seconds) if cheap else None
    mem.token = token.token if cheap else None
    mem.rules_namespaces = plan.namespaces
    mem.timetable = _timetable(rt, identity, token, now, full_at)
    if settle and cheap:
        mem.timetable.settle = SETTLE_DELAYS
        mem.timetable.rechecked(now)


def _previous_verified(previous: Mapping[str, Any]) -> st.Condition:
    found: Mapping[str, Any] = next(
        (c for c in previous.get("conditions", []) if c.get("type") == st.ACCESS_VERIFIED), {}
    )
    status = {"True": True, "False": False}.get(found.get("status", ""))
    return st.Condition(
        st.ACCESS_VERIFIED, status, found.get("reason", ""), found.get("message", "")
    )


def _timetable(
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


def _adopt(rt: Runtime, case: Case, done: Applied, mem: Memory) -> Proof | None:
    """A restarted operator takes over the last process's full proof instead of repeating it,
    when the status shows this generation verified within the full-proof interval and this
    reconcile changed nothing: the token's signature is checked offline and its effective rules
    re-read (a re-check); any difference means a full proof."""
    identity, now, previous, token = case.identity, case.now, case.previous, done.token
    last = previous.get("verification") or {}
    cond = _previous_verified(previous)
    checked = last.get("checkedAt")
    if (
        mem.verified_generation != -1
        or mem.verify_soon
        or done.wrote
        or token.issued
        or token.token is None
        or previous.get("observedGeneration") != identity.generation
        or cond.status is not True
        or not last.get("rulesHash")
        or not checked
        or not for_api_server(token.audiences, rt.baseline.api_audiences())
    ):
        return None
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
    mem.timetable = _timetable(rt, identity, token, now, full_at)
    return Proof(cond, last, mem.timetable.next_wake(now), check="rules")


def _recheck(rt: Runtime, body: Mapping[str, Any], mem: Memory, now: datetime) -> Result | None:
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


# --- report --------------------------------------------------------------------------------


def _report(case: Case, done: Applied, proof: Proof) -> Result:
    result = _finish(
        case.identity,
        case.previous,
        case.now,
        [done.provisioned, done.token.condition, proof.condition],
        done.token,
        proof.verification,
        done.grants,
        case.events,
        min(done.wake, proof.wake),
        proof.token_extra,
    )
    result.check = proof.check
    return result


def _finish(
    identity: Identity,
    previous: Mapping[str, Any],
    now: datetime,
    parts: list[st.Condition],
    token: TokenState,
    verification: Mapping[str, Any] | None,
    grants: list[dict[str, str]],
    events: list[Event],
    wake: float,
    token_extra: Mapping[str, str] | None = None,
) -> Result:
    token_status: dict[str, Any] = {"type": identity.spec.token.type}
    if token.expires_at:
        token_status["expiresAt"] = token.expires_at
    if token.refresh_at:
        token_status["refreshAt"] = rfc3339(token.refresh_at)
    if token.audiences:
        token_status["audiences"] = token.audiences
    old_token = previous.get("token") or {}
    extra = token_extra or {k: old_token[k] for k in ("issuer", "keyID") if k in old_token}
    token_status.update(extra)
    status: dict[str, Any] = {
        "observedGeneration": identity.generation,
        "conditions": st.conditions(
            parts, previous.get("conditions", []), identity.generation, _now_text(now)
        ),
        "subject": identity.subject,
        "serviceAccountName": identity.service_account,
        "secretName": identity.secret_name,
        "grants": grants,
        "token": token_status,
    }
    if verification is not None:
        status["verification"] = dict(verification)
    before, after = st.outcome_of(previous), st.outcome_of(status)
    if before != after and after[1] != VERIFYING:
        ready = next(c for c in status["conditions"] if c["type"] == st.READY)
        kind = "Normal" if after[0] == "True" else "Warning"
        events.append(Event(kind, after[1] or "Unknown", ready["message"]))
    return Result(status, events, max(0.5, wake))


# --- deletion ------------------------------------------------------------------------------


def cleanup(kube: Kube, body: Mapping[str, Any]) -> list[str]:
    """Removes everything an identity created, in every namespace and at cluster scope; the
    token dies with its Secret. Works from labels and status alone, so it also runs for an
    identity whose spec has become invalid."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    key = identity_key(ns, name)
    selector = f"{MANAGED_BY}=appidentity-operator,{IDENTITY_LABEL}={key}"
    removed = []
    for kind in PRUNE_KINDS:
        for obj in kube.list_objects(kind, None, selector):
            m = obj["metadata"]
            if kube.delete(kind, m.get("namespace"), m["name"], m.get("uid")):
                removed.append(f"{kind} {m.get('namespace', '')}/{m['name']}")
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    secret_names = {
        status.get("secretName"),
        (spec.get("token") or {}).get("secretName") or f"{name}-token",
    }
    sa_names = {
        status.get("serviceAccountName"),
        (spec.get("serviceAccount") or {}).get("name") or name,
    }
    for kind, names in (("Secret", secret_names), ("ServiceAccount", sa_names)):
        for obj_name in sorted(n for n in names if n):
            found = kube.get(kind, ns, obj_name)
            labels = (found or {}).get("metadata", {}).get("labels") or {}
            if (
                found
                and labels.get(IDENTITY_LABEL) == key
                and kube.delete(kind, ns, obj_name, found["metadata"]["uid"])
            ):
                removed.append(f"{kind} {ns}/{obj_name}")
    return removed
