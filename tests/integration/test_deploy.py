"""deploy/: the kustomization renders, its RBAC is minimal, install.yaml is current, it installs
cleanly into a namespace held to Pod Security "restricted", the API server enforces the
grantable ceiling, and the ValidatingAdmissionPolicy refuses exactly what the operator's own
policy check refuses, with the same messages.

Everything installed for real on the test cluster is removed again, and only if this module
created it: another module may have installed the CRD or the whole of deploy/ before.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml
from appidentity.model import parse_identity
from appidentity.policy import Policy, check, load_policy
from appidentity.policy_manifests import BIND_ROLE, component_yaml
from support import admission_refusal as admission
from support import policy_of_admission, token_kubeconfig

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CRD_SOURCE = REPO / "crds" / "appidentity.dev_appidentities.yaml"
OPERATOR_NS = "appidentity-system"
OPERATOR_SA = "appidentity-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
VAP_NAME = "appidentity-policy"
MAP_NAME = "appidentity-finalizer"
REQUESTER_POLICY = "appidentity-requester"
FINALIZER = "appidentity.dev/finalizer"
GRANTABLE = "appidentity-operator-grantable"
AGGREGATE_LABEL = "appidentity.dev/aggregate-to-grantable"
NOT_HELD = "attempting to grant RBAC permissions not currently held"
OWN_NS = "$NAMESPACE"  # stands for the test's namespace in the cases below

Doc = dict[str, Any]


class ClusterLike(Protocol):
    kubeconfig: Path
    kubectl: str
    server: str
    ca_file: Path


# --- helpers -----------------------------------------------------------------------------------


def kubectl_binary() -> str:
    local = REPO / "bin" / "kubectl"
    if local.exists():
        return str(local)
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("no kubectl: run `make control-plane` first")
    return found


def render(directory: Path = DEPLOY) -> str:
    done = subprocess.run(
        [kubectl_binary(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return done.stdout


def kubectl(
    cluster: ClusterLike, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """kubectl against the test cluster only, whatever KUBECONFIG the shell exports."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    done = subprocess.run(
        [cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if check and done.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def eventually(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.3)


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in deploy/, found {len(found)}"
    return found[0]


def ref(doc: Doc) -> list[str]:
    """kubectl arguments naming one object: kind.group/name [-n namespace]."""
    group, _, _ = doc["apiVersion"].rpartition("/")
    kind = doc["kind"].lower() + (f".{group}" if group else "")
    args = [f"{kind}/{doc['metadata']['name']}"]
    if doc["metadata"].get("namespace"):
        args += ["-n", doc["metadata"]["namespace"]]
    return args


@dataclass
class Installer:
    """Applies objects for real and removes, at the end, those that did not exist before."""

    cluster: ClusterLike
    created: list[Doc] = field(default_factory=list)

    def exists(self, doc: Doc) -> bool:
        found = kubectl(self.cluster, "get", *ref(doc), "-o", "name", check=False)
        if found.returncode != 0 and "NotFound" not in found.stderr:
            pytest.fail(f"kubectl get {ref(doc)}: {found.stderr}")
        return found.returncode == 0

    def apply(self, doc: Doc, keep_existing: bool = False) -> None:
        """Applies deploy/'s version; with keep_existing, leaves one already there alone (it may
        be an installation customised with an overlay)."""
        if not self.exists(doc):
            self.created.append(doc)
        elif keep_existing:
            return
        kubectl(self.cluster, "apply", "-f", "-", stdin=json.dumps(doc))

    def remove_created(self) -> None:
        for doc in reversed(self.created):
            kubectl(self.cluster, "delete", *ref(doc), "--ignore-not-found", "--wait=false")
        for doc in self.created:  # a later module may create the same objects again
            if doc["kind"] in ("Namespace", "CustomResourceDefinition"):
                kubectl(self.cluster, "wait", "--for=delete", *ref(doc), "--timeout=90s")
        self.created.clear()


def identity(namespace: str, spec: Doc, name: str = "probe") -> Doc:
    text = json.dumps(spec).replace(OWN_NS, namespace)
    return {
        "apiVersion": "appidentity.dev/v1alpha1",
        "kind": "AppIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": json.loads(text),
    }


def operator_messages(doc: Doc, policy: Policy) -> list[str]:
    return [str(v) for v in check(parse_identity(copy.deepcopy(doc)), policy)]


# --- the rendered kustomization ----------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered_text() -> str:
    return render()


@pytest.fixture(scope="module")
def rendered(rendered_text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(rendered_text) if d]


@pytest.fixture(scope="module")
def operator_policy(rendered: list[Doc], tmp_path_factory: pytest.TempPathFactory) -> Policy:
    """The policy the Deployment's ConfigMap gives the operator, loaded as the operator does."""
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(find(rendered, "ConfigMap", "appidentity-policy")["data"]["policy.yaml"])
    return load_policy(path)


def test_deploy_renders_every_part(rendered: list[Doc]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert kinds == {
        ("Namespace", OPERATOR_NS),
        ("CustomResourceDefinition", "appidentities.appidentity.dev"),
        ("ServiceAccount", OPERATOR_SA),
        ("ClusterRole", "appidentity-operator"),
        ("ClusterRoleBinding", "appidentity-operator"),
        ("ClusterRole", BIND_ROLE),
        ("ClusterRoleBinding", BIND_ROLE),
        ("ClusterRole", GRANTABLE),
        ("ClusterRoleBinding", GRANTABLE),
        ("ClusterRole", "appidentity-operator-grantable-defaults"),
        ("ConfigMap", "appidentity-policy"),
        ("ValidatingAdmissionPolicy", VAP_NAME),
        ("ValidatingAdmissionPolicyBinding", VAP_NAME),
        ("MutatingAdmissionPolicy", MAP_NAME),
        ("MutatingAdmissionPolicyBinding", MAP_NAME),
        ("MutatingAdmissionPolicy", REQUESTER_POLICY),
        ("MutatingAdmissionPolicyBinding", REQUESTER_POLICY),
        ("ValidatingAdmissionPolicy", REQUESTER_POLICY),
        ("ValidatingAdmissionPolicyBinding", REQUESTER_POLICY),
        ("Deployment", "appidentity-operator"),
        ("Service", "appidentity-operator-metrics"),
    }
    cluster_scoped = {
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
    }
    for doc in rendered:
        where = doc["metadata"].get("namespace")
        expected = None if doc["kind"] in cluster_scoped else OPERATOR_NS
        assert where == expected, f"{doc['kind']} {doc['metadata']['name']}: namespace {where}"


def test_deploy_installs_the_crd_from_crds() -> None:
    """One source of truth: deploy/ takes the CRD from crds/ as a kustomize base."""
    assert "../crds" in yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]


def test_install_yaml_is_the_rendered_kustomization(rendered_text: str) -> None:
    install = DEPLOY / "install.yaml"
    assert install.exists(), "deploy/install.yaml is missing: run `make install.yaml`"
    assert install.read_text() == rendered_text, (
        "deploy/install.yaml is not `kubectl kustomize deploy/`: run `make install.yaml`"
    )


# --- RBAC ----------------------------------------------------------------------------------


def rules_of(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc.get("rules") or []:
                yield doc["metadata"]["name"], rule


def flat(rules: list[Doc]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or "") for every combination in the rules."""
    return {
        (group, resource, verb, name)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule["verbs"]
        for name in rule.get("resourceNames") or [""]
    }


def test_rbac_has_no_wildcards_escalation_or_secret_listing(
    rendered: list[Doc], operator_policy: Policy
) -> None:
    found = list(rules_of(rendered))
    assert found, "no RBAC rules rendered"
    for role, rule in found:
        for key in ("verbs", "apiGroups", "resources", "resourceNames", "nonResourceURLs"):
            assert not any("*" in v for v in rule.get(key, [])), f"{role}: wildcard in {key}"
        assert not {"escalate", "impersonate"} & set(rule["verbs"]), f"{role}: {rule}"
        if "" in rule.get("apiGroups", []) and "secrets" in rule.get("resources", []):
            assert not {"list", "watch", "deletecollection"} & set(rule["verbs"]), (
                f"{role}: lists or watches Secrets"
            )
        if "bind" in rule["verbs"]:
            assert rule.get("resources") == ["clusterroles"], f"{role}: bind on {rule}"
            names = rule.get("resourceNames") or []
            assert names, f"{role}: bind without resourceNames"
            assert set(names) <= set(operator_policy.allowed_cluster_roles), (
                f"{role}: bind on {names}, allowlist is {operator_policy.allowed_cluster_roles}"
            )


RBAC = "rbac.authorization.k8s.io"
OPERATOR_RIGHTS = {
    ("appidentity.dev", "appidentities"): {"get", "list", "watch", "patch", "update"},
    ("appidentity.dev", "appidentities/status"): {"get", "patch", "update"},
    ("appidentity.dev", "appidentities/finalizers"): {"update"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},  # kopf's observer
    ("", "namespaces"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "serviceaccounts"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "serviceaccounts/token"): {"create"},
    ("", "secrets"): {"get", "create", "patch", "update", "delete"},
    ("authorization.k8s.io", "subjectaccessreviews"): {"create"},  # the requester check
    **{
        (RBAC, kind): {"get", "list", "watch", "create", "patch", "update", "delete"}
        for kind in ("roles", "rolebindings", "clusterroles", "clusterrolebindings")
    },
}


def test_operator_cluster_role_is_exactly_what_the_operator_calls(
    rendered: list[Doc], operator_policy: Policy
) -> None:
    rules = [
        rule
        for name in ("appidentity-operator", BIND_ROLE)
        for rule in find(rendered, "ClusterRole", name)["rules"]
    ]
    expected = {
        (group, resource, verb, "")
        for (group, resource), verbs in OPERATOR_RIGHTS.items()
        for verb in verbs
    } | {(RBAC, "clusterroles", "bind", name) for name in operator_policy.allowed_cluster_roles}
    assert flat(rules) == expected
    assert not any("nonResourceURLs" in r for r in rules)


def test_bindings_name_the_operator_service_account(rendered: list[Doc]) -> None:
    for name in ("appidentity-operator", BIND_ROLE, GRANTABLE):
        binding = find(rendered, "ClusterRoleBinding", name)
        assert binding["roleRef"] == {"apiGroup": RBAC, "kind": "ClusterRole", "name": name}
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}
        ]


def test_grantable_ceiling_is_aggregated_from_labelled_roles(rendered: list[Doc]) -> None:
    ceiling = find(rendered, "ClusterRole", GRANTABLE)
    assert ceiling["aggregationRule"] == {
        "clusterRoleSelectors": [{"matchLabels": {AGGREGATE_LABEL: "true"}}]
    }
    assert not ceiling.get("rules"), "the aggregation controller owns the ceiling's rules"
    defaults = find(rendered, "ClusterRole", "appidentity-operator-grantable-defaults")
    assert defaults["metadata"]["labels"][AGGREGATE_LABEL] == "true"
    granted = flat(defaults["rules"])
    resources = {(g, r) for g, r, _, _ in granted}
    for needed in [("", "pods"), ("", "pods/log"), ("", "configmaps"), ("", "services")]:
        assert needed in resources
    for needed in [("apps", "deployments"), ("batch", "jobs"), ("networking.k8s.io", "ingresses")]:
        assert needed in resources
    for group, resource in resources:
        assert resource != "secrets"
        assert resource.split("/")[-1] not in {"exec", "attach", "proxy", "portforward"}
        assert group not in (RBAC, "admissionregistration.k8s.io", "certificates.k8s.io")
    assert {v for g, r, v, _ in granted if (g, r) == ("", "serviceaccounts")} == {
        "get",
        "list",
        "watch",
    }


# --- policy: the operator's file and the admission policy ---------------------------------


def test_policy_configmap_holds_the_safe_defaults(operator_policy: Policy) -> None:
    assert operator_policy == Policy()


def test_admission_policy_parameters_match_the_operator_policy(
    rendered: list[Doc], operator_policy: Policy
) -> None:
    vap = find(rendered, "ValidatingAdmissionPolicy", VAP_NAME)
    assert policy_of_admission(vap) == operator_policy, (
        "the admission policy's parameter variables differ from operator-policy.yaml"
    )


def test_admission_policy_is_bound_to_deny(rendered: list[Doc]) -> None:
    vap = find(rendered, "ValidatingAdmissionPolicy", VAP_NAME)
    assert vap["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert vap["spec"]["failurePolicy"] == "Fail"
    assert vap["spec"]["matchConstraints"]["resourceRules"] == [
        {
            "apiGroups": ["appidentity.dev"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["appidentities"],
            "scope": "*",
        }
    ]
    binding = find(rendered, "ValidatingAdmissionPolicyBinding", VAP_NAME)
    assert binding["spec"]["policyName"] == VAP_NAME
    assert binding["spec"]["validationActions"] == ["Deny"]


# --- the Deployment ------------------------------------------------------------------------


def test_deployment_is_wired_to_its_configmap_service_and_probes(rendered: list[Doc]) -> None:
    deployment = find(rendered, "Deployment", "appidentity-operator")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == OPERATOR_SA
    (container,) = pod["containers"]
    assert container["image"] == "appidentity-operator:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    args = container["args"]
    assert args[:2] == ["run", "--all-namespaces"]
    option = {args[i]: args[i + 1] for i in range(2, len(args) - 1, 2)}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert option["--metrics-port"] == str(ports["metrics"]) == "8080"
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == int(option["--liveness-port"]) == 8081

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    policy_mount = next(m for m in mounts.values() if option["--policy"].startswith(m["mountPath"]))
    config_map = volumes[policy_mount["name"]]["configMap"]["name"]
    key = option["--policy"].removeprefix(policy_mount["mountPath"]).lstrip("/")
    assert key in find(rendered, "ConfigMap", config_map)["data"]
    assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]

    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # kopf's own name; without it kopf asks the passwd database, which may not know the UID
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert set(container["resources"]) == {"requests", "limits"}
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"

    service = find(rendered, "Service", "appidentity-operator-metrics")
    labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8080 and port["targetPort"] in ports


# --- on the API server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def installer(cluster: ClusterLike, crd_installed: object) -> Iterator[Installer]:
    """What deploy/ adds to the session's install (the CRD and the requester recording, which
    stay: removing them would pull them from under the tests that run after these)."""
    done = Installer(cluster)
    yield done
    done.remove_created()


@pytest.fixture(scope="module")
def operator_namespace(installer: Installer, rendered: list[Doc]) -> str:
    """appidentity-system, applied from deploy/ (so later applies find their annotation)."""
    namespace = find(rendered, "Namespace", OPERATOR_NS)
    state = kubectl(installer.cluster, "get", "namespace", OPERATOR_NS, "-o", "json", check=False)
    if state.returncode == 0 and json.loads(state.stdout)["status"].get("phase") == "Terminating":
        kubectl(installer.cluster, "wait", "--for=delete", f"namespace/{OPERATOR_NS}")
    installer.apply(namespace)
    return OPERATOR_NS


def test_namespace_is_held_to_restricted_pod_security(rendered: list[Doc]) -> None:
    labels = find(rendered, "Namespace", OPERATOR_NS)["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_server_dry_run_of_deploy_passes_restricted_without_warnings(
    cluster: ClusterLike, operator_namespace: str
) -> None:
    labels = json.loads(
        kubectl(cluster, "get", "namespace", operator_namespace, "-o", "json").stdout
    )["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    done = kubectl(cluster, "apply", "--dry-run=server", "-k", str(DEPLOY), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", f"warnings from the API server:\n{done.stderr}"
    assert "deployment.apps/appidentity-operator" in done.stdout


@pytest.fixture(scope="module")
def ceiling(installer: Installer, rendered: list[Doc], operator_namespace: str) -> None:
    """The operator's ServiceAccount with its ClusterRoles and bindings, installed for real."""
    installer.apply(find(rendered, "ServiceAccount", OPERATOR_SA))
    for doc in rendered:
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            installer.apply(doc)

    def aggregated() -> bool:
        done = kubectl(installer.cluster, "get", "clusterrole", GRANTABLE, "-o", "json")
        return bool(json.loads(done.stdout).get("rules"))

    eventually(aggregated, 30, "the aggregation controller to fill the grantable ceiling")


def test_operator_pod_is_admitted_by_restricted_enforcement(
    cluster: ClusterLike, operator_namespace: str, ceiling: None, rendered: list[Doc]
) -> None:
    """Pod Security only warns about a Deployment's template; it enforces on Pods."""
    template = find(rendered, "Deployment", "appidentity-operator")["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": "pss-probe", "namespace": operator_namespace},
        "spec": template["spec"],
    }
    done = kubectl(
        cluster, "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def as_operator(cluster: ClusterLike, *args: str) -> subprocess.CompletedProcess[str]:
    return kubectl(cluster, *args, "--as", OPERATOR_USER, "--dry-run=server", check=False)


def test_api_server_enforces_the_grantable_ceiling(
    cluster: ClusterLike, ceiling: None, namespace: str
) -> None:
    ns = ["-n", namespace]
    allowed = as_operator(
        cluster, "create", "role", "ok", "--verb=get,list,watch", "--resource=pods", *ns
    )
    assert allowed.returncode == 0, allowed.stderr
    for verb, resource in [("list", "secrets"), ("create", "pods/exec"), ("get", "nodes")]:
        refused = as_operator(
            cluster, "create", "role", "x", f"--verb={verb}", f"--resource={resource}", *ns
        )
        assert refused.returncode != 0 and NOT_HELD in refused.stderr, (verb, resource)

    view = as_operator(cluster, "create", "rolebinding", "v", "--clusterrole=view", "--user=u", *ns)
    assert view.returncode == 0, view.stderr
    edit = as_operator(cluster, "create", "rolebinding", "e", "--clusterrole=edit", "--user=u", *ns)
    assert edit.returncode != 0 and NOT_HELD in edit.stderr


def test_operator_cannot_list_or_watch_secrets(cluster: ClusterLike, ceiling: None) -> None:
    def can(*args: str) -> bool:
        done = kubectl(cluster, "auth", "can-i", *args, "--as", OPERATOR_USER, check=False)
        return done.stdout.strip() == "yes"

    assert can("get", "secrets", "-A")
    assert can("create", "serviceaccounts/token", "-A")
    assert not can("list", "secrets", "-A")
    assert not can("watch", "secrets", "-A")
    assert not can("escalate", "clusterroles")
    assert not can("impersonate", "serviceaccounts", "-A")
    assert not can("bind", "clusterroles/edit")
    assert can("bind", "clusterroles/view")


def test_admins_extend_the_ceiling_by_labelling_a_cluster_role(
    cluster: ClusterLike, ceiling: None, installer: Installer, namespace: str
) -> None:
    def hpa_role() -> subprocess.CompletedProcess[str]:
        return as_operator(
            cluster,
            "create",
            "role",
            "hpa",
            "--verb=get",
            "--resource=horizontalpodautoscalers.autoscaling",
            "-n",
            namespace,
        )

    assert NOT_HELD in hpa_role().stderr
    extension = {
        "apiVersion": f"{RBAC}/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": f"appidentity-test-extension-{namespace}"[:63],
            "labels": {AGGREGATE_LABEL: "true"},
        },
        "rules": [
            {
                "apiGroups": ["autoscaling"],
                "resources": ["horizontalpodautoscalers"],
                "verbs": ["get"],
            }
        ],
    }
    installer.apply(extension)
    try:
        eventually(lambda: hpa_role().returncode == 0, 30, "the ceiling to include the new role")
    finally:
        kubectl(cluster, "delete", *ref(extension), "--ignore-not-found")
        installer.created.remove(extension)


