"""kopf wiring only: which events wake which identity, and where results go.

One scheduler turns every AppIdentity's work (provision, token, self-check, status) into
turns on a small thread pool, never two of one identity at once; between turns an identity
costs a heap entry, not a task or a timer. Everything else only *pokes* an identity, making
its next turn due now: a change of the AppIdentity, a deleted or edited child (drift), a
binding or ClusterRole that can change what the identity's token may do.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from . import FIELD_MANAGER, GROUP, PLURAL, VERSION
from . import metrics as m
from .desired import is_subset, object_key
from .kube import ApiError, Kube, load_configuration
from .model import IDENTITY_LABEL, MANAGED_BY, identity_key, rfc3339, utcnow
from .policy import load_policy
from .reconcile import Memory, Result, Runtime, cleanup, reconcile
from .schedule import FULL_PROOF_SECONDS
from .status import interrupted, without_timestamps
from .tokens import parse_time
from .verify.baseline import Baseline

log = logging.getLogger("appidentity")
RBAC = "rbac.authorization.k8s.io"
ERROR_BACKOFF = 5.0


@dataclass
class Options:
    """Set by `appidentity-operator run` before kopf starts."""

    kubeconfig: str | None = None
    policy: Path | None = None
    operator_namespace: str = "appidentity-system"
    metrics_port: int = 0
    public_server: str | None = None
    recheck_seconds: float | None = None
    full_proof_seconds: float = FULL_PROOF_SECONDS
    workers: int = 8


OPTIONS = Options()
POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconcile")  # resized at startup


@dataclass
class Tracked:
    memory: Memory = field(default_factory=Memory)
    # The AppIdentity as last delivered by the watch, and the status last written while the
    # watch has not delivered it yet: compact JSON, a fifth of the memory of parsed dicts.
    body: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # a reconcile or the cleanup
    drift: list[str] = field(default_factory=list)
    last_written: bytes | None = None
    generation: int | None = None  # the AppIdentity generation last reconciled or poked for


class Registry:
    """The tracked identities, and who to wake for an RBAC or namespace event: indexed by what
    the event names (a ServiceAccount, a namespace's ServiceAccounts, a ClusterRole, a namespace
    granted into), so an event costs the identities it concerns, not a scan of all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Tracked] = {}
        self._index: dict[tuple[str, str], set[str]] = {}
        self._terms: dict[str, set[tuple[str, str]]] = {}

    def get(self, key: str) -> Tracked:
        with self._lock:
            return self._items.setdefault(key, Tracked())

    def find(self, key: str) -> Tracked | None:
        with self._lock:
            return self._items.get(key)

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)
            self._unindex(key)

    def index(self, key: str, memory: Memory) -> None:
        """Records what an identity's rights depend on, as its last reconcile found it."""
        terms = {("sa", f"{memory.namespace}/{memory.service_account}"), ("ns", memory.namespace)}
        terms |= {("clusterrole", name) for name in memory.cluster_roles}
        terms |= {("grant", ns) for ns in memory.grant_namespaces}
        if not memory.namespace:  # not provisioned yet: nothing to be woken for
            return
        with self._lock:
            if self._terms.get(key) == terms or key not in self._items:
                return
            self._unindex(key)
            self._terms[key] = terms
            for term in terms:
                self._index.setdefault(term, set()).add(key)

    def _unindex(self, key: str) -> None:
        for term in self._terms.pop(key, set()):
            keys = self._index.get(term, set())
            keys.discard(key)
            if not keys:
                self._index.pop(term, None)

    def keys_for(self, *terms: tuple[str, str]) -> set[str]:
        with self._lock:
            return set().union(*(self._index.get(t, set()) for t in terms))

    def items(self) -> list[tuple[str, Tracked]]:
        with self._lock:
            return list(self._items.items())

    def poke(self, key: str, why: str | None = None, verify: bool = False) -> None:
        tracked = self.find(key)
        if tracked is None:
            return
        if why:
            tracked.drift.append(why)
        if verify:
            tracked.memory.verify_soon = True
        tracked.memory.poked = True
        SCHEDULER.now(key)


