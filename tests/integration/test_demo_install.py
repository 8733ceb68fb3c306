"""`make demo`'s install path: `hack/install.sh auto PORT --deploy`, as hack/demo.sh runs it,
installs what deploy/ installs but for what runs in the cluster, so that a grant the operator
policy forbids is refused at admission, and the demo's operator gets deploy/'s policy file.

Issue 24: the demo installed only the CRD and the requester recording, so an AppIdentity asking
for `impersonate` was stored and refused only later, in status. What this module adds to the
test cluster is removed again at its end, and nothing is re-applied over an installation that
was already there (it may carry another policy).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from appidentity.policy import Policy, load_policy
from requester import RequesterWebhook
from support import REPO, Cluster, wait_until

INSTALL_SH = REPO / "hack" / "install.sh"
DEMO_SH = REPO / "hack" / "demo.sh"
OPERATOR_NS = "appidentity-system"
# What runs in a cluster, which the demo runs as local processes instead.
IN_CLUSTER = {"Deployment", "Service", "PodDisruptionBudget", "MutatingWebhookConfiguration"}
IMPERSONATE = "spec.rules[0].verbs: verb 'impersonate' is forbidden (policy: forbiddenVerbs)"

Doc = dict[str, Any]


def ref(doc: Doc) -> list[str]:
    group, _, _ = doc["apiVersion"].rpartition("/")
    args = [doc["kind"].lower() + (f".{group}" if group else "") + "/" + doc["metadata"]["name"]]
    if doc["metadata"].get("namespace"):
        args += ["-n", doc["metadata"]["namespace"]]
    return args


def exists(cluster: Cluster, doc: Doc) -> bool:
    return cluster.run_kubectl("get", *ref(doc), "-o", "name", check=False).returncode == 0


def forbidden_identity(namespace: str) -> Doc:
    return {
        "apiVersion": "appidentity.dev/v1alpha1",
        "kind": "AppIdentity",
        "metadata": {"name": "impersonator", "namespace": namespace},
        "spec": {"rules": [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]}]},
    }


@pytest.fixture(scope="module")
def deploy_docs(cluster: Cluster, requester_recording: str) -> list[Doc]:
    """deploy/ (deploy/webhook/ where the requester is a webhook), as kubectl renders it."""
    source = REPO / ("deploy/webhook" if requester_recording == "webhook" else "deploy")
    rendered = cluster.run_kubectl("kustomize", str(source)).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


@pytest.fixture(scope="module")
def demo_install(
    cluster: Cluster,
    requester_recording: str,
    crd_installed: RequesterWebhook | None,
    deploy_docs: list[Doc],
) -> Iterator[str]:
    """Runs the demo's install; yields its last line; removes at the end what it created."""
    for name in ("ConfigMap", "ValidatingAdmissionPolicy"):
        doc = next(d for d in deploy_docs if d["kind"] == name)
        if exists(cluster, doc):
            pytest.skip(f"deploy/'s {name} is installed here already, perhaps with another policy")
    created = [d for d in deploy_docs if not exists(cluster, d)]
    port = crd_installed.port if crd_installed is not None else 9443
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env |= {"KUBECONFIG": str(cluster.kubeconfig), "KUBECTL": cluster.kubectl}
    done = subprocess.run(
        ["bash", str(INSTALL_SH), requester_recording, str(port), "--deploy"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    try:
        assert done.returncode == 0, done.stderr
        yield done.stdout.strip().splitlines()[-1]
    finally:
        for doc in reversed(created):
            cluster.run_kubectl("delete", *ref(doc), "--ignore-not-found", "--wait=false")
        probe = json.dumps(forbidden_identity(OPERATOR_NS))

        def admitted() -> bool:
            dry = ["apply", "--dry-run=server", "-f", "-"]
            return cluster.run_kubectl(*dry, stdin=probe, check=False).returncode == 0

        # the tests after this module run under the session's own policy, not deploy/'s
        wait_until(admitted, 30, "deploy/'s admission policy to be gone again")


def test_the_demo_runs_this_install_and_its_operator_with_the_configmap_policy() -> None:
    demo = DEMO_SH.read_text()
    assert 'hack/install.sh auto "$webhook_port" --deploy' in demo
    assert "get configmap appidentity-policy -n appidentity-system" in demo
    assert '--policy "$state/policy.yaml"' in demo


def test_everything_but_what_runs_in_the_cluster_is_installed(
    cluster: Cluster, demo_install: str, deploy_docs: list[Doc], requester_recording: str
) -> None:
    assert demo_install == f"requester: {requester_recording}"
    missing = [
        " ".join(ref(d))
        for d in deploy_docs
        if d["kind"] not in IN_CLUSTER and not exists(cluster, d)
    ]
    assert missing == []
    operator = next(d for d in deploy_docs if d["kind"] == "Deployment")
    assert not exists(cluster, operator), "the demo runs the operator as a local process"


def test_the_demo_operator_policy_is_deploy_s_policy_file(
    cluster: Cluster, demo_install: str, tmp_path: Path
) -> None:
    """What hack/demo.sh passes to `run --policy`: the ConfigMap's file, deploy/'s defaults."""
    text = cluster.run_kubectl(
        "get",
        "configmap",
        "appidentity-policy",
        "-n",
        OPERATOR_NS,
        "-o",
        "jsonpath={.data.policy\\.yaml}",
    ).stdout
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    assert load_policy(path) == Policy()


def test_a_forbidden_verb_applied_by_a_user_is_refused_at_admission(
    cluster: Cluster, demo_install: str, namespace: str
) -> None:
    doc = json.dumps(forbidden_identity(namespace))

    def refused() -> bool:
        done = cluster.run_kubectl("apply", "-f", "-", stdin=doc, check=False)
        if done.returncode == 0:  # the policy not yet in effect: take it away, ask again
            cluster.run_kubectl("delete", "appidentity", "impersonator", "-n", namespace)
            return False
        assert "ValidatingAdmissionPolicy 'appidentity-policy'" in done.stderr, done.stderr
        assert IMPERSONATE in done.stderr, done.stderr
        return True

    wait_until(refused, 30, "deploy/'s admission policy to refuse `impersonate`")
    gone = cluster.run_kubectl("get", "appidentity", "impersonator", "-n", namespace, check=False)
    assert "NotFound" in gone.stderr, "a refused identity must not be stored"


def test_the_demo_s_last_line_puts_the_readme_commands_on_path(cluster: Cluster) -> None:
    """The `export PATH=... KUBECONFIG=...` line that `make demo` prints last, run in a shell with
    a bare PATH: `appidentity-operator`, `kubectl appid` (.venv/bin/kubectl-appid) and a
    `kubectl` of the API server's own release are then found as the README writes them."""
    lines = DEMO_SH.read_text().splitlines()
    printf = [line for line in lines if "export PATH=" in line and not line.startswith("#")]
    assert len(printf) == 1 and printf[-1].startswith("printf "), printf
    assert DEMO_SH.read_text().rstrip().endswith(printf[-1])  # the very last thing it prints
    env = {"HOME": os.environ.get("HOME", "/tmp"), "PATH": "/usr/bin:/bin"}
    made = subprocess.run(
        ["bash", "-c", printf[-1]],
        env=env | {"repo": str(REPO), "KUBECONFIG": str(cluster.kubeconfig)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert made.count("\n") == 1 and made.startswith(f'export PATH="{REPO}/.venv/bin:{REPO}/bin:')
    script = (
        made
        + "command -v appidentity-operator kubectl kubectl-appid\n"
        + "kubectl appid --help | head -n 1\n"
        + "kubectl version -o json\n"
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    found = done.stdout.splitlines()
    assert found[:3] == [
        f"{REPO}/.venv/bin/appidentity-operator",
        f"{REPO}/bin/kubectl",
        f"{REPO}/.venv/bin/kubectl-appid",
    ]
    assert found[3].startswith("usage: kubectl appid")
    versions = json.loads("\n".join(found[4:]))
    client, server = versions["clientVersion"], versions["serverVersion"]
    assert (client["major"], client["minor"]) == (server["major"], server["minor"])