# --- the admission policy on the API server ----------------------------------------------------


PROBE = {"clusterRoles": ["cluster-admin"]}  # refused by every configuration used here


def live(cluster: ClusterLike, doc: Doc) -> Doc:
    """The object as the API server has it, ready to be put back with `kubectl replace`."""
    found: Doc = json.loads(kubectl(cluster, "get", *ref(doc), "-o", "json").stdout)
    found.pop("status", None)
    for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
        found["metadata"].pop(key, None)
    return found


@pytest.fixture(scope="module")
def admission_policy(installer: Installer, rendered: list[Doc]) -> Doc:
    """CRD, ValidatingAdmissionPolicy and binding installed for real (an admission policy that
    is already there is kept); returns the policy as installed."""
    crd = find(rendered, "CustomResourceDefinition", "appidentities.appidentity.dev")
    installer.apply(crd)
    kubectl(
        installer.cluster, "wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}"
    )
    vap = find(rendered, "ValidatingAdmissionPolicy", VAP_NAME)
    installer.apply(vap, keep_existing=True)
    installer.apply(find(rendered, "ValidatingAdmissionPolicyBinding", VAP_NAME), True)
    probe = identity("default", PROBE)
    eventually(
        lambda: admission(installer.cluster, probe) is not None,
        30,
        "the admission policy to take effect",
    )
    installed = live(installer.cluster, vap)
    if policy_of_admission(installed) != policy_of_admission(vap):
        pytest.skip("the cluster's admission policy is customised; these cases assume deploy/'s")
    return installed


