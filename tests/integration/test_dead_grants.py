"""Rules that can grant nothing (issue 24): RBAC stores any string, so a misspelt verb, resource
or subresource would be applied and then "verified" by access reviews that ask about the same
strings. The operator judges every rule against the API server's discovery and refuses such a
spec before writing anything; a verb Kubernetes does not know is refused by the policy (and at
admission, where the admission policy is installed). Custom resources count once their CRD is
established; RBAC's special verbs and its resources that no API serves stay valid."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from appidentity.discovery import Discovery, judge
from appidentity.kube import ApiError, Kube
from appidentity.model import parse_identity
from support import (
    TEST_POLICY_FILE,
    Cluster,
    Operator,
    condition,
    create,
    events_for,
    identity,
    wait_ready,
    wait_reason,
)

PODS = {"apiGroups": [""], "resources": ["pods"]}


def refused(kube: Kube, namespace: str, name: str, reason: str, field: str) -> str:
    """Waits for the refusal and shows that it names the field, posted an Event and wrote
    nothing; returns the status message."""
    obj = wait_reason(kube, namespace, name, reason, type_="Provisioned")
    message = str(condition(obj, "Provisioned")["message"])
    assert message.startswith(field + ": "), message
    assert condition(obj, "Ready")["reason"] == reason
    assert condition(obj, "Stalled")["status"] == "True"
    events = [e for e in events_for(kube, namespace, name) if e["reason"] == reason]
    assert events and field in events[0]["message"], events
    for kind, child in (("ServiceAccount", name), ("Secret", f"{name}-token"), ("Role", name)):
        assert kube.get(kind, namespace, child) is None, f"{kind} {child} was created"
    return message


@pytest.mark.parametrize(
    ("rule", "field", "says"),
    [
        (
            {**PODS, "resources": ["pod"]},
            "spec.rules[0].resources[0]",
            '"pod" is not a resource of the API group "" (core); did you mean "pods"?',
        ),
        (
            {**PODS, "resources": ["pods/logg"]},
            "spec.rules[0].resources[0]",
            'did you mean "pods/log"?',
        ),
        (
            {**PODS, "resources": ["pods/log"], "verbs": ["get", "watch"]},
            "spec.rules[0].verbs[1]",
            '"watch" is not a verb pods/log serves (get)',
        ),
        (
            {"apiGroups": ["aps"], "resources": ["deployments"], "verbs": ["get"]},
            "spec.rules[0].apiGroups[0]",
            'did you mean "apps"?',
        ),
    ],
    ids=["resource-misspelt", "subresource-misspelt", "verb-not-served", "group-misspelt"],
)
def test_a_rule_naming_what_the_cluster_lacks_is_refused_before_any_write(
    kube: Kube, namespace: str, operator: object, rule: dict[str, Any], field: str, says: str
) -> None:
    rule = {"verbs": ["get"], **rule}
    create(kube, identity("dead", namespace, rules=[rule]))
    message = refused(kube, namespace, "dead", "UnknownRule", field)
    assert says in message, message


def test_a_verb_kubernetes_does_not_know_is_refused_by_the_policy(
    kube: Kube, namespace: str, operator: object
) -> None:
    """Refused at admission where the admission policy is installed (the image run installs
    deploy/), else by the operator: the same words either way (test_one_judge)."""
    field = "spec.rules[0].verbs[0]"
    try:
        create(kube, identity("gett", namespace, rules=[{**PODS, "verbs": ["gett"]}]))
    except ApiError as exc:
        assert f"{field}: 'gett' is neither a Kubernetes verb" in exc.message, exc.message
        return
    message = refused(kube, namespace, "gett", "PolicyViolation", field)
    assert "(policy: extraVerbs)" in message


def test_check_reports_the_same_findings(
    kube: Kube, cluster: Cluster, namespace: str, operator: object
) -> None:
    create(
        kube, identity("typo", namespace, rules=[{**PODS, "resources": ["pod"], "verbs": ["get"]}])
    )
    wait_reason(kube, namespace, "typo", "UnknownRule", type_="Provisioned")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "appidentity", "check", "typo", "-n", namespace),
            *("--kubeconfig", str(cluster.kubeconfig)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert 'UNKNOWN   spec.rules[0].resources[0]: "pod" is not a resource' in done.stdout


@pytest.fixture
def widgets_crd(cluster: Cluster, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A small namespaced CRD of a group only this test uses, removed afterwards; the CRD
    itself is installed by the test when it wants it."""
    group = f"{namespace}.example.com"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }
    yield group, crd
    cluster.run_kubectl("delete", "crd", f"widgets.{group}", "--ignore-not-found", check=False)


