"""The operator's credentials as users run it: its ServiceAccount from deploy/, with deploy/'s
RBAC (its own rights and the grantable ceiling), instead of the control plane's admin.

The difference is the API server's, not the operator's: an admin client certificate
(system:masters) skips RBAC and the escalation checks on Role and RoleBinding writes, but costs
an x509 chain verification on every request, while a ServiceAccount's token is authenticated
from a cache and is authorized by RBAC, as in a real installation. The plain client (b) is given
the same credentials, so that the two do the same requests as the same user.
"""

from __future__ import annotations

import time
from pathlib import Path

from apiclient import Api, ApiError, Credentials
from procs import REPO, kubectl

OPERATOR_NS = "appidentity-system"
OPERATOR_SA = "appidentity-operator"
GRANTABLE = "appidentity-operator-grantable"
RBAC_FILES = ("serviceaccount.yaml", "rbac.yaml", "grantable.yaml")
TOKEN_SECONDS = 12 * 3600  # longer than any run; the operator does not re-read it
TOKEN_FILE = "operator-sa.token"  # in the run's work directory, removed when the run ends


def as_installed(
    kubeconfig: str, api: Api, creds: Credentials, work: Path
) -> tuple[Path, Credentials]:
    """deploy/'s ServiceAccount and RBAC applied (the namespace exists), the ceiling filled in,
    and the operator's kubeconfig and credentials (`operator_credentials`)."""
    kubectl(kubeconfig, "apply", *(a for f in RBAC_FILES for a in ("-f", str(REPO / "deploy" / f))))
    wait_for_ceiling(api)
    return operator_credentials(api, creds, work)


def wait_for_ceiling(api: Api, timeout: float = 60.0) -> None:
    """The grantable ceiling's rules are filled in by the aggregation controller; until then
    the API server refuses every Role the operator writes."""
    path = f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{GRANTABLE}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if api.json("GET", path).get("rules"):
                return
        except ApiError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"ClusterRole {GRANTABLE} got no rules within {timeout:.0f}s")


def operator_credentials(api: Api, creds: Credentials, work: Path) -> tuple[Path, Credentials]:
    """A kubeconfig for the operator naming a token of its ServiceAccount (in a file of mode
    0600 in the run's private work directory, never printed), and the same as Credentials."""
    issued = api.json(
        "POST",
        f"/api/v1/namespaces/{OPERATOR_NS}/serviceaccounts/{OPERATOR_SA}/token",
        body={"spec": {"expirationSeconds": TOKEN_SECONDS}},
    )
    token = str(issued["status"]["token"])
    token_file = work / TOKEN_FILE
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    kubeconfig = work / "operator-sa.kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: c\n  cluster:\n    server: {creds.server}\n"
        f"    certificate-authority: {creds.ca_file}\n"
        f"users:\n- name: u\n  user:\n    tokenFile: {token_file}\n"
        "contexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n"
    )
    kubeconfig.chmod(0o600)
    return kubeconfig, Credentials(server=creds.server, ca_file=creds.ca_file, token=token)