def test_finalizer_policy_adds_the_finalizer_as_an_identity_is_created(
    cluster: ClusterLike, admission_policy: Doc, rendered: list[Doc], namespace: str
) -> None:
    """So the operator need not patch every new identity to add it; finalizers the creator
    set are kept."""
    kinds = ("MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding")
    docs = [find(rendered, kind, MAP_NAME) for kind in kinds]
    for doc in docs:
        kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(doc))
    probe = identity(namespace, {"rules": [PODS]})
    probe["metadata"]["finalizers"] = ["example.com/keep"]

    def finalizers() -> list[str]:
        # 503 until the API server has the new CRD's schema, which an apply configuration needs.
        done = kubectl(
            cluster,
            "create",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            "-",
            stdin=json.dumps(probe),
            check=False,
        )
        if done.returncode != 0:
            assert "ServiceUnavailable" in done.stderr, done.stderr
            return []
        return list(json.loads(done.stdout)["metadata"].get("finalizers", []))

    try:
        eventually(lambda: FINALIZER in finalizers(), 30, "the finalizer policy to take effect")
        assert finalizers() == ["example.com/keep", FINALIZER]
    finally:
        for doc in reversed(docs):
            kubectl(cluster, "delete", *ref(doc), "--ignore-not-found")


@dataclass(frozen=True)
class Case:
    id: str
    spec: Doc
    expect: str | None  # a message the policy must give; None: accepted


PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}


def rule(groups: list[str], resources: list[str], verbs: list[str], **extra: Any) -> Doc:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs, **extra}


CASES = [
    # accepted
    Case("minimal", {"rules": [PODS]}, None),
    Case("no-grant", {}, None),  # authenticates elsewhere, e.g. with token.audiences
    Case("empty-grants", {"rules": [], "clusterRoles": [], "clusterRules": []}, None),
    Case("external-audience", {"token": {"audiences": ["vault"]}}, None),
    Case("view", {"clusterRoles": ["view"]}, None),
    Case(
        "secret-get-by-name",
        {"rules": [rule([""], ["secrets"], ["get"], resourceNames=["db-password"])]},
        None,
    ),
    Case("consenting-namespace", {"namespaces": [{"name": "other", "rules": [PODS]}]}, None),
    Case("legacy-token", {"rules": [PODS], "token": {"type": "Legacy"}}, None),
    Case("token-at-cap", {"rules": [PODS], "token": {"expirationSeconds": 86400}}, None),
    Case("secrets-in-other-group", {"rules": [rule(["example.com"], ["secrets"], ["list"])]}, None),
    # wildcards
    Case(
        "wildcard-verb",
        {"rules": [rule([""], ["pods"], ["*"])]},
        "spec.rules[0].verbs: wildcards are not allowed (policy: allowWildcards)",
    ),
    Case(
        "wildcard-group",
        {"rules": [PODS, rule(["*"], ["pods"], ["get"])]},
        "spec.rules[1].apiGroups: wildcards are not allowed (policy: allowWildcards)",
    ),
    Case(
        "wildcard-subresource",
        {"rules": [rule([""], ["pods/*"], ["get"])]},
        "spec.rules[0].resources: wildcards are not allowed (policy: allowWildcards)",
    ),
    Case(
        "wildcard-in-namespace-grant",
        {"namespaces": [{"name": "other", "rules": [rule([""], ["*"], ["get"])]}]},
        "spec.namespaces[0].rules[0].resources: wildcards are not allowed (policy: allowWildcards)",
    ),
    Case(
        "wildcard-url",
        {"clusterRules": [{"nonResourceURLs": ["/metrics*"], "verbs": ["get"]}]},
        "spec.clusterRules[0].nonResourceURLs: wildcards are not allowed (policy: allowWildcards)",
    ),
    # forbidden verbs and resources
    Case(
        "escalate",
        {"rules": [rule([RBAC], ["roles"], ["escalate"])]},
        "spec.rules[0].verbs: verb 'escalate' is forbidden (policy: forbiddenVerbs)",
    ),
    Case(
        "impersonate",
        {"rules": [rule([""], ["serviceaccounts"], ["impersonate"])]},
        "spec.rules[0].verbs: verb 'impersonate' is forbidden (policy: forbiddenVerbs)",
    ),
    Case(
        "bind-in-namespace-grant",
        {"namespaces": [{"name": "other", "rules": [rule([RBAC], ["clusterroles"], ["bind"])]}]},
        "spec.namespaces[0].rules[0].verbs: verb 'bind' is forbidden (policy: forbiddenVerbs)",
    ),
    # verbs Kubernetes does not know grant nothing (issue 24); special ones stay valid
    Case(
        "unknown-verb",
        {"rules": [rule([""], ["pods"], ["get", "gett"])]},
        "spec.rules[0].verbs[1]: 'gett' is neither a Kubernetes verb (get, list, watch, create,"
        " update, patch, delete, deletecollection, use, bind, escalate, impersonate, approve,"
        " sign, attest) nor one of extraVerbs (policy: extraVerbs)",
    ),
    Case(
        "unknown-verb-in-cluster-rule",
        {"clusterRules": [rule([""], ["nodes"], ["lst"])]},
        "spec.clusterRules[0].verbs[0]: 'lst' is neither a Kubernetes verb",
    ),
    Case(
        "special-verbs",
        {"rules": [rule(["certificates.k8s.io"], ["signers"], ["approve", "sign", "use"])]},
        None,
    ),
    Case(
        "pods-exec",
        {"rules": [rule([""], ["pods", "pods/exec"], ["create"])]},
        "spec.rules[0].resources: resource 'pods/exec' is forbidden (policy: forbiddenResources)",
    ),
    Case(
        "token-minting",
        {"rules": [rule([""], ["serviceaccounts/token"], ["create"])]},
        "resource 'serviceaccounts/token' is forbidden (policy: forbiddenResources)",
    ),
    Case(
        "webhooks",
        {
            "rules": [
                rule(["admissionregistration.k8s.io"], ["mutatingwebhookconfigurations"], ["get"])
            ]
        },
        "resource 'mutatingwebhookconfigurations' is forbidden (policy: forbiddenResources)",
    ),
    # secrets
    Case(
        "secrets-list",
        {"rules": [rule([""], ["secrets"], ["list"])]},
        "spec.rules[0].verbs: listing secrets is forbidden (policy: secrets.allowList)",
    ),
    Case(
        "secrets-watch",
        {"rules": [rule([""], ["secrets"], ["watch"], resourceNames=["a"])]},
        "spec.rules[0].verbs: watching secrets is forbidden (policy: secrets.allowWatch)",
    ),
    Case(
        "secrets-get-without-names",
        {"namespaces": [{"name": "other", "rules": [rule([""], ["secrets"], ["get"])]}]},
        "spec.namespaces[0].rules[0].resourceNames: reading secrets requires resourceNames "
        "(policy: secrets.getRequiresResourceNames)",
    ),
    # ClusterRoles, namespaces, cluster rules, tokens
    Case(
        "cluster-role-not-allowed",
        {"clusterRoles": ["view", "admin"]},
        "spec.clusterRoles[1]: ClusterRole 'admin' is not in the allowlist ['view'] "
        "(policy: allowedClusterRoles)",
    ),
    Case(
        "namespace-cluster-role-not-allowed",
        {"namespaces": [{"name": "other", "clusterRoles": ["edit"]}]},
        "spec.namespaces[0].clusterRoles[0]: ClusterRole 'edit' is not in the allowlist",
    ),
    Case(
        "own-namespace-as-grant",
        {"rules": [PODS], "namespaces": [{"name": OWN_NS, "rules": [PODS]}]},
        "spec.namespaces[0].name: is the identity's own namespace (policy: namespaces)",
    ),
    Case(
        "cluster-rules-not-enabled",
        {"clusterRules": [rule([""], ["nodes"], ["get"])]},
        f"spec.clusterRules: cluster-wide rules are not enabled for namespace '{OWN_NS}' "
        "(policy: clusterRules.allowedNamespaces)",
    ),
    Case(
        "cluster-rules-forbidden-resource",
        {"clusterRules": [rule([""], ["persistentvolumes"], ["get"])]},
        "spec.clusterRules[0].resources: resource 'persistentvolumes' is forbidden",
    ),
    Case(
        "token-over-cap",
        {"rules": [PODS], "token": {"expirationSeconds": 90000}},
        "spec.token.expirationSeconds: 90000s exceeds the cap of 86400s "
        "(policy: token.maxExpirationSeconds)",
    ),
    Case(
        "everything-at-once",
        {
            "rules": [rule(["*"], ["secrets", "pods/attach"], ["*", "list", "escalate"])],
            "clusterRoles": ["cluster-admin"],
            "token": {"expirationSeconds": 31536000},
        },
        "spec.rules[0].resources: resource 'pods/attach' is forbidden (policy: forbiddenResources)",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_admission_policy_refuses_what_the_operator_refuses(
    cluster: ClusterLike, admission_policy: Doc, namespace: str, case: Case
) -> None:
    doc = identity(namespace, case.spec)
    ours = operator_messages(doc, Policy())
    got = admission(cluster, doc)
    if case.expect is None:
        assert got is None, f"refused: {got}"
        assert ours == []
        return
    expect = case.expect.replace(OWN_NS, namespace)
    assert got is not None, "accepted"
    assert any(expect in message for message in got), f"{expect!r} not in {got}"
    assert sorted(got) == sorted(ours), "the admission policy and the operator disagree"


def overlay(tmp_path: Path, policy: Doc) -> list[Doc]:
    """deploy/ with another policy, the way admins are told to change it: one policy file,
    turned by `appidentity-operator policy-manifests` into a kustomize Component that an
    overlay of deploy/ lists. Returns the overlay rendered."""
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    component = tmp_path / "policy"
    component.mkdir()
    (component / "kustomization.yaml").write_text(
        component_yaml(load_policy(policy_file), source="policy.yaml")
    )
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, tmp_path)],
        "components": ["policy"],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return [d for d in yaml.safe_load_all(render(tmp_path)) if d]


