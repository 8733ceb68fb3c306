"""The usage report's pure parts, on real Events the local API server (1.37.2) wrote for
ServiceAccount t1/app (granted get, list, watch, create, update, patch, delete on configmaps;
used with kubectl and curl; denied secrets, pods, pods/log, other namespaces, namespaces)."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest
from appidentity import SELF_CHECK_USER_AGENT
from appidentity.cli.usage import duration, render
from appidentity.policy import Policy
from appidentity.rbac import Request
from appidentity.usage.entries import Entry, entries_of
from appidentity.usage.propose import assert_covered, proposal
from appidentity.usage.report import Evidence, usage

FIXTURE = Path(__file__).parent.parent / "fixtures" / "audit" / "kube-apiserver-1.37.2.jsonl"
LINES = FIXTURE.read_bytes().splitlines()
ALL = ["get", "list", "watch", "create", "update", "patch", "delete"]
CONFIGMAPS = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ALL}
PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
FORCE = Evidence(force=True)


def body(created: str = "2026-12-01T00:00:00Z", **spec: Any) -> dict[str, Any]:
    meta = {"name": "app", "namespace": "t1", "creationTimestamp": created}
    return {"metadata": meta, "spec": spec or {"rules": [CONFIGMAPS, PODS]}}


def run(data: bytes, identity: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    kw.setdefault("evidence", FORCE)
    roles = kw.pop("roles", {})
    return usage(identity or body(), roles, [("log", io.BytesIO(data))], Policy(), **kw)


def event_list(pretty: bool) -> bytes:
    items = [json.loads(line) for line in LINES]
    doc = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items}
    return json.dumps(doc, indent=2 if pretty else None).encode()


def test_json_lines_gzip_and_event_lists_give_the_same_report() -> None:
    plain = run(FIXTURE.read_bytes())
    for data in (gzip.compress(FIXTURE.read_bytes()), event_list(True), event_list(False)):
        other = run(data)
        assert other["entries"] == plain["entries"]
        assert other["denied"] == plain["denied"]
        assert other["window"] == plain["window"]
    assert plain["events"]["read"] == len(LINES)


def test_a_line_cut_short_is_counted_not_fatal() -> None:
    needle = b'"system:serviceaccount:t1:app"'
    own = next(line for line in LINES if needle in line)
    report = run(b"\n".join([*LINES, own[: own.index(needle) + 60]]))
    assert report["events"]["unreadableLines"] == 1
    assert report["entries"] == run(FIXTURE.read_bytes())["entries"]


def test_a_request_audited_at_start_and_completion_counts_once() -> None:
    report = run(FIXTURE.read_bytes())
    configmaps = report["entries"][0]
    assert configmaps["used"].count("watch configmaps in t1") == 1
    logs = [d for d in report["denied"] if d["request"] == "get pods/log/x in t1"]
    assert logs[0]["count"] == 1  # ResponseStarted and ResponseComplete of one request


def test_unused_verbs_and_rules_are_named_and_the_proposal_keeps_only_what_was_used() -> None:
    report = run(FIXTURE.read_bytes())
    configmaps, pods = report["entries"]
    assert configmaps["verdict"] == "partly used" and configmaps["unused"] == ["configmaps: update"]
    assert pods["verdict"] == "unused" and pods["count"] == 0
    verbs = ["get", "list", "watch", "create", "patch", "delete"]
    assert report["proposedSpec"] == {
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": verbs}]
    }
    assert "-    - update" in report["diff"]


def test_the_operators_self_check_is_not_the_applications_use() -> None:
    marked = [
        line.replace(b'"userAgent":"kubectl/', f'"userAgent":"{SELF_CHECK_USER_AGENT} k/'.encode())
        for line in LINES
    ]
    report = run(b"\n".join(marked))
    assert (
        report["events"]["selfCheckLeftOut"] == 15
    )  # every kubectl request of t1:app (a watch once)
    assert report["entries"][0]["used"] == ["get configmaps/kube-root-ca.crt in t1"]


def test_no_unused_verdict_and_no_proposal_on_too_little_evidence() -> None:
    report = run(FIXTURE.read_bytes(), evidence=Evidence())
    assert report["entries"][1]["verdict"] == "not judged"
    assert report["proposedSpec"] is None and "--force" in report["window"]["reason"]
    younger = run(
        FIXTURE.read_bytes(), body(created="2026-12-05T19:20:00Z"), evidence=Evidence(300)
    )
    assert "younger than the log" in younger["window"]["reason"]
    assert younger["proposedSpec"] is None
    assert run(FIXTURE.read_bytes(), evidence=Evidence(60))["proposedSpec"] is not None


def test_denied_requests_name_the_rule_and_the_policys_verdict() -> None:
    denied = {d["request"]: d for d in run(FIXTURE.read_bytes())["denied"]}
    secret = denied["get secrets/foo in t1"]
    assert secret["add"]["rule"]["resourceNames"] == ["foo"] and secret["policy"] == "accepted"
    assert denied["list pods in t1"]["add"]["rule"].get("resourceNames") is None
    assert "grants this already (spec.rules[1])" in denied["list pods in t1"]["note"]
    other = denied["list configmaps in default"]
    assert other["add"]["field"] == "spec.namespaces" and "must consent" in other["note"]
    assert other["add"]["append"] == {"name": "default", "rules": [other["add"]["rule"]]}
    cluster = denied["list namespaces cluster-wide"]
    assert cluster["add"]["field"] == "spec.clusterRules"
    assert cluster["policy"].startswith("refused: spec.clusterRules")


def test_cluster_roles_are_judged_by_their_rules_and_kept_when_unreadable() -> None:
    spec = {"rules": [PODS], "clusterRoles": ["edit", "view"]}
    edit = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ALL}]
    report = run(FIXTURE.read_bytes(), body(**spec), roles={"edit": edit})
    assert [e["verdict"] for e in report["entries"]] == [
        "unused",
        "used",
        "unknown (its ClusterRole could not be read)",
    ]
    assert report["proposedSpec"] == {"clusterRoles": ["edit", "view"]}


def test_wildcards_and_names_narrow_to_what_was_used_never_beyond() -> None:
    wild = {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}
    report = run(FIXTURE.read_bytes(), body(rules=[wild]))
    (rule,) = report["proposedSpec"]["rules"]
    assert rule["resources"] == ["configmaps"] and "*" not in rule["verbs"]
    named = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ALL, "resourceNames": ["c1"]}
    report = run(FIXTURE.read_bytes(), body(rules=[named]))
    assert all(r["resourceNames"] == ["c1"] for r in report["proposedSpec"]["rules"])


def test_a_proposal_beyond_the_current_rule_is_refused() -> None:
    (entry,) = entries_of("t1", {"rules": [PODS]}, {})
    assert isinstance(entry, Entry)
    assert_covered([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}], entry)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_covered([{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}], entry)


def test_other_namespaces_and_cluster_rules_keep_the_specs_structure() -> None:
    spec = {
        "namespaces": [
            {"name": "default", "rules": [CONFIGMAPS]},
            {"name": "other", "rules": [PODS]},
        ],
        "clusterRules": [{"nonResourceURLs": ["/version", "/healthz"], "verbs": ["get"]}],
        "token": {"expirationSeconds": 3600},
    }
    entries = entries_of("t1", spec, {})
    entries[0].record(Request("list", "", "configmaps", namespace="default"), "t")
    entries[2].record(Request("get", url="/version"), "t")
    assert proposal(spec, entries) == {
        "namespaces": [
            {
                "name": "default",
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
            }
        ],
        "clusterRules": [{"nonResourceURLs": ["/version"], "verbs": ["get"]}],
        "token": {"expirationSeconds": 3600},
    }


def test_min_window_durations_and_the_table() -> None:
    assert duration("7d") == duration("7") == 7 * 86_400
    assert duration("90m") == 5400 and duration("0") == 0
    text = render(run(FIXTURE.read_bytes()))
    assert "spec.rules[1]" in text and "unused" in text and "+++ proposed" in text
