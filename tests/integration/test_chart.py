"""charts/appidentity-operator: lint-clean, with default values the same objects as
deploy/install.yaml, one `policy` value rendered everywhere the policy is needed, and, installed
with `helm install` on the test cluster with a non-default policy, enforced by both the admission
policy and the operator (running as the chart's ServiceAccount with the chart's policy file).

Helm is the one `hack/build-helm.sh` compiles into the cache (`make test` builds it first).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from appidentity.kube import Kube
from appidentity.model import parse_identity
from appidentity.policy import Policy, check, load_policy
from appidentity.policy_manifests import ADMISSION_PARAMETERS, ADMISSION_POLICY, BIND_ROLE
from requester import TLS_SECRET, WEBHOOK_CONFIGURATION, RequesterWebhook
from support import (
    REPO,
    Cluster,
    Operator,
    admission_refusal,
    cel_literal,
    condition,
    create,
    identity,
    policy_of_admission,
    requester_stamp,
    token_kubeconfig,
    wait_ready,
    wait_reason,
    wait_until,
)

CHART = REPO / "charts" / "appidentity-operator"
INSTALL_YAML = REPO / "deploy" / "install.yaml"
WEBHOOK_INSTALL_YAML = REPO / "deploy" / "webhook" / "install.yaml"
BUILD_HELM = REPO / "hack" / "build-helm.sh"
POLICY_CONFIGMAP = "appidentity-policy"
EXTRA_GRANTABLE = "appidentity-operator-grantable-extra"
AGGREGATE_LABEL = "appidentity.dev/aggregate-to-grantable"
# What only the chart adds, on purpose: Helm keeps the CRD on uninstall, and a policy change
# rolls the operator. Everything else must equal deploy/.
HELM_ONLY_CRD_ANNOTATION = "helm.sh/resource-policy"
HELM_ONLY_POD_ANNOTATION = "checksum/policy"

Doc = dict[str, Any]
Key = tuple[str, str, str]  # kind, namespace ("" at cluster scope), name

PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
HPA = {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["get"]}
NON_DEFAULT_POLICY = {
    "allowedClusterRoles": ["view", "edit"],
    "token": {"maxExpirationSeconds": 1800, "allowLegacy": False},
    "forbiddenVerbs": ["escalate", "bind", "impersonate", "deletecollection"],
}
# What the install test sets besides the namespace: the suite's CRD stays (Helm would not adopt
# it, and deleting it would delete every AppIdentity of the suite).
INSTALL_VALUES = {
    "installCRDs": False,
    "policy": NON_DEFAULT_POLICY,
    "grantable": {"extraRules": [HPA]},
}


# --- helm --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Helm's own state in a throwaway directory, and no ambient KUBECONFIG."""
    home = tmp_path_factory.mktemp("helm")
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    for what in ("CACHE", "CONFIG", "DATA"):
        env[f"HELM_{what}_HOME"] = str(home / what.lower())
    done = subprocess.run(
        ["bash", str(BUILD_HELM)], capture_output=True, text=True, check=False, timeout=3600
    )
    if done.returncode != 0:
        pytest.fail(f"hack/build-helm.sh failed:\n{done.stderr[-3000:]}")
    env["HELM_BIN"] = done.stdout.strip().splitlines()[-1]
    return env


def helm(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [env["HELM_BIN"], *args], env=env, capture_output=True, text=True, check=False, timeout=300
    )
    if check and done.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


# Helm's own capabilities lack MutatingAdmissionPolicy v1; a cluster of 1.36+ has it.
WITH_MAP = ("--api-versions", "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy")


def template(
    env: dict[str, str],
    tmp_path: Path,
    values: Doc | None = None,
    *sets: str,
    api_versions: tuple[str, ...] = WITH_MAP,
) -> list[Doc]:
    """`helm template`, as for a cluster of 1.36+ unless `api_versions` says otherwise."""
    args = ["template", "appidentity-operator", str(CHART), *api_versions]
    if values is not None:
        path = tmp_path / f"values-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    return [d for d in yaml.safe_load_all(helm(env, *args).stdout) if d]


