"""What the operator keeps between reconciles: remembered children, shared cluster facts."""

from __future__ import annotations

from typing import Any

import pytest
from appidentity.desired import Manifest, role, service_account
from appidentity.model import Identity
from appidentity.reconcile import MATCHED, Runtime
from appidentity.verify.run import ClusterFacts

from .conftest import IdentityFactory

KEY = ("Role", "team-a", "app")


def own_role(identity: Identity) -> Manifest:
    return role(identity, "app", "team-a", identity.spec.rules)


def runtime() -> Runtime:
    return Runtime(kube=None, policy=None, baseline=None)  # type: ignore[arg-type]


def live(obj: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """`obj` as the API server returns it: with uid, resourceVersion and managedFields."""
    meta = {**obj["metadata"], "uid": "role-uid", "resourceVersion": "7", "managedFields": [{}]}
    return {**obj, **extra, "metadata": meta}


def test_a_child_as_wanted_is_remembered_by_uid_labels_and_the_wanted_object(
    make_identity: IdentityFactory,
) -> None:
    wanted = own_role(make_identity())
    watched = live(wanted)
    # as parsed from the watch: a dict of its own, with a label someone else added
    watched["metadata"]["labels"] = {**wanted["metadata"]["labels"], "team": "a"}
    rt = runtime()
    rt.remember_child(KEY, watched, wanted)
    remembered = rt.children[KEY]
    assert remembered[MATCHED] is wanted
    assert remembered["metadata"] == {"uid": "role-uid", "labels": wanted["metadata"]["labels"]}
    # the wanted labels themselves (shared by the identity's children), not a copy per child
    assert remembered["metadata"]["labels"] is wanted["metadata"]["labels"]


def test_a_child_that_differs_or_is_not_yet_wanted_is_remembered_whole(
    make_identity: IdentityFactory,
) -> None:
    changed = live(own_role(make_identity()), rules=[])
    rt = runtime()
    rt.remember_child(KEY, changed, None)
    remembered = rt.children[KEY]
    assert MATCHED not in remembered
    assert remembered["rules"] == []
    assert "managedFields" not in remembered["metadata"]
    assert remembered["metadata"]["uid"] == "role-uid"


def test_a_child_listed_before_it_was_wanted_is_compacted_once_found_to_match(
    make_identity: IdentityFactory,
) -> None:
    wanted = own_role(make_identity())
    rt = runtime()
    rt.remember_child(KEY, live(wanted), None)  # a restart's listing: nothing wanted yet
    listed = rt.children[KEY]
    rt.child_matched(KEY, listed, wanted)
    assert rt.children[KEY][MATCHED] is wanted


def test_a_newer_watched_child_is_not_replaced_by_an_older_match(
    make_identity: IdentityFactory,
) -> None:
    wanted = own_role(make_identity())
    rt = runtime()
    rt.remember_child(KEY, live(wanted), None)
    read_by_reconcile = rt.children[KEY]
    rt.remember_child(KEY, live(wanted, rules=[]), None)  # drift delivered meanwhile
    rt.child_matched(KEY, read_by_reconcile, wanted)
    assert MATCHED not in rt.children[KEY]
    assert rt.children[KEY]["rules"] == []


def test_children_of_one_identity_share_labels_and_owner_references(
    make_identity: IdentityFactory,
) -> None:
    identity = make_identity()
    sa, r = service_account(identity), own_role(identity)
    assert r["metadata"]["ownerReferences"] is sa["metadata"]["ownerReferences"]
    assert r["metadata"]["labels"] is identity.labels


class Fetches:
    def __init__(self, *values: Any) -> None:
        self.values = list(values)
        self.count = 0

    def __call__(self) -> Any:
        self.count += 1
        return self.values[min(self.count, len(self.values)) - 1]


class FakeHttp:
    """Only the two reads ClusterFacts makes; no API behaviour is involved."""

    def __init__(self, openid: Fetches, versions: Fetches) -> None:
        self.openid = openid
        self.preferred_versions = versions


def facts_http(**kw: Any) -> FakeHttp:
    jwks = Fetches(("iss", {"keys": [{"kid": "a"}]}), ("iss", {"keys": [{"kid": "b"}]}))
    versions = Fetches({"": "v1"}, {"": "v1", "apps": "apps/v1"})
    return FakeHttp(kw.get("openid", jwks), kw.get("versions", versions))


def test_cluster_facts_are_read_once_while_they_answer() -> None:
    http = facts_http()
    facts = ClusterFacts()
    for _ in range(3):
        facts.openid(http, "a")  # type: ignore[arg-type]
        facts.versions(http, {""})  # type: ignore[arg-type]
    assert (http.openid.count, http.preferred_versions.count) == (1, 1)


def test_an_unknown_key_id_reads_the_keys_again_at_once() -> None:
    http = facts_http()
    facts = ClusterFacts()
    facts.openid(http, "a")  # type: ignore[arg-type]
    _issuer, jwks = facts.openid(http, "b")  # type: ignore[arg-type]
    assert jwks == {"keys": [{"kid": "b"}]}
    assert http.openid.count == 2


def test_an_unknown_api_group_reads_discovery_again_only_after_a_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("appidentity.verify.run.time.monotonic", lambda: clock[0])
    http = facts_http()
    facts = ClusterFacts()
    facts.versions(http, {""})  # type: ignore[arg-type]
    assert "apps" not in facts.versions(http, {"apps"})  # type: ignore[arg-type]
    clock[0] += 6
    assert facts.versions(http, {"apps"})["apps"] == "apps/v1"  # type: ignore[arg-type]
    assert http.preferred_versions.count == 2


def test_cluster_facts_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("appidentity.verify.run.time.monotonic", lambda: clock[0])
    http = facts_http()
    facts = ClusterFacts(ttl=60)
    facts.openid(http, "a")  # type: ignore[arg-type]
    clock[0] += 61
    facts.openid(http, "b")  # type: ignore[arg-type]
    assert http.openid.count == 2
