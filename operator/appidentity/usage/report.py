"""One identity's usage report: its entries used or unused over the window the log covers,
what it was denied, and (when the evidence suffices) the tighter spec."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from ..policy import Policy
from ..rbac import Request, RuleDict
from .entries import Entry, Use, attribute, entries_of, unused_parts
from .events import Tally, events_of, seen
from .propose import diff, proposal, suggestion

# Distinct denied (or outside-the-spec) request shapes kept; the rest are counted together.
MAX_SHAPES = 10_000


@dataclass(frozen=True)
class Evidence:
    """How much the log must cover before an entry may be called unused."""

    min_window_seconds: float = 7 * 86_400
    force: bool = False


def parse_time(stamp: str) -> datetime | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


class Reader:
    """Feeds audit streams through the entries of one identity."""

    def __init__(
        self, identity: Mapping[str, Any], cluster_roles: Mapping[str, Sequence[RuleDict]]
    ):
        meta = identity.get("metadata") or {}
        spec = identity.get("spec") or {}
        self.namespace = str(meta.get("namespace", ""))
        sa = (spec.get("serviceAccount") or {}).get("name") or meta.get("name", "")
        self.username = f"system:serviceaccount:{self.namespace}:{sa}"
        self.entries = entries_of(self.namespace, spec, cluster_roles)
        self.tally = Tally()
        self.self_checks = 0
        self.denied: dict[Request, Use] = {}
        self.outside: dict[Request, Use] = {}
        self.overflow = 0

    def read(self, stream: IO[bytes], name: str) -> None:
        self.tally.sources.append(name)
        for one in seen(events_of(stream, self.username, self.tally), self.username):
            if one.self_check:
                self.self_checks += 1
            elif one.code == 403:
                self._shape(self.denied, one.request, one.at)
            elif one.code != 401 and attribute(self.entries, one.request, one.at) is None:
                self._shape(self.outside, one.request, one.at)

    def _shape(self, into: dict[Request, Use], req: Request, at: str) -> None:
        if req not in into and len(into) >= MAX_SHAPES:
            self.overflow += 1
            return
        into.setdefault(req, Use()).add(at)


def span_text(seconds: float) -> str:
    for unit, size in (("days", 86_400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} seconds"


def _window(tally: Tally, created: str, evidence: Evidence) -> tuple[dict[str, Any], bool]:
    first, last = parse_time(tally.first), parse_time(tally.last)
    born = parse_time(created)
    start = max(t for t in (first, born) if t) if first else None
    span = (last - start).total_seconds() if start and last and last > start else 0.0
    judged = evidence.force or span >= evidence.min_window_seconds
    why = ""
    if not judged:
        younger = born is not None and first is not None and born > first
        why = (
            f"the evidence covers {span_text(span)}"
            + (" (the identity is younger than the log)" if younger else "")
            + f", less than --min-window ({span_text(evidence.min_window_seconds)}):"
            " nothing is called unused and no spec is proposed (--force to judge anyway)"
        )
    window = {
        "from": tally.first,
        "to": tally.last,
        "identityCreated": created,
        "evidenceSeconds": round(span),
        "judged": judged,
        "reason": why,
    }
    return window, judged


def _entry(entry: Entry, judged: bool) -> dict[str, Any]:
    if entry.use.count:
        idle = unused_parts(entry) if judged else []
        verdict = "partly used" if idle else "used"
    elif entry.rules is None:
        verdict, idle = "unknown (its ClusterRole could not be read)", []
    else:
        verdict, idle = ("unused" if judged else "not judged"), []
    used = sorted({f"{r.verb} {r.describe().split(' ', 1)[1]}" for r in entry.shapes})
    return {
        "field": entry.path,
        "grant": entry.spec,
        "verdict": verdict,
        "count": entry.use.count,
        "firstSeen": entry.use.first,
        "lastSeen": entry.use.last,
        "used": used,
        "unused": idle,
    }


def report(
    reader: Reader, identity: Mapping[str, Any], policy: Policy, evidence: Evidence
) -> dict[str, Any]:
    meta, spec = identity.get("metadata") or {}, identity.get("spec") or {}
    window, judged = _window(reader.tally, str(meta.get("creationTimestamp", "")), evidence)
    proposed = proposal(spec, reader.entries) if judged else None
    return {
        "identity": f"{reader.namespace}/{meta.get('name', '')}",
        "serviceAccount": reader.username,
        "window": window,
        "events": {
            "read": reader.tally.events,
            "bytes": reader.tally.size,
            "sources": reader.tally.sources,
            "selfCheckLeftOut": reader.self_checks,
            "shapesNotKept": reader.overflow,
            "unreadableLines": reader.tally.unreadable,
        },
        "entries": [_entry(e, judged) for e in reader.entries],
        "denied": [
            suggestion(identity, req, use, reader.entries, policy)
            for req, use in sorted(reader.denied.items(), key=lambda kv: -kv[1].count)
        ],
        "outsideSpec": [
            {"request": req.describe(), "count": use.count, "lastSeen": use.last}
            for req, use in sorted(reader.outside.items(), key=lambda kv: -kv[1].count)
        ],
        "proposedSpec": proposed,
        "diff": diff(spec, proposed) if proposed is not None else "",
    }


def usage(
    identity: Mapping[str, Any],
    cluster_roles: Mapping[str, Sequence[RuleDict]],
    streams: Iterable[tuple[str, IO[bytes]]],
    policy: Policy,
    evidence: Evidence,
) -> dict[str, Any]:
    """The whole report, from the AppIdentity object and the audit streams."""
    reader = Reader(identity, cluster_roles)
    for name, stream in streams:
        reader.read(stream, name)
    return report(reader, identity, policy, evidence)
