"""Proof that the test control plane is a real one: every feature the operator relies on
(authentication of ServiceAccount tokens, RBAC, the token and garbage-collector controllers,
namespace deletion, role aggregation, OIDC discovery) is exercised and would fail if missing.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jwt
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from support import REPO, Cluster, Token

T = TypeVar("T")
TokenApi = Callable[[Token | str], client.ApiClient]
SaToken = Callable[[str, str], Token]


# --- helpers -----------------------------------------------------------------------------------


def eventually(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Polls ``probe`` until it returns something other than None: controllers are async."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def pinned_k8s_version() -> str:
    """The Kubernetes version the suite runs on, e.g. ``1.37.2``: K8S_VERSION, or the default
    hack/versions.env pins."""
    versions_env = REPO / "hack" / "versions.env"
    done = subprocess.run(
        ["bash", "-c", f'. "{versions_env}" && echo "$K8S_VERSION"'],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def username_of(api: client.ApiClient) -> str:
    """Who the API server says this client is (SelfSubjectReview)."""
    review = client.AuthenticationV1Api(api).create_self_subject_review(
        client.V1SelfSubjectReview()
    )
    return str(review.status.user_info.username)


def list_pods_status(api: client.ApiClient, namespace: str) -> int:
    """HTTP status of a pod list: 200, or the ApiException's status (403 when forbidden)."""
    try:
        client.CoreV1Api(api).list_namespaced_pod(namespace)
    except ApiException as exc:
        return int(exc.status)
    return 200


def is_gone(read: Callable[[], object]) -> bool | None:
    """True once ``read`` raises 404; None while the object still exists (for ``eventually``)."""
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return None


def https_get_json(cluster: Cluster, path: str, token: Token) -> dict[str, Any]:
    """A plain GET with a bearer token, verified against the cluster CA: no Kubernetes client."""
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    request = urllib.request.Request(
        cluster.server + path, headers={"Authorization": f"Bearer {token.value}"}
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        body: dict[str, Any] = json.load(response)
    return body


def sa_username(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


# --- version -----------------------------------------------------------------------------------


def test_kubectl_reports_pinned_server_version(cluster: Cluster) -> None:
    if cluster.external:
        pytest.skip("the pinned version only applies to the cluster hack/cluster.sh builds")
    done = cluster.run_kubectl("version", "-o", "json")
    server = json.loads(done.stdout)["serverVersion"]
    assert server["gitVersion"] == f"v{pinned_k8s_version()}"


# --- authentication and RBAC -------------------------------------------------------------------


def test_token_request_token_authenticates_as_its_service_account(
    namespace: str, service_account_token: SaToken, token_api: TokenApi
) -> None:
    token = service_account_token(namespace, "probe")
    assert username_of(token_api(token)) == sa_username(namespace, "probe")


def test_rbac_grants_exactly_what_a_role_binding_says(
    admin_api: client.ApiClient,
    namespace: str,
    make_namespace: Callable[[], str],
    service_account_token: SaToken,
    token_api: TokenApi,
) -> None:
    other_namespace = make_namespace()
    api = token_api(service_account_token(namespace, "reader"))
    assert list_pods_status(api, namespace) == 403

    rbac = client.RbacAuthorizationV1Api(admin_api)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="pod-lister"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="pod-lister"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="pod-lister"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)
            ],
        ),
    )

    eventually(
        lambda: True if list_pods_status(api, namespace) == 200 else None,
        timeout=5,
        what="the RoleBinding to allow listing pods",
    )
    assert list_pods_status(api, other_namespace) == 403


# --- controllers -------------------------------------------------------------------------------


def test_legacy_token_secret_is_filled_and_its_token_authenticates(
    admin_api: client.ApiClient, namespace: str, token_api: TokenApi
) -> None:
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="legacy"))
    )
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="legacy-token",
                annotations={"kubernetes.io/service-account.name": "legacy"},
            ),
            type="kubernetes.io/service-account-token",
        ),
    )

    def filled() -> dict[str, str] | None:
        data = core.read_namespaced_secret("legacy-token", namespace).data or {}
        return data if {"token", "ca.crt", "namespace"} <= data.keys() else None

    data = eventually(filled, timeout=30, what="the token controller to fill the Secret")
    token = Token(base64.b64decode(data.pop("token")).decode())  # out of `data`: never displayed
    assert base64.b64decode(data["namespace"]).decode() == namespace
    assert b"BEGIN CERTIFICATE" in base64.b64decode(data["ca.crt"])
    assert username_of(token_api(token)) == sa_username(namespace, "legacy")


