"""kopf wiring only: which events wake which identity, and where results go.

One scheduler (scheduler.py) turns every AppIdentity's work (turns.py: the reconcile and its
publication) into turns on a small thread pool, never two of one identity at once; between
turns an identity costs a heap entry in it and an entry in the registry (registry.py), not a
task or a timer. Everything else only *pokes* an identity, making its next turn due now: a
change of the AppIdentity, a deleted or edited child (drift), a binding or ClusterRole that can
change what the identity's token may do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from kopf._core.reactor.inventory import ResourceMemories, ResourceMemory  # see kopf.run(memories)

from . import FIELD_MANAGER, GROUP, KIND, PLURAL, VERSION, turns
from . import metrics as m
from .audit_receiver import Receiver, ReceiverConfig
from .desired import TOKEN_SECRET_OF, is_subset, object_key
from .kube import Kube, load_configuration
from .model import IDENTITY_LABEL, MANAGED_BY, identity_key
from .policy import load_policy
from .reconcile import Runtime, cleanup
from .registry import Registry, compact
from .schedule import FULL_PROOF_SECONDS
from .scheduler import WORKERS, Scheduler
from .tokens import rotation_requested
from .usage.live import LiveUsage
from .verify.baseline import Baseline

log = logging.getLogger("appidentity")
RBAC = "rbac.authorization.k8s.io"


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
    workers: int = WORKERS
    audit_webhook: ReceiverConfig | None = None  # the audit webhook receiver, off when None


OPTIONS = Options()
POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconcile")  # resized at startup


def _turn(key: str) -> float | None:
    tracked = REGISTRY.find(key)
    return None if tracked is None else turns.turn(_runtime(), REGISTRY, tracked)


def _alive(key: str) -> bool:
    return REGISTRY.find(key) is not None


SCHEDULER = Scheduler(_turn, _alive)
REGISTRY = Registry(wake=SCHEDULER.now)
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


class IdentityMemories(ResourceMemories):
    """kopf's memory of each watched object, kept for AppIdentities alone. kopf keeps one per
    object of every watched kind (0.8 KiB each: a memo copy, daemon and indexing state), four
    per identity for its ServiceAccount and Roles and RoleBinding, although only event handlers
    run for them, which need nothing from one event to the next: those get a memory for the
    event at hand, as kopf does for admission requests (`ephemeral`)."""

    async def recall(
        self,
        raw_body: kopf.RawBody,
        *,
        memobase: Any = None,
        noticed_by_listing: bool = False,
        ephemeral: bool = False,
    ) -> ResourceMemory:
        ephemeral = ephemeral or raw_body.get("kind") != KIND
        return await super().recall(
            raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing, ephemeral=ephemeral
        )


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
    kube = Kube.connect(OPTIONS.kubeconfig, OPTIONS.public_server, OPTIONS.workers)
    baseline = Baseline(kube, OPTIONS.operator_namespace)
    baseline.ensure()
    RUNTIME = Runtime(
        kube=kube,
        policy=load_policy(OPTIONS.policy),
        baseline=baseline,
        recheck_seconds=OPTIONS.recheck_seconds,
        full_proof_seconds=OPTIONS.full_proof_seconds,
        usage=LiveUsage() if OPTIONS.audit_webhook else None,
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
    """Tracks every AppIdentity and wakes it when it is new, for a new spec, a rotation asked
    for, or its deletion; not for other status and metadata writes (the operator's own,
    kopf's): those would only repeat a reconcile."""
    _slim(event)
    key = _key(body)
    if event.get("type") == "DELETED":
        REGISTRY.forget(key)
        if RUNTIME is not None and RUNTIME.usage is not None:
            RUNTIME.usage.forget(key)
        return
    tracked = REGISTRY.get(key)
    tracked.body = compact(event["object"])
    if tracked.last_written is not None and compact(body.get("status")) == tracked.last_written:
        tracked.last_written = None  # delivered: the body has it now
    meta = body.get("metadata", {})
    generation = meta.get("generation")
    rotate = rotation_requested(body)
    if generation == tracked.generation and not meta.get("deletionTimestamp") and not rotate:
        return
    tracked.generation = generation
    REGISTRY.poke(key)


@kopf.on.startup()
async def start_scheduler(**_: Any) -> None:
    global SCHEDULER_TASK
    SCHEDULER_TASK = asyncio.create_task(SCHEDULER.run(POOL), name="appidentity-scheduler")


@kopf.on.cleanup()
async def stop_scheduler(**_: Any) -> None:
    if SCHEDULER_TASK is not None:
        SCHEDULER_TASK.cancel()


@kopf.on.startup()
async def start_audit_receiver(**_: Any) -> None:
    """The audit webhook receiver, on kopf's loop, when `--audit-webhook-port` asks for it."""
    global RECEIVER
    usage = _runtime().usage
    if OPTIONS.audit_webhook is not None and usage is not None:
        receiver = Receiver(OPTIONS.audit_webhook, usage, SCHEDULER.now)
        try:
            await receiver.start()
        except OSError as exc:  # the port taken: asked for, so the operator does not run without
            await receiver.stop()
            raise kopf.PermanentError(f"audit webhook receiver: {exc}") from exc
        RECEIVER = receiver


@kopf.on.cleanup()
async def stop_audit_receiver(**_: Any) -> None:
    if RECEIVER is not None:
        await RECEIVER.stop()


RECEIVER: Receiver | None = None


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
    secret = (body.get("metadata", {}).get("annotations") or {}).get(TOKEN_SECRET_OF)
    if secret and deleted:
        if _owner_uids(body) != _owner_uids(wanted):
            return True  # the sentinel of a Secret the operator replaced itself (a rotation)
        what = f"Secret {key[1]}/{secret} (and the token bound to it)"
    if deleted:
        REGISTRY.poke(owner, f"{what} was deleted", verify=True)
    elif not matches:
        REGISTRY.poke(owner, f"{what} was changed", verify=True)
    return True


def _owner_uids(obj: Mapping[str, Any]) -> set[str]:
    return {str(r.get("uid")) for r in obj.get("metadata", {}).get("ownerReferences") or []}


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
        gone = event.get("type") == "DELETED"
        RUNTIME.namespace_event(str(name), None if gone else meta.get("annotations") or {})
    if _listed(event):
        return
    for key in REGISTRY.keys_for(("grant", str(name))):
        REGISTRY.poke(key, verify=True)
