"""One identity's turn in a worker thread: its reconcile, then the result published (Events, a
status write only when it says something new, metrics), or the API error reported."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from . import metrics as m
from .kube import ApiError
from .model import identity_key, rfc3339, utcnow
from .reconcile import Result, Runtime, reconcile
from .registry import Registry, Tracked, compact
from .scheduler import ERROR_BACKOFF
from .status import (
    USAGE_OBSERVED,
    Condition,
    interrupted,
    with_informational,
    without_timestamps,
)
from .tokens import parse_time
from .usage.live import condition_of

log = logging.getLogger("appidentity")


def turn(rt: Runtime, registry: Registry, tracked: Tracked) -> float | None:
    """None once the identity is being deleted (the finalizer's cleanup takes over), else the
    seconds until its next turn."""
    with tracked.lock:
        if tracked.body is None:
            return None
        body = json.loads(tracked.body)
        if body["metadata"].get("deletionTimestamp"):
            return None
        tracked.generation = body["metadata"].get("generation")
        return cycle(rt, registry, body, tracked)


def cycle(rt: Runtime, registry: Registry, body: dict[str, Any], tracked: Tracked) -> float:
    """One reconcile and its publication (the client blocks, hence a thread). Returns the
    seconds until the identity needs attention again."""
    meta = body["metadata"]
    key = identity_key(meta["namespace"], meta["name"])
    started = time.monotonic()
    if tracked.last_written is not None:
        # The watch may not have delivered our own last status write yet; comparing against a
        # stale status would repeat Events and reset transition times.
        body = {**body, "status": json.loads(tracked.last_written)}
    seen = rt.namespace_events
    try:
        result = reconcile(rt, body, tracked.memory, utcnow())
        registry.index(key, tracked.memory)
        _publish(rt, body, tracked, result)
        m.RECONCILES.labels("ok").inc()
        if result.check:
            m.CHECKS.labels(result.check).inc()
        if any(rt.namespace_changed.get(ns, 0) > seen for ns in tracked.memory.grant_namespaces):
            # A namespace granted into changed while this reconcile ran: it may have read the
            # consent before the change, and the event came before the index could wake it.
            tracked.memory.poked = True
            return 0.0
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
    last = dict(body.get("status") or {})  # the last written one, see cycle
    status = _with_usage(rt, body, result.status)
    interval = ((body.get("spec") or {}).get("verification") or {}).get("intervalSeconds", 600)
    if _needs_write(last, status, float(interval)):
        rt.kube.patch_status(ns, name, status)
        tracked.last_written = compact(status)
    _export(ns, name, status)


def _with_usage(rt: Runtime, body: Mapping[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """status.usage and the informational UsageObserved condition, when the audit receiver
    runs: a fresh summary at most once a minute (usage.live.PUBLISH_SECONDS), else the one last
    written, so audit traffic alone never costs more than a write a minute per identity."""
    if rt.usage is None or not status.get("conditions"):
        return status
    meta = body["metadata"]
    key = identity_key(meta["namespace"], meta["name"])
    rt.usage.track(key, body)
    previous = body.get("status") or {}
    summary = rt.usage.publish(key, time.monotonic()) or previous.get("usage")
    if summary is None:
        return status
    reason, message = condition_of(summary)
    conditions = with_informational(
        status["conditions"],
        Condition(USAGE_OBSERVED, True, reason, message),
        previous.get("conditions", []),
        status.get("observedGeneration", 0),
        rfc3339(utcnow()),
    )
    return {**status, "usage": summary, "conditions": conditions}


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
    if "usage" in status:
        m.UNUSED.labels(ns, name).set(status["usage"].get("unusedEntries", 0))
    expires = (status.get("token") or {}).get("expiresAt", "")
    if expires and expires != "never":
        m.TOKEN_EXPIRY.labels(ns, name).set((parse_time(expires) - utcnow()).total_seconds())


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
        tracked.last_written = compact(status)
    except ApiError as again:
        log.warning("%s/%s: status not written either: %s", meta["namespace"], meta["name"], again)