class Scheduler:
    """One timer and one queue for every identity, instead of a task and a timer each: an
    identity is due at one time (the soonest asked for), runs in POOL, and never twice at once;
    asked for while it runs, it runs again right after. Used from the event loop only."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._wake = asyncio.Event()

    def at(self, key: str, when: float) -> None:
        if self._due.get(key, float("inf")) <= when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, key))
        self._wake.set()

    def now(self, key: str) -> None:
        self.at(key, asyncio.get_running_loop().time())

    async def run(self, rt: Runtime) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                when, key = heapq.heappop(self._heap)
                if self._due.get(key) != when:
                    continue  # moved earlier since
                del self._due[key]
                if key in self._running:
                    self._again.add(key)
                else:
                    self._start(loop, rt, key)
            timeout = self._heap[0][0] - now if self._heap else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _start(self, loop: asyncio.AbstractEventLoop, rt: Runtime, key: str) -> None:
        tracked = REGISTRY.find(key)
        if tracked is None:
            return
        self._running.add(key)
        future = loop.run_in_executor(POOL, _turn, rt, tracked)
        future.add_done_callback(lambda f: self._done(loop, key, f))

    def _done(self, loop: asyncio.AbstractEventLoop, key: str, future: Any) -> None:
        self._running.discard(key)
        try:
            wait: float | None = future.result()
        except Exception:  # a bug, not the API server: logged, and tried again later
            log.exception("%s: reconcile failed, retrying in %.0fs", key, ERROR_BACKOFF)
            wait = ERROR_BACKOFF
        if REGISTRY.find(key) is None or wait is None:
            self._again.discard(key)
            return
        if key in self._again:
            self._again.discard(key)
            wait = 0.0
        self.at(key, loop.time() + wait)


SCHEDULER = Scheduler()


REGISTRY = Registry()
RUNTIME: Runtime | None = None


def _key(body: Mapping[str, Any]) -> str:
    """Registry key = the identity label value, so a child's label finds its identity."""
    meta = body["metadata"]
    return identity_key(meta["namespace"], meta["name"])