def configmap_policy(docs: list[Doc], tmp_path: Path) -> Policy:
    """The policy the operator reads from the rendered ConfigMap, loaded as it loads it."""
    path = tmp_path / "configmap-policy.yaml"
    path.write_text(find(docs, "ConfigMap", "appidentity-policy")["data"]["policy.yaml"])
    return load_policy(path)


NON_DEFAULT_POLICY = {
    "allowedClusterRoles": ["view", "edit"],
    "clusterRules": {"allowedNamespaces": ["team-infra"]},
    "forbiddenVerbs": ["escalate", "bind", "impersonate", "deletecollection"],
    "extraVerbs": ["frobnicate"],
    "secrets": {"allowList": True},
    "token": {"maxExpirationSeconds": 7200, "allowLegacy": False},
}


def test_policy_component_puts_one_policy_file_everywhere(
    rendered: list[Doc], tmp_path: Path
) -> None:
    """Operator, admission policy and the operator's `bind` right all get the one file's policy,
    and nothing else of deploy/ changes."""
    docs = overlay(tmp_path, NON_DEFAULT_POLICY)
    written = load_policy(tmp_path / "policy.yaml")
    assert written != Policy()
    assert configmap_policy(docs, tmp_path) == written
    assert policy_of_admission(find(docs, "ValidatingAdmissionPolicy", VAP_NAME)) == written
    bind = find(docs, "ClusterRole", BIND_ROLE)
    assert flat(bind["rules"]) == {(RBAC, "clusterroles", "bind", r) for r in ("view", "edit")}
    changed = {("ConfigMap", "appidentity-policy"), ("ValidatingAdmissionPolicy", VAP_NAME)}
    changed.add(("ClusterRole", BIND_ROLE))

    def others(found: list[Doc]) -> list[Doc]:
        return [d for d in found if (d["kind"], d["metadata"]["name"]) not in changed]

    assert others(docs) == others(rendered), "the policy component changed more than the policy"