def test_new_namespace_gets_default_service_account_and_root_ca(
    admin_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)

    def present(read: Callable[[], object]) -> bool | None:
        try:
            read()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return True

    eventually(
        lambda: present(lambda: core.read_namespaced_service_account("default", namespace)),
        timeout=30,
        what="the serviceaccount controller to create `default`",
    )
    eventually(
        lambda: present(lambda: core.read_namespaced_config_map("kube-root-ca.crt", namespace)),
        timeout=30,
        what="root-ca-cert-publisher to create kube-root-ca.crt",
    )


def test_garbage_collector_deletes_dependents_of_a_deleted_owner(
    admin_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="dependent", owner_references=[reference])
        ),
    )

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    eventually(
        lambda: is_gone(lambda: core.read_namespaced_config_map("dependent", namespace)),
        timeout=30,
        what="the garbage collector to delete the dependent ConfigMap",
    )


def test_namespace_deletion_finishes(
    admin_api: client.ApiClient, make_namespace: Callable[[], str]
) -> None:
    core = client.CoreV1Api(admin_api)
    doomed = make_namespace()
    core.create_namespaced_config_map(
        doomed, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="content"))
    )

    core.delete_namespace(doomed)

    eventually(
        lambda: is_gone(lambda: core.read_namespace(doomed)),
        timeout=60,
        what=f"namespace {doomed} to be finalized by the namespace controller",
    )


@pytest.fixture
def aggregated_cluster_role(admin_api: client.ApiClient) -> Iterator[str]:
    """A ClusterRole labelled to aggregate into `view`, granting a resource nothing else grants."""
    rbac = client.RbacAuthorizationV1Api(admin_api)
    name = f"appid-test-aggregate-{uuid.uuid4().hex[:8]}"
    rbac.create_cluster_role(
        client.V1ClusterRole(
            metadata=client.V1ObjectMeta(
                name=name, labels={"rbac.authorization.k8s.io/aggregate-to-view": "true"}
            ),
            rules=[client.V1PolicyRule(api_groups=["appid.test"], resources=[name], verbs=["get"])],
        )
    )
    yield name
    rbac.delete_cluster_role(name)


def test_labelled_cluster_role_aggregates_into_view(
    admin_api: client.ApiClient, aggregated_cluster_role: str
) -> None:
    rbac = client.RbacAuthorizationV1Api(admin_api)

    def aggregated() -> bool | None:
        rules = rbac.read_cluster_role("view").rules or []
        return True if any(aggregated_cluster_role in (r.resources or []) for r in rules) else None

    eventually(aggregated, timeout=30, what="clusterrole-aggregation to extend `view`")


# --- OIDC discovery and token signatures -------------------------------------------------------


def verify_sa_token(token: Token, jwks: dict[str, Any], issuer: str) -> dict[str, Any]:
    """Checks signature, issuer, audience and expiry, as an external OIDC relying party would."""
    key_id = jwt.get_unverified_header(token.value).get("kid")
    key = jwt.PyJWKSet.from_dict(jwks)[key_id]
    claims: dict[str, Any] = jwt.decode(
        token.value,
        key=key,
        algorithms=[key.algorithm_name],
        issuer=issuer,
        audience=issuer,  # the API server's default audience (--api-audiences) is its issuer
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    return claims


def with_altered_signature(token: Token) -> Token:
    """The same token with the first signature character changed: the signature's first byte
    changes for sure (a changed last character might only touch base64 padding bits)."""
    head, payload, signature = token.value.split(".")
    first = "A" if signature[0] != "A" else "B"
    return Token(f"{head}.{payload}.{first}{signature[1:]}")


def test_oidc_discovery_serves_keys_that_verify_service_account_tokens(
    cluster: Cluster, namespace: str, service_account_token: SaToken
) -> None:
    token = service_account_token(namespace, "oidc")
    discovery = https_get_json(cluster, "/.well-known/openid-configuration", token)
    jwks = https_get_json(cluster, "/openid/v1/jwks", token)
    issuer = discovery["issuer"]
    assert discovery["jwks_uri"].endswith("/openid/v1/jwks")

    claims = verify_sa_token(token, jwks, issuer)
    assert claims["sub"] == sa_username(namespace, "oidc")
    assert claims["exp"] > time.time()

    with pytest.raises(jwt.InvalidSignatureError):
        verify_sa_token(with_altered_signature(token), jwks, issuer)
