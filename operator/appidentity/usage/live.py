"""Usage kept live, from the API server's audit webhook: the same per-entry accounting as the
`usage` command (`entries`), fed one EventList at a time instead of from a log, and summarised
per identity for `status.usage`.

Bounded: per identity, one counter per spec entry, a count of denials, and the paths of unused
entries capped at MAX_LISTED; Events of users that are no tracked identity are dropped after
one dictionary lookup. Thread-safe: batches arrive on the event loop, summaries are read by
the reconcile threads."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .. import SELF_CHECK_USER_AGENT
from ..rbac import Request
from .entries import Entry, Use, attribute, entries_of, unused_parts
from .events import MAX_STARTED, request_of

MAX_LISTED = 20  # unused entries named in status.usage.unused; the count is always whole
# A fresh summary is handed out at most this often per identity, so a busy application's
# requests cost one status write a minute, not one per audit batch.
PUBLISH_SECONDS = 60.0


@dataclass
class Tracked:
    """One identity's live usage, for the spec it had when the entries were built."""

    spec_key: str
    entries: list[Entry]
    user: str = ""  # the ServiceAccount's username, its key in LiveUsage._by_user
    first: str = ""
    last: str = ""
    last_seen: str = ""
    denied: int = 0
    self_checks: int = 0
    changed: bool = True
    published_at: float | None = None

    def add(self, code: int, at: str) -> None:
        self.first = at if not self.first or (at and at < self.first) else self.first
        self.last = max(self.last, at)
        self.changed = True
        if code == 403:
            self.denied += 1
        if code != 401:
            self.last_seen = max(self.last_seen, at)


@dataclass
class LiveUsage:
    """Every tracked identity's usage, by ServiceAccount username."""

    _by_user: dict[str, str] = field(default_factory=dict)
    _usage: dict[str, Tracked] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _started: dict[str, None] = field(default_factory=dict)
    batches: int = 0

    def track(self, key: str, identity: Mapping[str, Any]) -> None:
        """Registers (or refreshes) an identity; a changed spec starts its accounting afresh,
        since the entries are the spec's own."""
        meta, spec = identity.get("metadata") or {}, identity.get("spec") or {}
        namespace = str(meta.get("namespace", ""))
        sa = (spec.get("serviceAccount") or {}).get("name") or meta.get("name", "")
        user = f"system:serviceaccount:{namespace}:{sa}"
        spec_key = json.dumps(spec, sort_keys=True)
        with self._lock:
            old = self._usage.get(key)
            if old is not None and old.spec_key == spec_key:
                return
            self._unlink(key, old)
            self._by_user[user] = key
            # ClusterRoles' rules are not read here: their entries stay "unknown", not unused.
            self._usage[key] = Tracked(spec_key, entries_of(namespace, spec, {}), user)

    def forget(self, key: str) -> None:
        with self._lock:
            self._unlink(key, self._usage.pop(key, None))

    def _unlink(self, key: str, tracked: Tracked | None) -> None:
        """Drops the identity's user from the index: one lookup, not a scan of every user."""
        if tracked is not None and self._by_user.get(tracked.user) == key:
            del self._by_user[tracked.user]

    def ingest(self, events: Iterable[Mapping[str, Any]]) -> int:
        """One batch of audit Events; returns how many were requests of tracked identities
        (the operator's own self-checks left out, as the `usage` command does). A request
        audited when its response started and again when it completed counts once."""
        counted = 0
        with self._lock:
            self.batches += 1
            for event in events:
                key = self._by_user.get(_user_of(event))
                if key is None or not self._first_time(event):
                    continue
                tracked = self._usage[key]
                if str(event.get("userAgent", "")).startswith(SELF_CHECK_USER_AGENT):
                    tracked.self_checks += 1
                    continue
                counted += 1
                code = int((event.get("responseStatus") or {}).get("code", 0))
                at = str(event.get("requestReceivedTimestamp", ""))
                tracked.add(code, at)
                if code not in (401, 403):
                    _count(tracked.entries, request_of(dict(event)), at)
        return counted

    def _first_time(self, event: Mapping[str, Any]) -> bool:
        stage, audit_id = event.get("stage"), str(event.get("auditID", ""))
        if stage == "ResponseStarted":
            self._started[audit_id] = None
            if len(self._started) > MAX_STARTED:
                del self._started[next(iter(self._started))]
            return True
        if stage in ("ResponseComplete", "Panic"):
            return self._started.pop(audit_id, 0) is not None
        return False

    def publish(self, key: str, now: float) -> dict[str, Any] | None:
        """A fresh status.usage for the identity, or None when it is not tracked or its last
        one is younger than PUBLISH_SECONDS (the caller keeps that one). One that saw nothing
        yet does not count: the first use shows at once. `now`: monotonic."""
        with self._lock:
            tracked = self._usage.get(key)
            if tracked is None or not _due(tracked, now):
                return None
            tracked.changed = False
            if tracked.first:  # a summary with nothing seen yet holds back no first use
                tracked.published_at = now
            return summarise(tracked)

    def due(self, now: float) -> list[str]:
        """Identities whose usage changed and may be published again."""
        with self._lock:
            return [k for k, t in self._usage.items() if t.changed and _due(t, now)]

    def snapshot(self) -> dict[str, Any]:
        """Every identity's summary and its entries' counts, for the receiver's GET /usage."""
        with self._lock:
            return {k: _detail(t) for k, t in sorted(self._usage.items())}