def test_policy_component_without_allowed_roles_grants_no_bind(tmp_path: Path) -> None:
    """An empty allowlist must not become `bind` with empty resourceNames (every ClusterRole)."""
    docs = overlay(tmp_path, {"allowedClusterRoles": []})
    assert find(docs, "ClusterRole", BIND_ROLE)["rules"] == []
    assert (
        policy_of_admission(find(docs, "ValidatingAdmissionPolicy", VAP_NAME)).allowed_cluster_roles
        == []
    )


def test_changed_parameters_change_the_admission_policy_like_the_operator_policy(
    cluster: ClusterLike, admission_policy: Doc, namespace: str, tmp_path: Path
) -> None:
    docs = overlay(
        tmp_path,
        {
            "allowedClusterRoles": ["view", "edit"],
            "clusterRules": {"allowedNamespaces": [namespace]},
            "token": {"maxExpirationSeconds": 7200, "allowLegacy": False},
            "secrets": {"allowList": True},
            "extraVerbs": ["frobnicate"],  # a custom verb of an aggregated API
        },
    )
    custom = find(docs, "ValidatingAdmissionPolicy", VAP_NAME)
    policy = configmap_policy(docs, tmp_path)
    assert policy_of_admission(custom) == policy
    assert policy.allowed_cluster_roles == ["view", "edit"]
    assert policy.token.allow_legacy is False

    edit_user = identity(namespace, {"clusterRoles": ["edit"]}, name="edit-user")
    probe = identity(namespace, {"clusterRoles": ["edit"]})  # never created: always a CREATE
    try:
        kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(custom))
        eventually(
            lambda: admission(cluster, probe) is None, 30, "the changed policy to take effect"
        )
        for spec in (
            {"clusterRoles": ["edit", "admin"]},
            {"clusterRules": [rule([""], ["nodes"], ["get", "list"])]},
            {"rules": [rule([""], ["secrets"], ["list", "watch"])]},
            {"rules": [PODS], "token": {"type": "Legacy"}},
            {"rules": [PODS], "token": {"expirationSeconds": 7201}},
            {"rules": [PODS], "token": {"expirationSeconds": 7200}},
            {"rules": [rule([""], ["pods"], ["frobnicate", "frobnicat"])]},
        ):
            doc = identity(namespace, spec)
            got = admission(cluster, doc) or []
            assert sorted(got) == sorted(operator_messages(doc, policy)), spec
        # created while edit was allowed: stays editable as long as its spec is not rewritten
        kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(edit_user))
    finally:
        kubectl(cluster, "replace", "-f", "-", stdin=json.dumps(admission_policy))
    eventually(lambda: admission(cluster, probe) is not None, 30, "the default policy to return")
    where = ["appidentity/edit-user", "-n", namespace]
    annotated = kubectl(cluster, "annotate", *where, "example.com/note=kept", check=False)
    assert annotated.returncode == 0, "a metadata-only update was judged: " + annotated.stderr
    changed = kubectl(
        cluster,
        "patch",
        *where,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"clusterRoles": ["edit", "view"]}}),
        check=False,
    )
    assert "ClusterRole 'edit' is not in the allowlist ['view']" in changed.stderr
    kubectl(cluster, "delete", *where, "--wait=false")