def key(doc: Doc) -> Key:
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def by_key(docs: list[Doc]) -> dict[Key, Doc]:
    found = {key(d): d for d in docs}
    assert len(found) == len(docs), "two objects with the same kind, namespace and name"
    return found


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def policy_in_configmap(docs: list[Doc], tmp_path: Path) -> Policy:
    """The policy file the chart gives the operator, loaded as the operator loads it."""
    path = tmp_path / f"policy-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(find(docs, "ConfigMap", POLICY_CONFIGMAP)["data"]["policy.yaml"])
    return load_policy(path)


def comparable(doc: Doc) -> Doc:
    """The object with the policy's values parsed: the chart writes the policy file and the
    CEL constants in another layout than deploy/ (`["view"]` for `['view']`), same values."""
    doc = copy.deepcopy(doc)
    if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == POLICY_CONFIGMAP:
        doc["data"]["policy.yaml"] = yaml.safe_load(doc["data"]["policy.yaml"])
    if doc["kind"] == "ValidatingAdmissionPolicy":
        for variable in doc["spec"].get("variables", []):
            if variable["name"] in ADMISSION_PARAMETERS:
                variable["expression"] = cel_literal(variable["expression"])
    return doc


# --- rendering ---------------------------------------------------------------------------------


def test_chart_lints_clean(helm_env: dict[str, str], tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"policy": NON_DEFAULT_POLICY}))
    for extra in ([], ["-f", str(values)]):
        done = helm(helm_env, "lint", "--strict", str(CHART), *extra, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("api_versions", "install_yaml"),
    [(WITH_MAP, INSTALL_YAML), ((), WEBHOOK_INSTALL_YAML)],
    ids=["mutating-policy", "webhook"],
)
def test_default_values_render_what_deploy_installs(
    helm_env: dict[str, str], tmp_path: Path, api_versions: tuple[str, ...], install_yaml: Path
) -> None:
    """With MutatingAdmissionPolicy (1.36+) deploy/, without it deploy/webhook/: requester.mode
    auto picks by the cluster's API versions. The gap, if any, is listed: a file added to
    deploy/ needs its template here."""
    chart = by_key(template(helm_env, tmp_path, api_versions=api_versions))
    deploy = by_key([d for d in yaml.safe_load_all(install_yaml.read_text()) if d])
    assert sorted(set(deploy) - set(chart)) == [], "in deploy/install.yaml, not in the chart"
    assert sorted(set(chart) - set(deploy)) == [], "in the chart, not in deploy/install.yaml"

    crd = chart[("CustomResourceDefinition", "", "appidentities.appidentity.dev")]
    assert crd["metadata"]["annotations"].pop(HELM_ONLY_CRD_ANNOTATION) == "keep"
    if not crd["metadata"]["annotations"]:
        del crd["metadata"]["annotations"]
    pod = chart[("Deployment", "appidentity-system", "appidentity-operator")]["spec"]["template"]
    assert pod["metadata"]["annotations"].pop(HELM_ONLY_POD_ANNOTATION)
    for k in sorted(deploy):
        assert comparable(chart[k]) == comparable(deploy[k]), f"{k} differs from deploy/"


def test_the_policy_value_reaches_operator_admission_and_bind(
    helm_env: dict[str, str], tmp_path: Path
) -> None:
    docs = template(helm_env, tmp_path, {"policy": NON_DEFAULT_POLICY})
    written = Policy.model_validate(NON_DEFAULT_POLICY)
    assert written != Policy()
    assert policy_in_configmap(docs, tmp_path) == written
    assert policy_of_admission(find(docs, "ValidatingAdmissionPolicy", ADMISSION_POLICY)) == written
    (bind,) = find(docs, "ClusterRole", BIND_ROLE)["rules"]
    assert bind == {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterroles"],
        "verbs": ["bind"],
        "resourceNames": ["view", "edit"],
    }
    default = template(helm_env, tmp_path)

    def checksum(found: list[Doc]) -> str:
        pod = find(found, "Deployment", "appidentity-operator")["spec"]["template"]
        return str(pod["metadata"]["annotations"][HELM_ONLY_POD_ANNOTATION])

    assert checksum(docs) != checksum(default), "a policy change must roll the operator"