def test_a_custom_resource_is_refused_before_its_crd_and_granted_once_it_is_established(
    kube: Kube,
    cluster: Cluster,
    namespace: str,
    operator: object,
    widgets_crd: tuple[str, dict[str, Any]],
) -> None:
    group, crd = widgets_crd
    rules = [{"apiGroups": [group], "resources": ["widgets"], "verbs": ["get", "list"]}]
    create(kube, identity("widgets", namespace, rules=rules))
    message = refused(kube, namespace, "widgets", "UnknownRule", "spec.rules[0].apiGroups[0]")
    assert f'"{group}" is not an API group this cluster serves' in message
    kube.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body=crd)
    cluster.run_kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}")
    # The refusal is looked at again after a minute, on discovery read anew (at most every
    # 30 s): the CRD needs no restart of the operator and no edit of the identity.
    obj = wait_ready(kube, namespace, "widgets", timeout=120)
    assert obj["status"]["verification"]["failed"] == []
    assert kube.get("Role", namespace, "widgets") is not None


def test_special_verbs_and_resources_no_api_serves_pass_against_the_real_discovery(
    kube: Kube, crd_installed: None
) -> None:
    """What discovery never lists (impersonation's users, groups, uids and userextras; the
    certificate signers; the kubelet's node subresources; bind, escalate, use...) is judged
    valid against this API server's own discovery."""
    disc = Discovery.from_aggregated(*kube.discovery())
    rules = [
        {
            "apiGroups": [""],
            "resources": ["serviceaccounts", "users", "groups"],
            "verbs": ["impersonate"],
        },
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["uids", "userextras/scopes"],
            "verbs": ["impersonate"],
        },
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["roles", "clusterroles"],
            "verbs": ["bind", "escalate"],
        },
        {
            "apiGroups": ["certificates.k8s.io"],
            "resources": ["signers"],
            "verbs": ["approve", "sign", "attest"],
        },
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["use"]},
        {
            "apiGroups": [""],
            "resources": ["nodes/stats", "nodes/metrics", "nodes/proxy", "nodes/log"],
            "verbs": ["get"],
        },
        {
            "apiGroups": [""],
            "resources": ["pods", "pods/log", "pods/exec"],
            "verbs": ["get", "list", "watch", "create"],
        },
        {
            "apiGroups": ["apps"],
            "resources": ["deployments/scale", "*/scale"],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
    ]
    body = identity("special", "default", clusterRules=rules)
    body["metadata"]["uid"] = "u"
    assert judge(disc, parse_identity(body)) == []


@pytest.fixture
def impersonation_allowed(
    cluster: Cluster, operator: Operator, tmp_path: Path
) -> Iterator[Operator]:
    """The suite's operator, restarted with a policy that forbids escalate and bind only."""
    if not isinstance(operator, Operator):
        pytest.skip("the policy of an operator not started by the suite is not the test's")
    policy = tmp_path / "policy.yaml"
    policy.write_text(TEST_POLICY_FILE.read_text() + "forbiddenVerbs: [escalate, bind]\n")
    allowing = Operator(cluster, tmp_path, tmp_path / "operator.log", policy=policy)
    operator.stop()
    allowing.start()
    try:
        yield allowing
    finally:
        allowing.stop()
        operator.start()


def test_special_verbs_are_granted_and_verified_where_the_policy_allows_them(
    kube: Kube, namespace: str, impersonation_allowed: Operator
) -> None:
    rules = [
        {
            "apiGroups": [""],
            "resources": ["serviceaccounts"],
            "verbs": ["impersonate"],
            "resourceNames": ["deployer"],
        },
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["use"]},
    ]
    create(kube, identity("impersonator", namespace, rules=rules))
    obj = wait_ready(kube, namespace, "impersonator")
    assert obj["status"]["verification"]["failed"] == []
    role = kube.get("Role", namespace, "impersonator")
    assert role is not None
    assert {v for r in role["rules"] for v in r["verbs"]} == {"impersonate", "use"}