def _count(entries: list[Entry], req: Request, at: str) -> None:
    """Attributes a request, then keeps its shape without the object's name: per entry, one
    counter per verb, resource and namespace, however many objects the application touches."""
    entry = attribute(entries, req, at)
    if entry is not None and req.name:
        use = entry.shapes.pop(req)
        kept = entry.shapes.setdefault(replace(req, name=""), Use())
        kept.count += use.count
        kept.first = min(x for x in (kept.first, use.first) if x) if use.first else kept.first
        kept.last = max(kept.last, use.last)


def _due(tracked: Tracked, now: float) -> bool:
    return tracked.published_at is None or now - tracked.published_at >= PUBLISH_SECONDS


def _user_of(event: Mapping[str, Any]) -> str:
    impersonated = event.get("impersonatedUser") or {}
    return str(impersonated.get("username") or (event.get("user") or {}).get("username", ""))


def summarise(tracked: Tracked) -> dict[str, Any]:
    used = [e for e in tracked.entries if e.use.count]
    unused = [e.path for e in tracked.entries if not e.use.count and e.rules is not None]
    partly = [f"{e.path}: {p}" for e in used for p in unused_parts(e)]
    out: dict[str, Any] = {
        "usedEntries": len(used),
        "unusedEntries": len(unused),
        "unused": (unused + partly)[:MAX_LISTED],
        "deniedCount": tracked.denied,
    }
    if tracked.first:
        out["window"] = {"from": tracked.first, "to": tracked.last}
    if tracked.last_seen:
        out["lastSeen"] = tracked.last_seen
    return out


def _detail(tracked: Tracked) -> dict[str, Any]:
    entries = [
        {"field": e.path, "count": e.use.count, "firstSeen": e.use.first, "lastSeen": e.use.last}
        for e in tracked.entries
    ]
    return {**summarise(tracked), "entries": entries, "selfCheckLeftOut": tracked.self_checks}


def condition_of(summary: Mapping[str, Any]) -> tuple[str, str]:
    """The informational condition's reason and message for a summary."""
    window = summary.get("window") or {}
    if not window:
        return "NoUsageYet", "no request of this identity's token seen since the operator started"
    span = f"in the requests seen from {window['from']} to {window['to']}"
    denied = f"; {summary['deniedCount']} request(s) denied" if summary["deniedCount"] else ""
    if summary["unused"]:
        listed = "; ".join(summary["unused"])[:700]
        return "UnusedGrants", (
            f"not used {span}: {listed}{denied}."
            " Informational: a short window is weak evidence (see `appidentity-operator usage`)"
        )
    return "AllGrantsUsed", f"every entry used {span}{denied}"