# --- the operator with nothing but deploy/'s RBAC ----------------------------------------------


def conditions(cluster: ClusterLike, namespace: str, name: str) -> dict[str, str]:
    done = kubectl(cluster, "get", "appidentity", name, "-n", namespace, "-o", "json", check=False)
    if done.returncode != 0:
        return {}
    found = json.loads(done.stdout).get("status", {}).get("conditions", [])
    return {c["type"]: c["status"] for c in found}


def test_operator_works_with_only_the_rbac_in_deploy(
    cluster: ClusterLike,
    ceiling: None,
    admission_policy: Doc,
    rendered: list[Doc],
    namespace: str,
    tmp_path: Path,
) -> None:
    """Runs the operator as its ServiceAccount (a TokenRequest token, no admin credentials) and
    takes one identity through provisioning, verification and deletion."""
    token = kubectl(
        cluster, "create", "token", OPERATOR_SA, "-n", OPERATOR_NS, "--duration=1h"
    ).stdout.strip()
    kubeconfig = token_kubeconfig(
        cluster.server, cluster.ca_file, token, OPERATOR_SA, tmp_path / "operator.kubeconfig"
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(find(rendered, "ConfigMap", "appidentity-policy")["data"]["policy.yaml"])
    log_path = tmp_path / "operator.log"
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env |= {"POD_NAMESPACE": OPERATOR_NS, "POD_ID": f"test-deploy-{namespace}"}
    command = [
        str(REPO / ".venv" / "bin" / "appidentity-operator"),
        *["run", "--all-namespaces", "--policy", str(policy), "--kubeconfig", str(kubeconfig)],
        *["--metrics-port", "0", "--liveness-port", "0"],
    ]
    if not Path(command[0]).exists():
        pytest.skip("no .venv/bin/appidentity-operator: run `make venv`")
    name = "deploy-rbac"
    with log_path.open("w") as log:
        operator = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        doc = identity(
            namespace, {"rules": [PODS], "clusterRoles": ["view"], "token": {"kubeconfig": False}}
        )
        doc["metadata"]["name"] = name
        kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(doc))

        def verified() -> bool:
            assert operator.poll() is None, "the operator exited:\n" + log_path.read_text()[-3000:]
            found = conditions(cluster, namespace, name)
            return found.get("Ready") == "True" and found.get("AccessVerified") == "True"

        try:
            eventually(verified, 90, "the identity to be provisioned and verified")
        except pytest.fail.Exception:
            print(log_path.read_text()[-5000:])
            raise
        sa = ["serviceaccount", name, "-n", namespace]
        assert kubectl(cluster, "get", *sa, check=False).returncode == 0
        kubectl(cluster, "delete", "appidentity", name, "-n", namespace, "--timeout=60s")
        assert "NotFound" in kubectl(cluster, "get", *sa, check=False).stderr
        forbidden = [line for line in log_path.read_text().splitlines() if " 403 " in line]
        assert not forbidden, "the operator was refused:\n" + "\n".join(forbidden[:5])
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()


def test_a_second_apply_of_deploy_changes_nothing(
    cluster: ClusterLike, installer: Installer, rendered: list[Doc], operator_namespace: str
) -> None:
    """`kubectl apply -k deploy/` twice, nothing changed in between: the second run reports
    every object `unchanged` (issue 24: the four admission policies said `configured` every
    time, their resourceRules lacking the `scope` the API server defaults, so kubectl replaced
    the whole list). What deploy/ adds to the cluster is removed again with the module."""
    deployment = find(rendered, "Deployment", OPERATOR_SA)
    if installer.exists(deployment) and deployment not in installer.created:
        pytest.skip("deploy/ is installed here already (perhaps with an overlay): not re-applied")
    for doc in rendered:
        if doc not in installer.created and not installer.exists(doc):
            installer.created.append(doc)
    first = kubectl(cluster, "apply", "-k", str(DEPLOY))
    assert first.stdout.count("\n") == len(rendered), first.stdout
    second = kubectl(cluster, "apply", "-k", str(DEPLOY))
    lines = second.stdout.splitlines()
    assert len(lines) == len(rendered), second.stdout
    changed = [line for line in lines if not line.endswith(" unchanged")]
    assert changed == [], "a second apply changed:\n" + "\n".join(changed)