def test_no_allowed_cluster_roles_means_no_bind_at_all(
    helm_env: dict[str, str], tmp_path: Path
) -> None:
    """An empty resourceNames would allow binding every ClusterRole."""
    docs = template(helm_env, tmp_path, {"policy": {"allowedClusterRoles": []}})
    assert find(docs, "ClusterRole", BIND_ROLE)["rules"] == []
    vap = find(docs, "ValidatingAdmissionPolicy", ADMISSION_POLICY)
    assert policy_of_admission(vap).allowed_cluster_roles == []


def test_values_for_image_resources_log_format_namespace_and_ceiling(
    helm_env: dict[str, str], tmp_path: Path
) -> None:
    values = {
        "namespace": {"name": "identity-ops"},
        "image": {"repository": "registry.example/appidentity", "tag": "1.2.3"},
        "imagePullSecrets": [{"name": "pull"}],
        "logFormat": "text",
        "resources": {"limits": {"memory": "512Mi"}},
        "grantable": {"extraRules": [HPA]},
    }
    docs = template(helm_env, tmp_path, values)
    namespaced = [d for d in docs if d["metadata"].get("namespace")]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"identity-ops"}
    assert find(docs, "Namespace", "identity-ops")
    for binding in [d for d in docs if d["kind"] == "ClusterRoleBinding"]:
        assert binding["subjects"][0]["namespace"] == "identity-ops"
    pod = find(docs, "Deployment", "appidentity-operator")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/appidentity:1.2.3"
    # Helm merges maps: the other defaults stay
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    args = container["args"]
    assert args[args.index("--log-format") + 1] == "text"
    assert pod["imagePullSecrets"] == [{"name": "pull"}]
    extra = find(docs, "ClusterRole", EXTRA_GRANTABLE)
    assert extra["metadata"]["labels"][AGGREGATE_LABEL] == "true"
    assert extra["rules"] == [HPA]


