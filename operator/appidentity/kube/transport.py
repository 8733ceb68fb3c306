"""How requests reach the API server: over the kubernetes client with the operator's own
credentials, or over shared keep-alive connections that carry no credentials of their own, for
requests that name a minted token."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client

from .. import SELF_CHECK_USER_AGENT

TIMEOUT = (5.0, 30.0)
# Idle token connections kept for reuse; more may be open at once, and those are closed after use.
TOKEN_CONNECTIONS = 16


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


def token_transport(cfg: client.Configuration, ca_crt: bytes) -> Transport:
    """Trusts what the operator's own connection trusts, and presents no client certificate."""
    if cfg.proxy or cfg.tls_server_name:
        # Rare kubeconfig settings that only the kubernetes client's transport handles.
        bare = credential_free(cfg, ca_crt)
        bare.connection_pool_maxsize = TOKEN_CONNECTIONS
        api = client.ApiClient(bare)
        api.user_agent = SELF_CHECK_USER_AGENT  # its default headers win over a request's
        return ClientTransport(api, own_credentials=False)
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
