"""One judge: for any AppIdentity, admission (the CRD's schema and CEL rules, then deploy/'s
ValidatingAdmissionPolicy, as a server-side dry run with strict field validation) and the
operator (its parser, then its policy check, i.e. `render --policy`) accept and refuse alike,
and name the same fields.

Hypothesis generates specs: a well-formed spec whose values are drawn from pools that hold
policy trouble (wildcards, forbidden verbs and resources, secrets, ClusterRoles off the
allowlist, long tokens...), plus, in most examples, one structural fault (a missing, empty,
oversized, mistyped, malformed or unknown field, or a CEL rule broken) at a random place.
Policy messages are compared whole (both sides list every violation); structural problems are
compared by the fields they name (the API server stops at a spec's first kind of error, as the
operator does, so one fault per spec makes the comparison exact).

`make test` runs a fixed seed and APPID_JUDGE_EXAMPLES (default 300) examples, ~15 s; `make
judge` runs 5000 with a new seed (JUDGE_EXAMPLES, JUDGE_SEED to choose), printed for a rerun.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

from appidentity.model import SpecError, parse_identity
from appidentity.policy import Policy, check
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from test_deploy import (  # deploy/'s CRD and admission policy, installed for real
    OWN_NS,
    VAP_NAME,
    Doc,
    admission_policy,  # noqa: F401
    installer,  # noqa: F401
    operator_policy,  # noqa: F401
    rendered,  # noqa: F401
    rendered_text,  # noqa: F401
)

EXAMPLES = int(os.environ.get("APPID_JUDGE_EXAMPLES", "300"))
SEED = int(os.environ.get("APPID_JUDGE_SEED", "15"))
GROUP, VERSION, PLURAL = "appidentity.dev", "v1alpha1", "appidentities"

# --- values: mostly fine, some that a policy refuses ---------------------------------------

VERBS = ["get", "list", "watch", "create", "update", "delete", "*", "escalate", "bind"]
VERBS += ["gett", "use", "get*"]  # unknown to Kubernetes (extraVerbs), a special verb
GROUPS = ["", "apps", "rbac.authorization.k8s.io", "example.com", "*"]
RESOURCES = ["pods", "configmaps", "secrets", "pods/log", "pods/exec", "deployments", "*"]
RESOURCES += ["serviceaccounts/token", "persistentvolumes", "nodes"]
CLUSTER_ROLES = ["view", "edit", "admin", "system:auth-delegator"]
OTHER_NAMESPACES = ["team-b", "team-c", OWN_NS]
URLS = ["/healthz", "/metrics", "/logs/*", "/version"]

verbs = st.lists(st.sampled_from(VERBS), min_size=1, max_size=3, unique=True)
groups = st.lists(st.sampled_from(GROUPS), min_size=1, max_size=2, unique=True)
resources = st.lists(st.sampled_from(RESOURCES), min_size=1, max_size=3, unique=True)
names_list = st.lists(st.sampled_from(["a", "db-password", "cfg"]), max_size=2, unique=True)


@st.composite
def resource_rule(draw: st.DrawFn) -> Doc:
    rule = {"apiGroups": draw(groups), "resources": draw(resources), "verbs": draw(verbs)}
    if draw(st.booleans()):
        rule["resourceNames"] = draw(names_list)
    return rule


@st.composite
def cluster_rule(draw: st.DrawFn) -> Doc:
    if draw(st.booleans()):
        return {
            "nonResourceURLs": draw(st.lists(st.sampled_from(URLS), min_size=1, max_size=2)),
            "verbs": draw(st.lists(st.sampled_from(["get", "post", "*"]), min_size=1, max_size=2)),
        }
    return draw(resource_rule())


cluster_roles = st.lists(st.sampled_from(CLUSTER_ROLES), max_size=2, unique=True)


@st.composite
def namespace_grant(draw: st.DrawFn) -> Doc:
    grant: Doc = {"name": draw(st.sampled_from(OTHER_NAMESPACES))}
    rules = draw(st.lists(resource_rule(), max_size=2))
    roles = draw(cluster_roles)
    if not rules and not roles:
        rules = [draw(resource_rule())]
    for key, value in (("rules", rules), ("clusterRoles", roles)):
        if value or draw(st.booleans()):
            grant[key] = value
    return grant


def unique_by_name(grants: list[Doc]) -> list[Doc]:
    return list({g["name"]: g for g in grants}.values())


@st.composite
def token(draw: st.DrawFn) -> Doc:
    out: Doc = {}
    if draw(st.booleans()):
        out["type"] = draw(st.sampled_from(["Bound", "Legacy"]))
    if out.get("type") != "Legacy":
        if draw(st.booleans()):
            out["expirationSeconds"] = draw(st.sampled_from([600, 3600, 86400, 90000, 31536000]))
        if draw(st.booleans()):
            out["audiences"] = draw(
                st.lists(st.sampled_from(["vault", "sts.example.com", "api"]), max_size=3)
            )
    if draw(st.booleans()):
        out["secretName"] = draw(st.sampled_from(["app-token", "x.y"]))
    if draw(st.booleans()):
        out["kubeconfig"] = draw(st.booleans())
    return out


@st.composite
def verification(draw: st.DrawFn) -> Doc:
    out: Doc = {}
    if draw(st.booleans()):
        out["intervalSeconds"] = draw(st.sampled_from([30, 600, 86400]))
    if draw(st.booleans()):
        out["allowExcess"] = draw(st.booleans())
    if draw(st.booleans()):
        out["mustDeny"] = [
            {"verb": "delete", "resource": "pods"},
            {"verb": "get", "group": "", "resource": "secrets", "namespace": "team-b"},
        ][: draw(st.integers(1, 2))]
    return out


@st.composite
def spec(draw: st.DrawFn) -> Doc:
    """A well-formed spec; each part present or not, possibly empty."""
    out: Doc = {}
    parts: dict[str, Callable[[], Any]] = {
        "rules": lambda: draw(st.lists(resource_rule(), max_size=3)),
        "clusterRoles": lambda: draw(cluster_roles),
        "namespaces": lambda: unique_by_name(draw(st.lists(namespace_grant(), max_size=2))),
        "clusterRules": lambda: draw(st.lists(cluster_rule(), max_size=2)),
        "token": lambda: draw(token()),
        "verification": lambda: draw(verification()),
        "serviceAccount": lambda: {"name": "app-sa", "automountToken": draw(st.booleans())},
        "schedule": lambda: {
            "notBefore": "2026-12-01T00:00:00Z",
            "expiresAt": "2027-01-01T00:00:00Z",
        },
    }
    for key, make in parts.items():
        if draw(st.booleans()):
            out[key] = make()
    return out


# --- one structural fault --------------------------------------------------------------------


def rule_paths(doc: Doc) -> list[tuple[Any, ...]]:
    """Where rules are in this spec: (key, index) or ('namespaces', n, 'rules', index)."""
    paths: list[tuple[Any, ...]] = []
    for key in ("rules", "clusterRules"):
        paths += [(key, i) for i in range(len(doc.get(key) or []))]
    for n, grant in enumerate(doc.get("namespaces") or []):
        paths += [("namespaces", n, "rules", i) for i in range(len(grant.get("rules") or []))]
    return paths


def at(doc: Doc, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


Fault = Callable[[Doc, st.DrawFn], bool]  # edits the spec in place; False: not applicable here


def _rule_fault(edit: Callable[[Doc, st.DrawFn, bool], None], urls: bool | None = None) -> Fault:
    """`urls`: True for an edit of nonResourceURLs, False for one of apiGroups, resources or
    resourceNames; it is then made only where it is the rule's one fault (not on a cluster
    rule of the other kind, which the edit would also make a mix of both)."""

    def fits(path: tuple[Any, ...], rule: Doc) -> bool:
        if urls is None or path[0] != "clusterRules":
            return True
        return ("nonResourceURLs" in rule) == urls

    def apply(doc: Doc, draw: st.DrawFn) -> bool:
        paths = [p for p in rule_paths(doc) if fits(p, at(doc, p))]
        if not paths:
            doc["rules"] = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
            paths = [("rules", 0)]
        path = draw(st.sampled_from(paths))
        edit(at(doc, path), draw, path[0] == "clusterRules")
        return True

    return apply


def _drop(key: str) -> Callable[[Doc, st.DrawFn, bool], None]:
    def edit(rule: Doc, draw: st.DrawFn, cluster: bool) -> None:
        rule.pop(key, None)

    return edit


def _set(key: str, value: Any) -> Callable[[Doc, st.DrawFn, bool], None]:
    def edit(rule: Doc, draw: st.DrawFn, cluster: bool) -> None:
        rule[key] = copy.deepcopy(value)

    return edit


def _field(path: tuple[str, ...], value: Any) -> Fault:
    def apply(doc: Doc, draw: st.DrawFn) -> bool:
        target = doc
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                return False
        target[path[-1]] = copy.deepcopy(value)
        return True

    return apply


def _grant_fault(edit: Callable[[Doc], Any]) -> Fault:
    def apply(doc: Doc, draw: st.DrawFn) -> bool:
        grants = doc.setdefault("namespaces", [])
        if not grants:
            grants.append({"name": "team-b", "clusterRoles": ["view"]})
        grant = grants[draw(st.integers(0, len(grants) - 1))]
        edit(grant)
        for key in [k for k, v in grant.items() if v is None]:
            del grant[key]  # None stands for "remove"
        return True

    return apply


def _duplicate_grant(doc: Doc, draw: st.DrawFn) -> bool:
    doc["namespaces"] = [*doc.get("namespaces", []), {"name": "dup", "clusterRoles": ["view"]}]
    doc["namespaces"].append(
        {"name": "dup", "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}
    )
    return True


LONG = "x" * 254
FAULTS: dict[str, Fault] = {
    # rules
    "rule-without-verbs": _rule_fault(_drop("verbs")),
    "rule-without-apiGroups": _rule_fault(_drop("apiGroups"), urls=False),
    "rule-without-resources": _rule_fault(_drop("resources"), urls=False),
    "rule-empty-verbs": _rule_fault(_set("verbs", [])),
    "rule-empty-apiGroups": _rule_fault(_set("apiGroups", []), urls=False),
    "rule-empty-resources": _rule_fault(_set("resources", []), urls=False),
    "rule-empty-verb": _rule_fault(_set("verbs", ["get", ""])),
    "rule-empty-resource": _rule_fault(_set("resources", [""]), urls=False),
    "rule-empty-resource-name": _rule_fault(_set("resourceNames", [""]), urls=False),
    "rule-empty-url-list": _rule_fault(_set("nonResourceURLs", []), urls=True),
    "rule-with-urls": _rule_fault(_set("nonResourceURLs", ["/healthz"])),
    "rule-verbs-a-string": _rule_fault(_set("verbs", "get")),
    "rule-verb-a-number": _rule_fault(_set("verbs", [7])),
    "rule-17-verbs": _rule_fault(_set("verbs", [f"v{i}" for i in range(17)])),
    "rule-long-verb": _rule_fault(_set("verbs", ["v" * 64])),
    "rule-long-group": _rule_fault(_set("apiGroups", [LONG]), urls=False),
    "rule-unknown-field": _rule_fault(_set("verb", ["get"])),
    "rule-null-verbs": _rule_fault(_set("verbs", None)),
    # lists
    "33-rules": _field(
        ("rules",), [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}] * 33
    ),
    "17-cluster-roles": _field(("clusterRoles",), [f"role-{i}" for i in range(17)]),
    "cluster-roles-twice": _field(("clusterRoles",), ["view", "view"]),
    "cluster-role-malformed": _field(("clusterRoles",), ["Not Valid"]),
    "cluster-role-empty": _field(("clusterRoles",), [""]),
    "rules-an-object": _field(("rules",), {"apiGroups": [""]}),
    # namespaces
    "grant-without-name": _grant_fault(lambda g: g.update(name=None)),
    "grant-name-malformed": _grant_fault(lambda g: g.update(name="Team_B")),
    "grant-name-too-long": _grant_fault(lambda g: g.update(name="b" * 64)),
    "grant-grants-nothing": _grant_fault(lambda g: g.update(rules=[], clusterRoles=[])),
    "grant-without-grants": _grant_fault(lambda g: g.update(rules=None, clusterRoles=None)),
    "grant-unknown-field": _grant_fault(lambda g: g.update(role="view")),
    "grants-duplicated": _duplicate_grant,
    # token
    "token-type-unknown": _field(("token", "type"), "Forever"),
    # (a whole token: expirationSeconds and audiences in a Legacy token would be a second fault)
    "token-too-short": _field(("token",), {"expirationSeconds": 599}),
    "token-too-long": _field(("token",), {"expirationSeconds": 31536001}),
    "token-seconds-a-string": _field(("token",), {"expirationSeconds": "3600"}),
    "legacy-with-audiences": _field(("token",), {"type": "Legacy", "audiences": ["vault"]}),
    "legacy-with-seconds": _field(("token",), {"type": "Legacy", "expirationSeconds": 600}),
    "secret-name-malformed": _field(("token", "secretName"), "UPPER"),
    "secret-name-too-long": _field(("token", "secretName"), "s" * 254),
    "audience-empty": _field(("token",), {"audiences": [""]}),
    "9-audiences": _field(("token",), {"audiences": [f"a{i}" for i in range(9)]}),
    "kubeconfig-a-string": _field(("token", "kubeconfig"), "yes"),
    "token-unknown-field": _field(("token", "lifetime"), 600),
    # service account
    "sa-name-malformed": _field(("serviceAccount", "name"), "Bad_Name"),
    "sa-automount-a-string": _field(("serviceAccount", "automountToken"), "yes"),
    "sa-label-too-long": _field(("serviceAccount", "labels"), {"team_name": "t" * 64}),
    "sa-33-annotations": _field(
        ("serviceAccount", "annotations"), {f"a{i}": "x" for i in range(33)}
    ),
    # verification
    "interval-too-short": _field(("verification", "intervalSeconds"), 5),
    "interval-too-long": _field(("verification", "intervalSeconds"), 86401),
    "interval-a-string": _field(("verification", "intervalSeconds"), "hourly"),
    "must-deny-without-resource": _field(("verification", "mustDeny"), [{"verb": "delete"}]),
    "must-deny-empty-verb": _field(
        ("verification", "mustDeny"), [{"verb": "", "resource": "pods"}]
    ),
    "must-deny-long-namespace": _field(
        ("verification", "mustDeny"), [{"verb": "get", "resource": "pods", "namespace": "n" * 64}]
    ),
    "allow-excess-a-string": _field(("verification", "allowExcess"), "no"),
    # schedule
    "schedule-wrong-order": _field(
        ("schedule",), {"notBefore": "2027-01-01T00:00:00Z", "expiresAt": "2026-12-01T00:00:00Z"}
    ),
    "schedule-not-a-time": _field(("schedule", "notBefore"), "tomorrow"),
    "schedule-unknown-field": _field(("schedule", "from"), "2026-12-01T00:00:00Z"),
    # the spec itself
    "spec-unknown-field": _field(("serviceAcount",), {"name": "x"}),
}


@st.composite
def case(draw: st.DrawFn) -> tuple[Doc, str]:
    doc = draw(spec())
    fault = draw(st.sampled_from([None, *FAULTS]))
    if fault is not None and not FAULTS[fault](doc, draw):
        fault = None
    return doc, fault or "none"


# --- the two judges ----------------------------------------------------------------------------

# ("accepted" | "invalid" | "policy", the fields named, or the policy's messages); admission's
# "invalid" is "invalid-strict" when strict decoding refused unknown fields
Verdict = tuple[str, list[str]]
UNKNOWN = re.compile(r'unknown field "([^"]+)"')


def field_of(problem: str) -> str:
    return problem.split(": ", 1)[0]


def admission(api: client.CustomObjectsApi, namespace: str, body: Doc) -> Verdict:
    try:
        api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, dry_run="All", field_validation="Strict"
        )
        return "accepted", []
    except ApiException as exc:
        code, status = exc.status, json.loads(exc.body or "{}")
    message = status.get("message", "")
    denied = re.search(rf"ValidatingAdmissionPolicy '{VAP_NAME}' .*denied request: (.*)", message)
    if denied:
        return "policy", sorted(m.strip() for m in denied.group(1).split("; "))
    if code == 400:
        return "invalid-strict", sorted(set(UNKNOWN.findall(message)))
    causes = (status.get("details") or {}).get("causes") or []
    fields = {c.get("field", "") for c in causes}
    # "<nil>": "some validation rules were not checked because the object was invalid"
    return "invalid", sorted(f for f in fields if f and f != "<nil>")


def operator(body: Doc, policy: Policy) -> Verdict:
    try:
        identity = parse_identity(copy.deepcopy(body))
    except SpecError as exc:
        return "invalid", sorted({field_of(p) for p in exc.problems})
    violations = check(identity, policy)
    if violations:
        return "policy", sorted(str(v) for v in violations)
    return "accepted", []


def same_verdict(ours: Verdict, theirs: Verdict) -> bool:
    """Equal, except that a value of the wrong type, refused by the API server's strict decoding
    as unknown fields below it (e.g. `rules: {apiGroups: ...}` -> unknown field
    "spec.rules.apiGroups"), is named by the operator at the value itself (spec.rules)."""
    if theirs[0] != "invalid-strict":
        return ours == theirs
    if ours[0] != "invalid":
        return False

    def names(outer: str, inner: str) -> bool:
        return inner == outer or inner.startswith(outer + ".")

    return all(any(names(o, t) for o in ours[1]) for t in theirs[1]) and all(
        any(names(o, t) for t in theirs[1]) for o in ours[1]
    )


def manifest(namespace: str, doc: Doc) -> Doc:
    text = json.dumps(doc).replace(OWN_NS, namespace)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AppIdentity",
        "metadata": {"name": "judged", "namespace": namespace},
        "spec": json.loads(text),
    }


def test_admission_and_the_operator_judge_every_spec_alike(
    admin_api: client.ApiClient,
    admission_policy: Doc,  # noqa: F811
    operator_policy: Policy,  # noqa: F811
    namespace: str,
) -> None:
    api = client.CustomObjectsApi(admin_api)
    seen: dict[str, int] = {}
    disagreements: list[str] = []

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # every example is judged once; no shrinking of a disagreement
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case())
    def judge(generated: tuple[Doc, str]) -> None:
        doc, fault = generated
        body = manifest(namespace, doc)
        ours, theirs = operator(body, operator_policy), admission(api, namespace, body)
        verdict = theirs[0].removesuffix("-strict")
        seen[verdict] = seen.get(verdict, 0) + 1
        if not same_verdict(ours, theirs):
            disagreements.append(
                f"{fault}: {json.dumps(body['spec'])}\n  admission: {theirs}\n  operator:  {ours}"
            )

    started = time.monotonic()
    judge()
    elapsed = time.monotonic() - started
    total = sum(seen.values())
    print(
        f"one judge (seed {SEED}): {total} specs in {elapsed:.1f}s, verdicts {seen}, "
        f"{len(disagreements)} disagreements"
    )
    assert total >= EXAMPLES * 0.9
    assert len(seen) == 3, f"every kind of verdict should occur: {seen}"
    by_fault: dict[str, str] = {}
    for text in disagreements:
        by_fault.setdefault(text.split(":", 1)[0], text)
    summary = "\n".join(by_fault.values())
    assert not disagreements, f"{len(disagreements)} of {total}, one per fault:\n{summary}"
