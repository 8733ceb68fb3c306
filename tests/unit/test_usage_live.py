"""The live receiver's accounting (`usage.live`), on the real Events of tests/unit/test_usage.py's
fixture delivered as the audit webhook delivers them (EventLists, in batches): the same
per-entry verdicts as the `usage` command, the self-check left out, bounded, and published at
most once a minute per identity."""

from __future__ import annotations

import json
from typing import Any

from appidentity import SELF_CHECK_USER_AGENT
from appidentity.status import READY, USAGE_OBSERVED, Condition, conditions, with_informational
from appidentity.usage.live import PUBLISH_SECONDS, LiveUsage, condition_of

from .test_usage import CONFIGMAPS, FIXTURE, LINES, PODS, body, run

EVENTS = [json.loads(line) for line in LINES]


def fed(*batches: list[dict[str, Any]], identity: dict[str, Any] | None = None) -> LiveUsage:
    live = LiveUsage()
    live.track("t1.app", identity or body())
    for batch in batches:
        live.ingest(batch)
    return live


def test_batches_give_the_same_verdicts_as_the_usage_command() -> None:
    half = len(EVENTS) // 2
    summary = fed(EVENTS[:half], EVENTS[half:]).publish("t1.app", 0.0)
    report = run(FIXTURE.read_bytes())
    assert summary is not None
    unused = [e["field"] for e in report["entries"] if e["verdict"] == "unused"]
    assert unused == ["spec.rules[1]"]
    assert summary["unusedEntries"] == 1 and summary["usedEntries"] == 1
    assert summary["unused"] == ["spec.rules[1]", "spec.rules[0]: configmaps: update"]
    assert summary["deniedCount"] == 6  # a 403 audited at ResponseStarted and Complete: once
    assert summary["window"]["from"] <= summary["lastSeen"] == summary["window"]["to"]


def test_self_check_requests_and_other_users_are_left_out() -> None:
    own = [e for e in EVENTS if e["user"]["username"] == "system:serviceaccount:t1:app"]
    selfcheck = [{**e, "userAgent": f"{SELF_CHECK_USER_AGENT}/1"} for e in own]
    live = fed(selfcheck)
    summary = live.publish("t1.app", 0.0)
    assert summary == {"usedEntries": 0, "unusedEntries": 2, "unused": summary["unused"],
                       "deniedCount": 0}  # fmt: skip
    assert condition_of(summary)[0] == "NoUsageYet"
    other = [{**e, "user": {"username": "system:serviceaccount:t1:other"}} for e in own]
    assert fed(other).ingest(other) == 0


def test_a_new_spec_starts_afresh_and_a_forgotten_identity_counts_nothing() -> None:
    live = fed(EVENTS)
    live.track("t1.app", body(rules=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]))
    summary = live.publish("t1.app", 0.0)
    assert summary is not None and summary["deniedCount"] == 0
    live.forget("t1.app")
    assert live.ingest(EVENTS) == 0 and live.publish("t1.app", 0.0) is None


def test_a_renamed_service_account_counts_for_its_new_name_only() -> None:
    renamed = body(rules=[CONFIGMAPS, PODS], serviceAccount={"name": "renamed"})
    as_renamed = [{**e, "user": {"username": "system:serviceaccount:t1:renamed"}} for e in EVENTS]
    live = fed()
    live.track("t2.other", {**body(), "metadata": {"name": "other", "namespace": "t2"}})
    live.track("t1.app", renamed)
    assert live.ingest(EVENTS) == 0  # the old name is no longer the identity's
    assert live.ingest(as_renamed) > 0
    live.forget("t1.app")
    assert live.ingest(as_renamed) == 0
    other = [{**e, "user": {"username": "system:serviceaccount:t2:other"}} for e in EVENTS]
    assert live.ingest(other) > 0  # forgetting one identity left the other's user in place


