"""The only place that talks to the API server.

Objects travel as plain dicts (the builders' output) over the official client's transport:
server-side apply under one field manager, reads, deletes, TokenRequest, status patches, and
clients that authenticate with nothing but a minted token. No decisions are made here.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit
from urllib.request import Request as UrlRequest
from urllib.request import urlopen

import urllib3
from kubernetes import client, config

from . import FIELD_MANAGER, GROUP, PLURAL, VERSION
from .verify.rbac import Request

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
TIMEOUT = (5.0, 30.0)
# Idle token connections kept for reuse; more may be open at once, and those are closed after use.
TOKEN_CONNECTIONS = 16


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
                "spec": _review_attributes(req),
            },
        )
        status = review.get("status", {})
        return bool(status.get("allowed")), str(status.get("reason", ""))

    def rules_review(self, namespace: str) -> tuple[list[dict[str, Any]], bool]:
        """(effective rules in the namespace, whether the authorizer said the list is incomplete)."""
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
        return rules, bool(status.get("incomplete"))

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
        """Performs a real read (list with limit=1, or get by name); returns the HTTP status."""
        prefix = "/api/v1" if not req.group else f"/apis/{group_version}"
        path = prefix + (f"/namespaces/{req.namespace}" if req.namespace else "")
        path += f"/{req.resource}" + (f"/{req.name}" if req.name else "")
        try:
            self.request("GET", path, query=None if req.name else {"limit": "1"})
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


def _review_attributes(req: Request) -> dict[str, Any]:
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


class TokenTransport:
    """Keep-alive HTTPS connections to the API server that carry no credentials of their own,
    shared by every token the operator checks; each request names its token.

    The self-check's requests are most of what the operator sends, and none of them changes
    anything, so a request that met a connection the server had closed is sent once more on a
    fresh one. The standard library's client is used directly: through the kubernetes client
    and urllib3 a request cost the operator 1.8 times the CPU (bench/clientcost.py)."""

    def __init__(self, server: str, context: ssl.SSLContext, size: int = TOKEN_CONNECTIONS):
        url = urlsplit(server)
        self._host = url.hostname or ""
        self._port = url.port or 443
        self._prefix = url.path.rstrip("/")
        self._context = context
        self._size = size
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPSConnection] = []

    def _connection(self) -> tuple[http.client.HTTPSConnection, bool]:
        """(a connection, whether it was used before)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        conn = http.client.HTTPSConnection(
            self._host, self._port, timeout=TIMEOUT[1], context=self._context
        )
        return conn, False

    def _release(self, conn: http.client.HTTPSConnection) -> None:
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(conn)
                return
        conn.close()

    def send(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, str, bytes]:
        payload = None if body is None else json.dumps(body).encode()
        while True:
            conn, reused = self._connection()
            try:
                conn.request(method, self._prefix + path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                if reused:
                    continue  # closed by the server while idle; not an answer
                raise
            if response.will_close:
                conn.close()
            else:
                self._release(conn)
            return response.status, response.reason, data


class ClientTransport:
    """Requests over the kubernetes client: with the credentials of its configuration (the
    operator's own), or with none (for tokens behind a proxy or a TLS server name, settings
    that only this client handles).

    With `reload`, a request refused as unauthenticated (401) re-reads the credentials and is
    sent once more. In a Pod the kubelet replaces the ServiceAccount token in its file; the
    kubernetes client re-reads that file only once a minute, so a token revoked right after
    its replacement was written would otherwise fail every request for up to a minute. A 401
    means the server did nothing, so sending again is safe for every method."""

    def __init__(
        self,
        api: client.ApiClient,
        own_credentials: bool,
        reload: Callable[[], client.Configuration] | None = None,
    ) -> None:
        self._api = api
        self._auth = ["BearerToken"] if own_credentials else []
        self._reload = reload

    def send(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, str, bytes]:
        answer = self._send(method, path, headers, body)
        if answer[0] == 401 and self._reload is not None:
            fresh = self._reload()
            cfg = self._api.configuration
            cfg.api_key, cfg.refresh_api_key_hook = fresh.api_key, fresh.refresh_api_key_hook
            answer = self._send(method, path, headers, body)
        return answer

    def _send(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, str, bytes]:
        serialized = self._api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=self._auth
        )
        response = self._api.call_api(*serialized, _request_timeout=TIMEOUT)
        response.read()  # type: ignore[no-untyped-call]
        return response.status, str(response.reason or ""), response.data or b""


Transport = TokenTransport | ClientTransport