def test_toggles_leave_out_the_crd_admission_policies_and_namespace(
    helm_env: dict[str, str], tmp_path: Path
) -> None:
    full = {(d["kind"], d["metadata"]["name"]) for d in template(helm_env, tmp_path)}
    values = {
        "installCRDs": False,
        "admission": {"validatingPolicy": False, "finalizerPolicy": False},
        "namespace": {"create": False},
    }
    less = {(d["kind"], d["metadata"]["name"]) for d in template(helm_env, tmp_path, values)}
    assert full - less == {
        ("CustomResourceDefinition", "appidentities.appidentity.dev"),
        ("ValidatingAdmissionPolicy", ADMISSION_POLICY),
        ("ValidatingAdmissionPolicyBinding", ADMISSION_POLICY),
        ("MutatingAdmissionPolicy", "appidentity-finalizer"),
        ("MutatingAdmissionPolicyBinding", "appidentity-finalizer"),
        ("Namespace", "appidentity-system"),
    }
    assert less < full


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("policy.token.maxExpirationSeconds=60", "maxExpirationSeconds"),
        ("policy.allowWildcard=true", "allowWildcard"),
        ("policy.allowedClusterRoles=view", "allowedClusterRoles"),
        ("logFormat=xml", "logFormat"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(
    helm_env: dict[str, str], setting: str, named: str
) -> None:
    done = helm(helm_env, "template", "x", str(CHART), "--set", setting, check=False)
    assert done.returncode != 0, f"{setting} was accepted"
    assert named in done.stderr, done.stderr


def schema_leaves(schema: Doc, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for name, sub in schema.get("properties", {}).items():
        inner = schema_leaves(sub, (*prefix, name))
        found |= inner or {(*prefix, name)}
    return found


def test_values_schema_knows_exactly_the_policy_fields() -> None:
    """Checked against the admission parameters, which a unit test holds to the Policy model."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema_leaves(schema["properties"]["policy"]) == set(ADMISSION_PARAMETERS.values())


# --- installed with helm -----------------------------------------------------------------------


@pytest.fixture
def session_operator_stopped(operator: Any) -> Iterator[None]:
    """The suite's own operator judges every namespace with the default policy; it is paused
    while the chart's policy is shown at work."""
    if not isinstance(operator, Operator):
        pytest.skip("the in-cluster operator is deploy/'s; this installs the chart beside none")
    operator.stop()
    try:
        yield
    finally:
        operator.start()


def live_copy(cluster: Cluster, doc: Doc) -> Doc | None:
    """The object as the cluster has it, ready to be created again; None if absent."""
    name = f"{doc['kind'].lower()}.{doc['apiVersion'].rpartition('/')[0]}/{doc['metadata']['name']}"
    found = cluster.run_kubectl("get", name, "-o", "json", check=False)
    if found.returncode != 0:
        # Absent, or a kind this API server lacks (MutatingAdmissionPolicy before 1.36).
        assert "NotFound" in found.stderr or "doesn't have a resource type" in found.stderr, (
            found.stderr
        )
        return None
    obj: Doc = json.loads(found.stdout)
    obj.pop("status", None)
    for field in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
        obj["metadata"].pop(field, None)
    return obj


@pytest.fixture
def install_values(requester_recording: str) -> Doc:
    """INSTALL_VALUES, with the requester recorded as the session records it."""
    return {**INSTALL_VALUES, "requester": {"mode": requester_recording}}


@pytest.fixture
def cleared_cluster_scope(
    cluster: Cluster, helm_env: dict[str, str], tmp_path: Path, install_values: Doc
) -> Iterator[None]:
    """The chart's cluster-scoped objects have fixed names, like deploy/'s, and Helm will not
    adopt objects it did not create. Objects of those names that another module installed
    from deploy/ are set aside for the test and put back after it."""
    docs = template(helm_env, tmp_path, install_values)
    scoped = [d for d in docs if not d["metadata"].get("namespace") and d["kind"] != "Namespace"]
    assert "CustomResourceDefinition" not in {d["kind"] for d in scoped}
    saved = [obj for obj in (live_copy(cluster, d) for d in scoped) if obj is not None]
    for obj in saved:
        cluster.run_kubectl("delete", "-f", "-", "--wait=true", stdin=json.dumps(obj))
    try:
        yield
    finally:
        for obj in saved:
            cluster.run_kubectl("create", "-f", "-", stdin=json.dumps(obj))
        # Later tests need the requester policy (deploy/'s, now put back) in effect again.
        wait_until(lambda: requester_stamp(cluster), 60, "the requester policy to return")


def _serve_chart_webhook_locally(kube: Kube, webhook: RequesterWebhook) -> None:
    """No Pod runs here: the chart's webhook configuration is pointed at the suite's webhook
    replicas (same code, same image contents), with their CA."""
    secret = kube.request("GET", "/api/v1/namespaces/appidentity-system/secrets/" + TLS_SECRET)
    config = {"url": webhook.url, "caBundle": secret["data"]["ca.crt"]}
    kube.request(
        "PATCH",
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"
        + WEBHOOK_CONFIGURATION,
        body=[{"op": "replace", "path": "/webhooks/0/clientConfig", "value": config}],
        content_type="application/json-patch+json",
    )


def test_helm_install_with_a_non_default_policy_is_enforced_by_admission_and_operator(
    cluster: Cluster,
    kube: Kube,
    crd_installed: RequesterWebhook | None,
    install_values: Doc,
    session_operator_stopped: None,
    cleared_cluster_scope: None,
    helm_env: dict[str, str],
    namespace: str,
    tmp_path: Path,
) -> None:
    operator_ns = f"appid-chart-{uuid.uuid4().hex[:6]}"
    # Written before the chart's admission policy exists, as identities from before a stricter
    # policy are: only the operator can refuse it now.
    earlier = identity("earlier", namespace, rules=[PODS], token={"expirationSeconds": 3600})
    # Admission policies take a moment to go: until then the requester policy set aside above
    # still refuses an unstamped write.
    wait_until(
        lambda: (
            cluster.run_kubectl(
                "apply", "-f", "-", stdin=json.dumps(earlier), check=False
            ).returncode
            == 0
        ),
        30,
        "the set-aside admission policies to go",
    )

    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"namespace": {"name": operator_ns}, **install_values}))
    release = ["chart-test", "--namespace", namespace]
    env = helm_env | {"KUBECONFIG": str(cluster.kubeconfig)}
    helm(env, "install", *release, str(CHART), "-f", str(values))
    if crd_installed is not None:
        _serve_chart_webhook_locally(kube, crd_installed)
    own: Operator | None = None
    try:
        # --- admission: the chart's policy, with the operator's own messages
        policy_file = tmp_path / "installed-policy.yaml"
        policy_file.write_text(
            cluster.run_kubectl(
                "get", "configmap", POLICY_CONFIGMAP, "-n", operator_ns,
                "-o", "jsonpath={.data.policy\\.yaml}",
            ).stdout
        )  # fmt: skip
        installed = load_policy(policy_file)
        assert installed == Policy.model_validate(NON_DEFAULT_POLICY)
        over_cap = identity("over-cap", namespace, rules=[PODS], token={"expirationSeconds": 3600})
        wait_until(
            lambda: admission_refusal(cluster, over_cap) is not None,
            30,
            "the chart's admission policy to take effect",
        )
        cases = {
            "over-cap": ("3600s exceeds the cap of 1800s (policy: token.maxExpirationSeconds)"),
            "admin": "ClusterRole 'admin' is not in the allowlist ['view', 'edit']",
            "legacy": "Legacy tokens are off (policy: token.allowLegacy)",
            "deletecollection": "verb 'deletecollection' is forbidden (policy: forbiddenVerbs)",
        }
        specs: dict[str, Doc] = {
            "over-cap": over_cap,
            "admin": identity("admin", namespace, clusterRoles=["admin"]),
            "legacy": identity("legacy", namespace, rules=[PODS], token={"type": "Legacy"}),
            "deletecollection": identity(
                "deletecollection",
                namespace,
                rules=[{**PODS, "verbs": ["deletecollection"]}],
            ),
        }
        for name, expected in cases.items():
            refused = admission_refusal(cluster, specs[name])
            assert refused is not None and any(expected in m for m in refused), (name, refused)
            ours = [str(v) for v in check(parse_identity(copy.deepcopy(specs[name])), installed)]
            assert sorted(refused) == sorted(ours), f"{name}: admission and operator disagree"
        editor = identity(
            "editor", namespace, clusterRoles=["edit"], token={"expirationSeconds": 1800}
        )
        assert admission_refusal(cluster, editor) is None, "edit is allowed by the chart's policy"

        # --- the operator: the chart's ServiceAccount and RBAC, the chart's policy file
        token = cluster.run_kubectl(
            "create", "token", "appidentity-operator", "-n", operator_ns, "--duration=1h"
        ).stdout.strip()
        kubeconfig = token_kubeconfig(
            cluster.server, cluster.ca_file, token, "chart-operator", tmp_path / "op.kubeconfig"
        )
        own = Operator(
            cluster, tmp_path, tmp_path / "operator.log", kubeconfig=kubeconfig, policy=policy_file
        )
        own.start()
        refused = wait_reason(kube, namespace, "earlier", "PolicyViolation", type_="Provisioned")
        assert "3600s exceeds the cap of 1800s" in condition(refused, "Provisioned")["message"]
        assert kube.get("ServiceAccount", namespace, "earlier") is None
        create(kube, editor)
        ready = wait_ready(kube, namespace, "editor")
        assert ready["status"]["verification"]["failed"] == []
        # binding `edit` needs the chart's `bind` on it: deploy/'s defaults allow only view
        assert kube.get("RoleBinding", namespace, "editor:edit") is not None
        subject = f"system:serviceaccount:{operator_ns}:appidentity-operator"
        wait_until(
            lambda: can(cluster, subject, "get", "horizontalpodautoscalers.autoscaling"),
            30,
            "grantable.extraRules to reach the operator's ceiling",
        )
        for name in ("earlier", "editor"):
            cluster.run_kubectl("delete", "appidentity", name, "-n", namespace, "--timeout=60s")
    finally:
        if own is not None:
            own.stop()
        helm(env, "uninstall", *release, "--wait", check=False)
        cluster.run_kubectl("delete", "namespace", operator_ns, "--wait=false", check=False)


def can(cluster: Cluster, subject: str, verb: str, resource: str) -> bool:
    done = cluster.run_kubectl("auth", "can-i", verb, resource, "-A", "--as", subject, check=False)
    return done.stdout.strip() == "yes"