def test_published_at_most_once_a_minute_and_woken_only_when_changed() -> None:
    live = fed(EVENTS[:30])  # the application's first requests are among them
    assert live.due(0.0) == ["t1.app"]
    assert live.publish("t1.app", 0.0) is not None
    assert live.due(1.0) == []
    live.ingest(EVENTS[30:])
    assert live.due(1.0) == [] and live.publish("t1.app", 1.0) is None
    assert live.due(PUBLISH_SECONDS) == ["t1.app"]
    assert live.publish("t1.app", PUBLISH_SECONDS) is not None
    assert live.due(PUBLISH_SECONDS * 3) == []


def test_a_summary_of_nothing_seen_yet_does_not_hold_back_the_first_use() -> None:
    live = fed()
    first = live.publish("t1.app", 0.0)
    assert first is not None and condition_of(first)[0] == "NoUsageYet"
    live.ingest(EVENTS[:30])
    assert live.due(1.0) == ["t1.app"]
    assert live.publish("t1.app", 1.0) is not None


def test_the_condition_never_changes_ready_reconciling_or_stalled() -> None:
    summary = fed(EVENTS).publish("t1.app", 0.0)
    assert summary is not None
    reason, message = condition_of(summary)
    assert (
        reason == "UnusedGrants" and "spec.rules[1]" in message and "6 request(s) denied" in message
    )
    parts = [Condition("AccessVerified", True, "Verified", "ok")]
    base = conditions(parts, [], 1, "2026-12-01T00:00:00Z")
    info = Condition(USAGE_OBSERVED, True, reason, message)
    out = with_informational(base, info, base, 1, "2026-12-01T00:01:00Z")
    assert out[: len(base)] == base
    assert [c["type"] for c in out] == ["AccessVerified", READY, USAGE_OBSERVED]
    again = with_informational(out, info, out, 1, "2026-12-01T00:02:00Z")
    assert again == out  # replaced in place, its transition time kept


def test_objects_touched_do_not_grow_memory() -> None:
    """A request's shape is kept without the object's name: a thousand configmaps read cost one
    counter, not a thousand."""
    get = next(
        e for e in EVENTS
        if e["verb"] == "get" and e["responseStatus"]["code"] == 200
        and e["user"]["username"] == "system:serviceaccount:t1:app"
    )  # fmt: skip
    batch = [
        {**get, "auditID": str(i), "objectRef": {**get["objectRef"], "name": f"cm-{i}"}}
        for i in range(1000)
    ]
    live = fed(batch)
    configmaps = live._usage["t1.app"].entries[0]
    assert configmaps.use.count == 1000
    assert len(configmaps.shapes) == 1 and next(iter(configmaps.shapes.values())).count == 1000


def test_all_grants_used_when_every_entry_and_verb_was() -> None:
    used = ["get", "list", "watch", "create", "patch", "delete"]
    rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": used}
    summary = fed(EVENTS, identity=body(rules=[rule])).publish("t1.app", 0.0)
    assert summary is not None and summary["unused"] == []
    reason, message = condition_of(summary)
    assert reason == "AllGrantsUsed" and message.endswith("; 6 request(s) denied")


def test_the_snapshot_gives_each_entrys_count_and_times() -> None:
    own = [e for e in EVENTS if e["user"]["username"] == "system:serviceaccount:t1:app"]
    selfcheck = {**own[0], "auditID": "x", "userAgent": f"{SELF_CHECK_USER_AGENT}/1"}
    (detail,) = fed([*EVENTS, selfcheck]).snapshot().values()
    configmaps, pods = detail["entries"]
    report = run(FIXTURE.read_bytes())
    assert configmaps["count"] == report["entries"][0]["count"] > 0
    assert configmaps["firstSeen"] == report["entries"][0]["firstSeen"]
    assert configmaps["lastSeen"] == report["entries"][0]["lastSeen"]
    assert pods == {"field": "spec.rules[1]", "count": 0, "firstSeen": "", "lastSeen": ""}
    assert detail["selfCheckLeftOut"] == 1
