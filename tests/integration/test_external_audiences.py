"""Identities for services outside the cluster: a token for another audience (e.g. Vault) is
verified offline and never shown to the API server, whose rights are proven with a probe token;
an identity with no API grant at all; and `verify-token`, the external service's side."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from appidentity.kube import Kube
from kubernetes import client
from support import (
    READ_CONFIGMAPS,
    REPO,
    TEST_STATE_DIR,
    Cluster,
    InClusterOperator,
    Operator,
    Token,
    condition,
    create,
    identity,
    merge_patch,
    secret_token,
    wait_ready,
    wait_reason,
    whoami_status,
)

pytestmark = pytest.mark.usefixtures("operator")
JWT_SHAPE = re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}")


def verify_token(
    cluster: Cluster, token: Token | str, *args: str
) -> subprocess.CompletedProcess[str]:
    """`appidentity-operator verify-token` with the token on stdin; its output never holds it."""
    raw = token if isinstance(token, str) else token.value
    done = subprocess.run(
        [sys.executable, "-m", "appidentity", "verify-token", *args],
        input=raw,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert raw.rsplit(".", 1)[-1] not in done.stdout + done.stderr, "the token was printed"
    return done


def issuer_of(kube: Kube) -> str:
    return kube.openid()[0]


def claims_of(token: Token) -> dict[str, Any]:
    found: dict[str, Any] = jwt.decode(token.value, options={"verify_signature": False})
    return found


def test_token_for_an_external_audience_is_verified_offline_and_access_proven_with_a_probe(
    kube: Kube,
    cluster: Cluster,
    namespace: str,
    token_api: Callable[[Token], Any],
    operator: Operator | InClusterOperator,
) -> None:
    create(
        kube,
        identity(
            "vault-client", namespace, rules=[READ_CONFIGMAPS], token={"audiences": ["vault"]}
        ),
    )
    obj = wait_ready(kube, namespace, "vault-client")
    status = obj["status"]
    issuer = issuer_of(kube)
    assert status["token"]["audiences"] == ["vault"]
    assert status["token"]["issuer"] == issuer and status["token"]["keyID"]
    assert condition(obj, "AccessVerified")["status"] == "True"
    ver = status["verification"]
    assert ver["authenticatedAs"] == f"system:serviceaccount:{namespace}:vault-client"
    # get and list configmaps, and one real list of them; the boundary as for any identity
    assert ver["allowedChecks"] == 3 and ver["deniedChecks"] >= 12
    assert ver["failed"] == [] and ver["excess"] == []

    token = secret_token(kube, namespace, "vault-client-token")
    assert token is not None
    claims = claims_of(token)
    assert claims["aud"] == ["vault"]  # the Secret still holds the token for Vault, no probe
    assert claims["kubernetes.io"]["secret"]["name"] == "vault-client-token"
    assert whoami_status(token_api, token) == 401  # the API server refuses it
    # kubeconfig: true (the default) writes none for a token the API server refuses, and says so.
    assert obj["spec"]["token"]["kubeconfig"] is True
    keys = set((kube.get("Secret", namespace, "vault-client-token") or {})["data"])
    assert "kubeconfig" not in keys and "token" in keys  # keys only: a failure prints no token
    issued = condition(obj, "TokenIssued")["message"]
    assert "no kubeconfig written: the token's audiences exclude the API server's" in issued

    accepted = verify_token(
        cluster, token, "--audience", "vault", "--kubeconfig", str(cluster.kubeconfig)
    )
    assert accepted.returncode == 0, accepted.stderr
    printed = yaml.safe_load(accepted.stdout)
    assert printed["claims"]["sub"] == f"system:serviceaccount:{namespace}:vault-client"
    assert printed["claims"]["iss"] == issuer and printed["keyID"] == status["token"]["keyID"]

    # The identity's token was never presented, and no probe token was kept or logged.
    assert not JWT_SHAPE.search(operator.log()), "a JWT appeared in the operator's log"
    assert not JWT_SHAPE.search(json.dumps(kube.list_objects("AppIdentity", namespace)))
    secrets = kube.list_objects("Secret", namespace)
    assert [s["metadata"]["name"] for s in secrets] == ["vault-client-token"]


def test_a_token_whose_signature_fails_is_token_signature_invalid_and_stalled(
    kube: Kube, cluster: Cluster, namespace: str
) -> None:
    """A token for Vault is verified offline against the cluster's real keys: one whose
    signature was tampered with in its Secret fails for good (Stalled), unlike keys that could
    not be read (test_keys); `rotate` is the remedy."""
    name = "tampered"
    create(kube, identity(name, namespace, rules=[READ_CONFIGMAPS], token={"audiences": ["vault"]}))
    wait_ready(kube, namespace, name)
    real = secret_token(kube, namespace, f"{name}-token")
    assert real is not None
    head, claims, signature = real.value.split(".")
    flipped = "B" if signature[10] == "A" else "A"  # a middle character: still base64url
    forged = ".".join([head, claims, signature[:10] + flipped + signature[11:]])
    encoded = base64.b64encode(forged.encode()).decode()
    merge_patch(kube, "Secret", namespace, f"{name}-token", {"data": {"token": encoded}})
    # Secrets are not watched: a new generation makes the next reconcile read it at once.
    merge_patch(
        kube, "AppIdentity", namespace, name, {"spec": {"verification": {"intervalSeconds": 900}}}
    )

    obj = wait_reason(kube, namespace, name, "TokenSignatureInvalid", type_="AccessVerified")
    assert "bad signature" in condition(obj, "AccessVerified")["message"]
    assert condition(obj, "Stalled")["reason"] == "TokenSignatureInvalid"

    rotated = subprocess.run(
        [
            sys.executable,
            "-m",
            "appidentity",
            "rotate",
            name,
            "-n",
            namespace,
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert condition(wait_ready(kube, namespace, name), "AccessVerified")["status"] == "True"


def test_token_for_vault_and_the_api_server_is_checked_with_itself(
    kube: Kube, namespace: str, token_api: Callable[[Token], Any]
) -> None:
    audiences = ["vault", issuer_of(kube)]
    create(
        kube, identity("both", namespace, rules=[READ_CONFIGMAPS], token={"audiences": audiences})
    )
    obj = wait_ready(kube, namespace, "both")
    assert sorted(obj["status"]["token"]["audiences"]) == sorted(audiences)
    assert obj["status"]["verification"]["allowedChecks"] == 3
    token = secret_token(kube, namespace, "both-token")
    assert token is not None and whoami_status(token_api, token) == 200
    # One of its audiences is the API server's: its kubeconfig works.
    assert "kubeconfig" in set((kube.get("Secret", namespace, "both-token") or {})["data"])
    assert "no kubeconfig" not in condition(obj, "TokenIssued")["message"]


def test_identity_without_any_grant_is_ready_and_can_do_nothing_beyond_the_baseline(
    kube: Kube, namespace: str, token_api: Callable[[Token], Any]
) -> None:
    create(kube, identity("nothing", namespace))
    obj = wait_ready(kube, namespace, "nothing")
    ver = obj["status"]["verification"]
    assert ver["allowedChecks"] == 0
    assert ver["deniedChecks"] >= 12  # secrets, pods, exec, bindings, escalate, bind, ...
    assert ver["failed"] == [] and ver["excess"] == []  # effective rules: the baseline only
    roles = [r["metadata"]["name"] for r in kube.list_objects("Role", namespace)]
    assert roles == ["nothing-token:sentinel"]  # no rules, never bound (test_token_signal)
    assert kube.list_objects("RoleBinding", namespace) == []

    token = secret_token(kube, namespace, "nothing-token")
    assert token is not None and whoami_status(token_api, token) == 200  # it authenticates
    core = client.CoreV1Api(token_api(token))
    with pytest.raises(client.exceptions.ApiException) as denied:
        core.list_namespaced_config_map(namespace, limit=1)
    assert denied.value.status == 403


# --- verify-token against the cluster's real keys ----------------------------------------------


@pytest.fixture
def vault_token(kube: Kube, namespace: str) -> Token:
    create(kube, identity("vt", namespace, token={"audiences": ["vault"]}))
    wait_ready(kube, namespace, "vt")
    token = secret_token(kube, namespace, "vt-token")
    assert token is not None
    return token


def flip_signature(token: Token) -> str:
    header, payload, signature = token.value.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"


def expired_copy(kube: Kube, token: Token) -> str:
    """The same claims, expired, signed with the cluster's own service-account key: a token
    the issuer really did sign, whose time is up."""
    key = TEST_STATE_DIR / "pki" / "sa.key"
    if not key.exists():
        pytest.skip("the issuer's signing key is not on this machine (an external cluster)")
    claims = claims_of(token)
    past = int(time.time()) - 7200
    claims.update(iat=past, nbf=past, exp=past + 600)
    kid = jwt.get_unverified_header(token.value)["kid"]
    return jwt.encode(claims, key.read_bytes(), algorithm="RS256", headers={"kid": kid})


def test_verify_token_refuses_each_bad_token_with_its_own_reason(
    kube: Kube, cluster: Cluster, vault_token: Token
) -> None:
    against = ["--kubeconfig", str(cluster.kubeconfig)]
    expired = expired_copy(kube, vault_token)
    assert (
        verify_token(
            cluster, expired, "-a", "vault", "--issuer", issuer_of(kube), *against
        ).returncode
        == 1
    )
    outcomes = {
        "flipped": verify_token(cluster, flip_signature(vault_token), "-a", "vault", *against),
        "audience": verify_token(cluster, vault_token, "-a", issuer_of(kube), *against),
        "expired": verify_token(cluster, expired, "-a", "vault", *against),
    }
    reasons = {name: done.stderr.strip() for name, done in outcomes.items()}
    assert all(done.returncode == 1 and done.stdout == "" for done in outcomes.values()), reasons
    kid = jwt.get_unverified_header(vault_token.value)["kid"]
    assert (
        reasons["flipped"]
        == f"invalid: bad signature: it does not verify against the issuer's key '{kid}'"
    )
    assert reasons["audience"] == (
        f"invalid: wrong audience: the token is for ['vault'], expected one of ['{issuer_of(kube)}']"
    )
    assert reasons["expired"].startswith("invalid: expired: exp is ")
    assert len(set(reasons.values())) == 3


def test_verify_token_reads_the_public_discovery_document_or_a_jwks_file(
    kube: Kube, cluster: Cluster, vault_token: Token, tmp_path: Path
) -> None:
    """The external service's two other ways: the issuer's public discovery document (here
    made public with the documented binding of the discovery role to unauthenticated users),
    and a JWKS file, fully offline."""
    issuer = issuer_of(kube)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(kube.openid()[1]))
    offline = verify_token(
        cluster, vault_token, "-a", "vault", "--jwks", str(jwks), "--issuer", issuer
    )
    assert offline.returncode == 0, offline.stderr
    public = ["-a", "vault", "--issuer", issuer, "--ca", str(cluster.ca_file)]
    refused = verify_token(cluster, vault_token, *public)
    # not public yet: one line that says which binding makes it public (issue 24: a bare
    # "HTTP Error 403: Forbidden")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("error: https://")
    assert "HTTP 403: the issuer's discovery document is not public" in refused.stderr
    assert (
        "--clusterrole=system:service-account-issuer-discovery --group=system:unauthenticated"
        in refused.stderr
    )
    assert "HTTP Error" not in refused.stderr and "Traceback" not in refused.stderr
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"public-oidc-{uuid.uuid4().hex[:8]}"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:service-account-issuer-discovery",
        },
        "subjects": [
            {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Group",
                "name": "system:unauthenticated",
            }
        ],
    }
    create(kube, binding)
    try:
        deadline = time.monotonic() + 30
        while (done := verify_token(cluster, vault_token, *public)).returncode != 0:
            assert time.monotonic() < deadline, done.stderr
            time.sleep(0.5)
        assert yaml.safe_load(done.stdout)["claims"]["aud"] == ["vault"]
    finally:
        kube.delete("ClusterRoleBinding", None, binding["metadata"]["name"])
