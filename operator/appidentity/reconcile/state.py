"""What one reconcile works with: the process-wide Runtime, the per-identity Memory kept
between reconciles, the Case a reconcile builds from its inputs, and what each phase hands the
next (TokenState, Applied, Proof) until a Result leaves for the handlers."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .. import desired as build
from .. import status as st
from ..discovery import Discovery, DiscoveryCache
from ..kube import Kube
from ..model import Identity
from ..policy import Policy
from ..schedule import FULL_PROOF_SECONDS, Timetable
from ..usage.live import LiveUsage
from ..verify.baseline import Baseline
from ..verify.run import ClusterFacts

MATCHED = "appidentity.dev/matched"  # in a remembered child: the desired object it matched


@dataclass
class Runtime:
    """Process-wide collaborators, built once at start."""

    kube: Kube
    policy: Policy
    baseline: Baseline
    facts: ClusterFacts = field(default_factory=ClusterFacts)
    recheck_seconds: float | None = None  # every identity's re-check interval, if set
    full_proof_seconds: float = FULL_PROOF_SECONDS
    # What the audit webhook receiver saw of each identity's requests; None when it is off.
    usage: LiveUsage | None = None
    # Managed children as the watches last saw them (see `remember_child`): lets a reconcile
    # skip applies that would change nothing, so a restarted operator with nothing drifted
    # writes nothing.
    children: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    # Namespace name -> its annotations, as watched (consent lives there); absent = not yet seen.
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    # Namespace watch events, numbered; and each namespace's last one. A turn compares them
    # with the number before its reconcile, which may have read a consent just before it changed.
    namespace_events: int = 0
    namespace_changed: dict[str, int] = field(default_factory=dict)
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

    def namespace_event(self, name: str, annotations: Mapping[str, str] | None) -> None:
        """A namespace as watched (its annotations hold the consent), or gone (None)."""
        if annotations is None:
            self.namespaces.pop(name, None)
            self.namespace_changed.pop(name, None)
            return
        self.namespaces[name] = dict(annotations)
        self.namespace_events += 1
        self.namespace_changed[name] = self.namespace_events

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
        # The desired object's labels, shared by all of the identity's children: the watched
        # ones hold at least those (they matched), and only those are read (whose child it is).
        labels = matches.get("metadata", {}).get("labels")
        return {"metadata": {"uid": meta.get("uid"), "labels": labels}, MATCHED: matches}
    # kopf replaces an object's dict on every event and never edits one in place, so a shallow
    # copy is enough; managedFields is the bulk of it and never compared.
    trimmed = {k: v for k, v in meta.items() if k != "managedFields"}
    return {**obj, "metadata": trimmed}


@dataclass(slots=True)
class Memory:
    """What the operator remembers about one identity between reconciles, in this process only.
    Losing it (a restart) costs reads, never correctness. Slotted, as are Tracked and Timetable,
    since every identity holds one."""

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
    keys_failures: int = 0  # proofs in a row that could not read the issuer's keys
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
class TokenState:
    condition: st.Condition
    token: str | None = field(default=None, repr=False)
    audiences: list[str] = field(default_factory=list)
    expires_at: str = ""
    refresh_at: datetime | None = None
    issued: bool = False  # a new token was minted in this reconcile
    why: str = ""
    rotation: str = ""  # the `kubectl appid rotate` request this token answers, once done
    secret_uid: str = ""  # the Secret holding it (the sentinel's owner)


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