class Kube(Http):
    """The operator's own connection (its ServiceAccount in a cluster, a kubeconfig locally)."""

    def __init__(
        self,
        api: client.ApiClient,
        ca_crt: bytes,
        public_server: str | None = None,
        reload: Callable[[], client.Configuration] | None = None,
    ):
        super().__init__(api, ClientTransport(api, own_credentials=True, reload=reload))
        self.ca_crt = ca_crt
        # The address written into identities' kubeconfigs; in a cluster the operator's own
        # address is the in-cluster Service, which is right for Pods but not for laptops.
        self.public_server = public_server or self.server
        self._tokens = _token_transport(api.configuration, ca_crt)

    @classmethod
    def connect(cls, kubeconfig: str | None = None, public_server: str | None = None) -> Kube:
        cfg = load_configuration(kubeconfig)
        ca_crt = Path(cfg.ssl_ca_cert).read_bytes() if cfg.ssl_ca_cert else b""
        return cls(
            client.ApiClient(cfg), ca_crt, public_server, lambda: load_configuration(kubeconfig)
        )

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request("GET", path_for(kind, namespace, name))
            return found
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list_objects(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        items: list[dict[str, Any]] = self.request(
            "GET", path_for(kind, namespace), query=query
        ).get("items", [])
        return items

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Creates an object that should not exist yet (409 if it does), under the operator's
        field manager: a create needs no read before it to be sure nothing is taken over."""
        meta = obj["metadata"]
        created: dict[str, Any] = self.request(
            "POST",
            path_for(obj["kind"], meta.get("namespace")),
            query={"fieldManager": FIELD_MANAGER},
            body=obj,
        )
        return created

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply under the operator's field manager, forcing what it owns."""
        meta = obj["metadata"]
        applied: dict[str, Any] = self.request(
            "PATCH",
            path_for(obj["kind"], meta.get("namespace"), meta["name"]),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=obj,
            content_type="application/apply-patch+yaml",
        )
        return applied

    def delete(self, kind: str, namespace: str | None, name: str, uid: str | None = None) -> bool:
        """Deletes (in the background); False if it was already gone. A uid precondition keeps
        a replacement object made by someone else safe."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        body["propagationPolicy"] = "Background"
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", path_for(kind, namespace, name), body=body)
            return True
        except ApiError as exc:
            if exc.status in (404, 409):
                return False
            raise

    def request_token(
        self,
        namespace: str,
        service_account: str,
        seconds: int,
        audiences: list[str],
        bound_secret: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """A TokenRequest, bound to the (name, uid) Secret when given, so that deleting the
        Secret revokes the token. The response holds the token: keep it out of every output."""
        spec: dict[str, Any] = {"audiences": audiences, "expirationSeconds": seconds}
        if bound_secret:
            name, uid = bound_secret
            spec["boundObjectRef"] = {
                "kind": "Secret",
                "apiVersion": "v1",
                "name": name,
                "uid": uid,
            }
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = path_for("ServiceAccount", namespace, service_account) + "/token"
        result: dict[str, Any] = self.request("POST", path, body=body)
        return result

    def post_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event on the AppIdentity; callers pass messages that never hold a token."""
        meta = involved["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{time.time_ns():x}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": involved.get("kind", "AppIdentity"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "count": 1,
        }
        self.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=event)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.request(
            "PATCH",
            path_for("AppIdentity", namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def subject_access_review(self, user: Mapping[str, Any], req: Request) -> bool:
        """Whether the authorizer allows `req` to another user (`user`: the user, uid, groups
        and extra fields of a SubjectAccessReview spec)."""
        review = self.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            body={
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {**user, **_review_attributes(req)},
            },
        )
        return bool(review.get("status", {}).get("allowed"))

    def token_client(self, token: str) -> Http:
        """A client that authenticates with the given token and nothing else. All token clients
        share one pool of connections that carry no credentials of their own (no client
        certificate, no operator token): a TLS handshake per verification cost the API server
        more than the access reviews themselves."""
        return Http(self.api, self._tokens, token)


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
        with urlopen(request, context=context, timeout=TIMEOUT[1]) as response:
            found: dict[str, Any] = json.loads(response.read())
            return found

    discovery = get(issuer.rstrip("/") + "/.well-known/openid-configuration")
    if not discovery.get("jwks_uri"):
        raise ValueError(f"the discovery document of {issuer} names no jwks_uri")
    return str(discovery.get("issuer", "")), get(str(discovery["jwks_uri"]))


def _token_transport(cfg: client.Configuration, ca_crt: bytes) -> Transport:
    """Trusts what the operator's own connection trusts, and presents no client certificate."""
    if cfg.proxy or cfg.tls_server_name:
        # Rare kubeconfig settings that only the kubernetes client's transport handles.
        bare = credential_free(cfg, ca_crt)
        bare.connection_pool_maxsize = TOKEN_CONNECTIONS
        return ClientTransport(client.ApiClient(bare), own_credentials=False)
    if not cfg.verify_ssl:
        context = ssl._create_unverified_context()
    elif ca_crt:
        context = ssl.create_default_context(cadata=ca_crt.decode())
    else:
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    return TokenTransport(str(cfg.host), context)


def credential_free(cfg: client.Configuration, ca_crt: bytes) -> client.Configuration:
    """`cfg`'s server, trust, proxy and TLS server name, without any of its credentials."""
    bare = client.Configuration(host=cfg.host)
    bare.verify_ssl = cfg.verify_ssl
    bare.ca_cert_data = ca_crt.decode() if ca_crt else None
    bare.ssl_ca_cert = None if ca_crt else cfg.ssl_ca_cert
    bare.proxy, bare.proxy_headers = cfg.proxy, cfg.proxy_headers
    bare.tls_server_name = cfg.tls_server_name
    return bare
