"""JSON over HTTPS to the API server, and what any client (the operator's own, or one
authenticated by a minted token alone) may ask about itself: who it is, what it may do, the
cluster's discovery and published keys. No decisions are made here."""

from __future__ import annotations

import http.client
import json
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import Request as UrlRequest
from urllib.request import urlopen

import urllib3
from kubernetes import client, config

from .. import GROUP, PLURAL, SELF_CHECK_USER_AGENT, VERSION
from ..rbac import Request
from .transport import TIMEOUT, ClientTransport, Transport

# The name a self-check's real `get` asks for when the grant names no object (kube/rest.try_read).
PROBE_NAME = "appidentity-selfcheck"

# kind -> (API prefix, plural, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Secret": ("/api/v1", "secrets", True),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "AppIdentity": (f"/apis/{GROUP}/{VERSION}", PLURAL, True),
}


class ApiError(Exception):
    """A non-2xx answer. Carries the API server's own Status message, which never holds a
    request's credentials."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def path_for(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    prefix, plural, namespaced = KINDS[kind]
    path = prefix
    if namespaced and namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    return path


def load_configuration(kubeconfig: str | None = None) -> client.Configuration:
    """In a Pod: its ServiceAccount; otherwise the named kubeconfig, or $KUBECONFIG."""
    cfg = client.Configuration()
    if kubeconfig is None and Path(config.incluster_config.SERVICE_TOKEN_FILENAME).exists():
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig or os.environ.get("KUBECONFIG"), client_configuration=cfg
        )
    return cfg


class Http:
    """JSON to the API server; every call returns the decoded body or raises ApiError.

    Without a token: the operator's own credentials, over the kubernetes client. With one:
    that token and nothing else, over a transport without credentials of its own."""

    def __init__(
        self,
        api: client.ApiClient,
        transport: Transport | None = None,
        token: str | None = None,
    ) -> None:
        self.api = api
        self._transport = transport or ClientTransport(api, own_credentials=True)
        self._token = token

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Any:
        if query:
            path = f"{path}?{urlencode(query)}"
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
            headers["User-Agent"] = SELF_CHECK_USER_AGENT
        try:
            status, reason, raw = self._transport.send(method, path, headers, body)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            # An API server restart or a network blip: a failure like any other, retried.
            raise ApiError(0, "Unreachable", type(exc).__name__) from exc
        raw = raw or b"{}"
        if not 200 <= status <= 299:
            try:
                payload = json.loads(raw)
                reason, message = payload.get("reason", "") or reason, payload.get("message", "")
            except ValueError:
                message = raw[:200].decode(errors="replace")
            raise ApiError(status, reason, message)
        return json.loads(raw) if raw.strip() else {}

    # --- what a token may ask about itself -------------------------------------------------

    def whoami(self) -> str:
        review = self.request(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        return str(review.get("status", {}).get("userInfo", {}).get("username", ""))

    def access_review(self, req: Request) -> tuple[bool, str]:
        """(allowed, the authorizer's reason) for one request, asked by the token itself."""
        review = self.request(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            body={
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": review_attributes(req),
            },
        )
        status = review.get("status", {})
        return bool(status.get("allowed")), str(status.get("reason", ""))

    def rules_review(self, namespace: str) -> tuple[list[dict[str, Any]], bool]:
        """(effective rules in the namespace, whether the list may lack rules: an authorizer
        said it is `incomplete`, or RBAC reported an `evaluationError`)."""
        review = self.request(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            body={
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectRulesReview",
                "spec": {"namespace": namespace},
            },
        )
        status = review.get("status", {})
        rules = list(status.get("resourceRules") or []) + list(status.get("nonResourceRules") or [])
        return rules, bool(status.get("incomplete") or status.get("evaluationError"))

    def preferred_versions(self) -> dict[str, str]:
        """API group -> preferred group/version, from discovery ("" -> "v1")."""
        groups = self.request("GET", "/apis").get("groups", [])
        found = {g["name"]: g["preferredVersion"]["groupVersion"] for g in groups}
        found[""] = "v1"
        return found

    def discovery(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The aggregated discovery documents of GET /api and GET /apis (GA since 1.30; every
        authenticated user may read them, `system:discovery`)."""
        accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        core, apis = (self.request("GET", p, accept=accept) for p in ("/api", "/apis"))
        for doc in (core, apis):
            if doc.get("kind") != "APIGroupDiscoveryList":
                raise ApiError(406, "NotAcceptable", "the API server has no aggregated discovery")
        return core, apis

    def try_read(self, req: Request, group_version: str) -> int:
        """Performs a real read, a list with limit=1 or a get (by its name, or of PROBE_NAME for
        a get that names none); returns the HTTP status. The API server authorizes before it
        looks the object up, so a 404 is an allowed get."""
        prefix = "/api/v1" if not req.group else f"/apis/{group_version}"
        path = prefix + (f"/namespaces/{req.namespace}" if req.namespace else "")
        name = req.name or (PROBE_NAME if req.verb == "get" else "")
        path += f"/{req.resource}" + (f"/{name}" if name else "")
        try:
            self.request("GET", path, query=None if name else {"limit": "1"})
            return 200
        except ApiError as exc:
            return exc.status

    def openid(self) -> tuple[str, dict[str, Any]]:
        """(issuer, JWKS) as the API server publishes them. The keys are read from the API
        server itself even when the discovery document names another jwks_uri (e.g. a bucket)."""
        discovery = self.request("GET", "/.well-known/openid-configuration")
        jwks: dict[str, Any] = self.request(
            "GET", "/openid/v1/jwks", accept="application/jwk-set+json"
        )
        return str(discovery.get("issuer", "")), jwks


def review_attributes(req: Request) -> dict[str, Any]:
    """The resource or non-resource attributes of an access review's spec."""
    if req.url:
        return {"nonResourceAttributes": {"path": req.url, "verb": req.verb}}
    attrs = {
        "verb": req.verb,
        "group": req.group,
        "resource": req.resource,
        "subresource": req.subresource,
        "namespace": req.namespace,
        "name": req.name,
    }
    return {"resourceAttributes": {k: v for k, v in attrs.items() if v}}


def public_openid(issuer: str, ca_file: str | None = None) -> tuple[str, dict[str, Any]]:
    """(issuer, JWKS) read without credentials from the issuer's discovery document and the
    jwks_uri it names, as a relying party outside the cluster reads them. Works where the
    issuer is public (a bucket, or an API server that lets `system:unauthenticated` use
    `system:service-account-issuer-discovery`)."""
    context = ssl.create_default_context(cafile=ca_file)

    def get(url: str) -> dict[str, Any]:
        # the API server's /openid/v1/jwks answers only to the JWK set type (else 406)
        accept = "application/json, application/jwk-set+json"
        request = UrlRequest(url, headers={"Accept": accept})
        try:
            with urlopen(request, context=context, timeout=TIMEOUT[1]) as response:
                found: dict[str, Any] = json.loads(response.read())
                return found
        except HTTPError as exc:
            if exc.code in (401, 403):
                raise PermissionError(_not_public(url, exc.code)) from None
            raise

    discovery = get(issuer.rstrip("/") + "/.well-known/openid-configuration")
    if not discovery.get("jwks_uri"):
        raise ValueError(f"the discovery document of {issuer} names no jwks_uri")
    return str(discovery.get("issuer", "")), get(str(discovery["jwks_uri"]))


def _not_public(url: str, code: int) -> str:
    """Why an anonymous read of an issuer's discovery document was refused, and what to do."""
    if code == 401:
        why = "the server refuses anonymous requests altogether (--anonymous-auth=false)"
    else:
        why = (
            "an API server publishes it only once the ClusterRole "
            "system:service-account-issuer-discovery is bound to the group "
            "system:unauthenticated: kubectl create clusterrolebinding oidc-public "
            "--clusterrole=system:service-account-issuer-discovery "
            "--group=system:unauthenticated (the default ClusterRoleBinding of that name "
            "binds it to system:serviceaccounts only)"
        )
    return (
        f"{url}: HTTP {code}: the issuer's discovery document is not public: {why}; "
        "or read it with credentials (--kubeconfig), or offline from a saved JWKS (--jwks)"
    )