def _runtime() -> Runtime:
    assert RUNTIME is not None, "the operator was not started through its startup handler"
    return RUNTIME


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff-base serves create/update/resume handlers; this operator has none (its
    turns read the watched object, deletion is the only changing handler). Storing nothing
    spares a patch of every new AppIdentity, and building nothing spares a deep copy of every
    object of every watched kind on every event."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global RUNTIME, POOL
    POOL = ThreadPoolExecutor(max_workers=OPTIONS.workers, thread_name_prefix="reconcile")
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    # kopf turns log lines into Events; ours are posted explicitly, so only failures of kopf
    # itself become Events (their texts are exception messages, which never hold a token).
    settings.posting.level = logging.ERROR
    # A per-object worker and the last event it handled live this long after that event: short,
    # so a burst of creations does not hold thousands of objects in memory at once.
    settings.batching.idle_timeout = 1.0
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # Initial listings in pages: a restart with 10,000 identities lists 10,000 objects of each
    # watched kind, and one response each was the process's peak of memory.
    settings.watching.chunk_size = 500
    settings.networking.request_timeout = 30
    settings.execution.max_workers = 8  # sync handlers only: startup, login, deletion
    managed = f"{MANAGED_BY}={FIELD_MANAGER}"
    settings.watching.label_selectors["serviceaccounts"] = managed
    settings.watching.label_selectors[RBAC, "roles"] = managed
    kube = Kube.connect(OPTIONS.kubeconfig, OPTIONS.public_server)
    baseline = Baseline(kube, OPTIONS.operator_namespace)
    baseline.ensure()
    RUNTIME = Runtime(
        kube=kube,
        policy=load_policy(OPTIONS.policy),
        baseline=baseline,
        recheck_seconds=OPTIONS.recheck_seconds,
        full_proof_seconds=OPTIONS.full_proof_seconds,
    )
    if OPTIONS.metrics_port:
        m.serve(OPTIONS.metrics_port)


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's watches use the same credentials as the operator's own calls."""
    cfg = load_configuration(OPTIONS.kubeconfig)
    auth = cfg.get_api_key_with_prefix("BearerToken", alias="authorization") or ""
    scheme, _sep, token = auth.partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _slim(event: Mapping[str, Any]) -> None:
    """Drops managedFields (and kubectl's copy of the last applied spec) from an AppIdentity as
    delivered, before it is kept as that identity's body: nothing here reads them, and they
    were half of what every identity cost in memory (the field sets of three field managers,
    as small dicts)."""
    obj = event.get("object")
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        (meta.get("annotations") or {}).pop(LAST_APPLIED, None)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def identity_changed(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """Tracks every AppIdentity and wakes it when it is new, for a new spec or its deletion,
    not for status and metadata writes (the operator's own, kopf's): those would only repeat a
    reconcile."""
    _slim(event)
    key = _key(body)
    if event.get("type") == "DELETED":
        REGISTRY.forget(key)
        return
    tracked = REGISTRY.get(key)
    tracked.body = _compact(event["object"])
    if tracked.last_written is not None and _compact(body.get("status")) == tracked.last_written:
        tracked.last_written = None  # delivered: the body has it now
    meta = body.get("metadata", {})
    generation = meta.get("generation")
    if generation == tracked.generation and not meta.get("deletionTimestamp"):
        return
    tracked.generation = generation
    REGISTRY.poke(key)


def _publish(rt: Runtime, body: Mapping[str, Any], tracked: Tracked, result: Result) -> None:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    if tracked.drift and not any(e.type == "Warning" for e in result.events):
        rt.kube.post_event(
            body,
            "Normal",
            "DriftRepaired",
            "restored: " + "; ".join(sorted(set(tracked.drift)))[:900],
        )
    tracked.drift.clear()
    for event in result.events:
        rt.kube.post_event(body, event.type, event.reason, event.message)
        log.info("%s/%s %s: %s", ns, name, event.reason, event.message)
    last = dict(body.get("status") or {})  # the last written one, see _cycle
    interval = ((body.get("spec") or {}).get("verification") or {}).get("intervalSeconds", 600)
    if _needs_write(last, result.status, float(interval)):
        rt.kube.patch_status(ns, name, result.status)
        tracked.last_written = _compact(result.status)
    _export(ns, name, result.status)


def _needs_write(last: Mapping[str, Any], new: Mapping[str, Any], interval: float) -> bool:
    """A re-check that found nothing new is written only once the written one is an interval
    old: a restart re-proves every identity without rewriting every status."""
    if without_timestamps(last) != without_timestamps(new):
        return True
    before = (last.get("verification") or {}).get("checkedAt")
    after = (new.get("verification") or {}).get("checkedAt")
    if before == after or not before or not after:
        return before != after
    return bool((parse_time(after) - parse_time(before)).total_seconds() >= 0.9 * interval)


def _export(ns: str, name: str, status: Mapping[str, Any]) -> None:
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    m.VERIFIED.labels(ns, name).set(1 if conditions.get("AccessVerified") == "True" else 0)
    m.EXCESS.labels(ns, name).set(len((status.get("verification") or {}).get("excess", [])))
    expires = (status.get("token") or {}).get("expiresAt", "")
    if expires and expires != "never":
        m.TOKEN_EXPIRY.labels(ns, name).set((parse_time(expires) - utcnow()).total_seconds())


def _cycle(rt: Runtime, body: dict[str, Any], tracked: Tracked) -> float:
    """One reconcile and its publication, in a worker thread (the client blocks). Returns the
    seconds until the identity needs attention again."""
    key = _key(body)
    started = time.monotonic()
    if tracked.last_written is not None:
        # The watch may not have delivered our own last status write yet; comparing against a
        # stale status would repeat Events and reset transition times.
        body = {**body, "status": json.loads(tracked.last_written)}
    try:
        result = reconcile(rt, body, tracked.memory, utcnow())
        REGISTRY.index(key, tracked.memory)
        _publish(rt, body, tracked, result)
        m.RECONCILES.labels("ok").inc()
        if result.check:
            m.CHECKS.labels(result.check).inc()
        return result.wake_in
    except ApiError as exc:
        # The retry is a full reconcile, and proves again: the status may not hold this proof.
        tracked.memory.poked = tracked.memory.verify_soon = True
        log.warning("%s: API error %s, retrying in %.0fs", key, exc, ERROR_BACKOFF)
        m.RECONCILES.labels("error").inc()
        m.ERRORS.labels("reconcile").inc()
        _report_interrupted(rt, body, tracked, exc)
        return ERROR_BACKOFF
    finally:
        m.RECONCILE_SECONDS.observe(time.monotonic() - started)


def _report_interrupted(
    rt: Runtime, body: Mapping[str, Any], tracked: Tracked, exc: ApiError
) -> None:
    """Reconciling=True while a reconcile keeps failing on the API server, so GitOps tools wait
    instead of trusting the last outcome; best effort, as the API server is what failed."""
    meta = body["metadata"]
    previous = dict(body.get("status") or {})
    message = f"retrying in {ERROR_BACKOFF:.0f}s after an API error: {exc}"[:900]
    status = interrupted(previous, meta.get("generation", 0), message, rfc3339(utcnow()))
    if without_timestamps(status) == without_timestamps(previous):
        return
    try:
        rt.kube.patch_status(meta["namespace"], meta["name"], status)
        tracked.last_written = _compact(status)
    except ApiError as again:
        log.warning("%s/%s: status not written either: %s", meta["namespace"], meta["name"], again)


def _turn(rt: Runtime, tracked: Tracked) -> float | None:
    """An identity's turn in a worker thread: None once it is being deleted (the finalizer's
    cleanup takes over), else the seconds until its next turn."""
    with tracked.lock:
        if tracked.body is None:
            return None
        body = json.loads(tracked.body)
        if body["metadata"].get("deletionTimestamp"):
            return None
        tracked.generation = body["metadata"].get("generation")
        return _cycle(rt, body, tracked)


@kopf.on.startup()
async def start_scheduler(**_: Any) -> None:
    global SCHEDULER_TASK
    SCHEDULER_TASK = asyncio.create_task(SCHEDULER.run(_runtime()), name="appidentity-scheduler")


@kopf.on.cleanup()
async def stop_scheduler(**_: Any) -> None:
    if SCHEDULER_TASK is not None:
        SCHEDULER_TASK.cancel()


SCHEDULER_TASK: asyncio.Task[None] | None = None


@kopf.on.delete(GROUP, VERSION, PLURAL)
def identity_deleted(body: kopf.Body, **_: Any) -> None:
    rt = _runtime()
    tracked = REGISTRY.get(_key(body))
    with tracked.lock:  # after a reconcile in flight, never beside it
        removed = cleanup(rt.kube, body)
    meta = body["metadata"]
    REGISTRY.forget(_key(body))
    m.forget(meta["namespace"], meta["name"])
    log.info("%s/%s deleted; removed %d objects", meta["namespace"], meta["name"], len(removed))


# --- children and RBAC: wake the identity whose rights may have changed ----------------------


def _listed(event: Mapping[str, Any]) -> bool:
    """kopf delivers a watch's initial listing as events without a type. At start-up every
    identity's first reconcile re-proves it in full, so a listed binding, ClusterRole or
    namespace is no reason to ask again; only a child that differs from what its identity
    wants is."""
    return event.get("type") is None


def _child_event(event: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """Pokes the owning identity when one of its children was deleted or no longer says what
    the operator applied. Returns whether the object was a managed child."""
    labels = body.get("metadata", {}).get("labels") or {}
    owner = labels.get(IDENTITY_LABEL)
    if not owner or labels.get(MANAGED_BY) != FIELD_MANAGER:
        return False
    key = object_key(body)
    tracked = REGISTRY.find(owner)
    wanted = tracked.memory.desired.get(key) if tracked else None
    deleted = event.get("type") == "DELETED"
    matches = wanted is not None and not deleted and is_subset(wanted, body)
    if RUNTIME is not None:
        if deleted:
            RUNTIME.forget_child(key)
        else:
            RUNTIME.remember_child(key, body, wanted if matches else None)
    if wanted is None:
        if not _listed(event):  # a listing precedes the identity's first reconcile anyway
            REGISTRY.poke(owner)
        return True
    what = f"{key[0]} {key[1] + '/' if key[1] else ''}{key[2]}"
    if deleted:
        REGISTRY.poke(owner, f"{what} was deleted", verify=True)
    elif not matches:
        REGISTRY.poke(owner, f"{what} was changed", verify=True)
    return True


def _subject_keys(subjects: list[Mapping[str, Any]] | None) -> set[str]:
    """Identities whose ServiceAccount a binding names, directly or through a group."""
    groups = {str(s.get("name")) for s in subjects or [] if s.get("kind") == "Group"}
    if groups & {"system:serviceaccounts", "system:authenticated"}:
        return {key for key, _ in REGISTRY.items()}
    prefix = "system:serviceaccounts:"
    terms = [("ns", g[len(prefix) :]) for g in groups if g.startswith(prefix)]
    terms += [
        ("sa", f"{s.get('namespace')}/{s.get('name')}")
        for s in subjects or []
        if s.get("kind") == "ServiceAccount"
    ]
    return REGISTRY.keys_for(*terms)


@kopf.on.event("v1", "serviceaccounts")
async def service_account_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    _child_event(event, body)


@kopf.on.event(RBAC, "v1", "roles")
async def role_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    _child_event(event, body)


def _binding_event(event: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    if not _child_event(event, body) and not _listed(event):
        for key in _subject_keys(body.get("subjects")):
            REGISTRY.poke(key, verify=True)


@kopf.on.event(RBAC, "v1", "rolebindings")
async def role_binding_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    _binding_event(event, body)


@kopf.on.event(RBAC, "v1", "clusterrolebindings")
async def cluster_role_binding_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    _binding_event(event, body)


@kopf.on.event(RBAC, "v1", "clusterroles")
async def cluster_role_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    if _child_event(event, body) or _listed(event):
        return
    name = str(body.get("metadata", {}).get("name"))
    for key in REGISTRY.keys_for(("clusterrole", name)):
        REGISTRY.poke(key, verify=True)


@kopf.on.event("v1", "namespaces")
async def namespace_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """Consent is given or withdrawn on the namespace: identities granting into it look again."""
    meta = body.get("metadata", {})
    name = meta.get("name")
    if RUNTIME is not None:
        if event.get("type") == "DELETED":
            RUNTIME.namespaces.pop(name, None)
        else:
            RUNTIME.namespaces[name] = dict(meta.get("annotations") or {})
    if _listed(event):
        return
    for key in REGISTRY.keys_for(("grant", str(name))):
        REGISTRY.poke(key, verify=True)
