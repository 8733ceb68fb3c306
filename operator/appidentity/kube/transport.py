"""How requests reach the API server: over kept-alive connections of the standard library's
HTTP client, one pool for the operator's own credentials and one, with no credentials of its
own, for requests that name a minted token; over the kubernetes client where a kubeconfig asks
for what only it handles (a proxy, a TLS server name)."""

from __future__ import annotations

import http.client
import json
import select
import ssl
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client

from .. import FIELD_MANAGER, SELF_CHECK_USER_AGENT, VERSION

TIMEOUT = (5.0, 30.0)
# Idle connections kept for reuse, per pool, for each reconcile worker: its own requests, and
# the token requests of its self-check. More may be open at once; those are closed after use,
# and a new one costs both sides a TLS handshake.
OWN_PER_WORKER = 1
TOKEN_PER_WORKER = 2
OWN_USER_AGENT = f"{FIELD_MANAGER}/{VERSION}"


class TokenTransport:
    """Keep-alive HTTPS connections to the API server that carry no credentials of their own,
    shared by every token the operator checks; each request names its token.

    The self-check's requests are most of what the operator sends, and none of them changes
    anything, so a request that met a connection the server had closed is sent once more on a
    fresh one. The standard library's client is used directly: through the kubernetes client
    and urllib3 a request cost the operator 1.8 times the CPU (bench/clientcost.py)."""

    resend_writes = True  # see OwnTransport

    def __init__(self, server: str, context: ssl.SSLContext, size: int):
        url = urlsplit(server)
        self._host = url.hostname or ""
        self._port = url.port or 443
        self._prefix = url.path.rstrip("/")
        self._context = context
        self._size = size
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPSConnection] = []

    def _connection(self) -> tuple[http.client.HTTPSConnection, bool]:
        """(a connection, whether it was used before). An idle one the server has closed (it
        reads as ready: the end of the stream) is dropped rather than tried."""
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn = self._idle.pop()
            if not _closed_by_server(conn):
                return conn, True
            conn.close()
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
                if reused and (self.resend_writes or method == "GET"):
                    continue  # closed by the server while idle; not an answer
                raise
            if response.will_close:
                conn.close()
            else:
                self._release(conn)
            return response.status, response.reason, data


def _closed_by_server(conn: http.client.HTTPSConnection) -> bool:
    """An idle connection has nothing to read unless the server closed it (or broke the
    protocol, which is no better). No socket: http.client opens a fresh one on its own."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class OwnTransport(TokenTransport):
    """The operator's own requests (its creates, applies, status writes, Events, reviews about
    other users) over a pool like the token requests', with the credentials of its
    configuration: its client certificate in the TLS context, its bearer token (re-read as the
    kubernetes client would, through the configuration's refresh hook) in each request.

    A write is never sent twice: one that met a connection the server closed fails like any
    unreachable server (the reconcile is retried, and a create that did land reads as 409).
    With `reload`, a 401 re-reads the credentials and sends once more, as ClientTransport."""

    resend_writes = False

    def __init__(
        self,
        cfg: client.Configuration,
        context: ssl.SSLContext,
        size: int,
        reload: Callable[[], client.Configuration] | None = None,
    ) -> None:
        super().__init__(str(cfg.host), context, size)
        self._cfg = cfg
        self._reload = reload

    def send(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, str, bytes]:
        answer = super().send(method, path, self._signed(headers), body)
        if answer[0] == 401 and self._reload is not None:
            _reloaded(self._cfg, self._reload)
            answer = super().send(method, path, self._signed(headers), body)
        return answer

    def _signed(self, headers: dict[str, str]) -> dict[str, str]:
        signed = {**headers, "User-Agent": OWN_USER_AGENT}
        bearer = self._cfg.auth_settings().get("BearerToken")
        if bearer is not None and bearer["value"]:  # else a client certificate alone
            signed["Authorization"] = str(bearer["value"])
        return signed


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
            _reloaded(self._api.configuration, self._reload)
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


def _reloaded(cfg: client.Configuration, reload: Callable[[], client.Configuration]) -> None:
    fresh = reload()
    cfg.api_key, cfg.refresh_api_key_hook = fresh.api_key, fresh.refresh_api_key_hook


Transport = TokenTransport | ClientTransport


def only_client_handles(cfg: client.Configuration) -> bool:
    """Rare kubeconfig settings that only the kubernetes client's transport handles."""
    return bool(cfg.proxy or cfg.tls_server_name)


def own_transport(
    api: client.ApiClient,
    ca_crt: bytes,
    reload: Callable[[], client.Configuration] | None,
    workers: int,
) -> Transport:
    """The operator's own requests, with the credentials of `api`'s configuration."""
    cfg = api.configuration
    if only_client_handles(cfg):
        return ClientTransport(api, own_credentials=True, reload=reload)
    context = _trusting(cfg, ca_crt)
    if cfg.cert_file:
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
    return OwnTransport(cfg, context, OWN_PER_WORKER * workers, reload)


def token_transport(cfg: client.Configuration, ca_crt: bytes, workers: int) -> Transport:
    """Trusts what the operator's own connection trusts, and presents no client certificate."""
    if only_client_handles(cfg):
        bare = credential_free(cfg, ca_crt)
        bare.connection_pool_maxsize = TOKEN_PER_WORKER * workers
        api = client.ApiClient(bare)
        api.user_agent = SELF_CHECK_USER_AGENT  # its default headers win over a request's
        return ClientTransport(api, own_credentials=False)
    return TokenTransport(str(cfg.host), _trusting(cfg, ca_crt), TOKEN_PER_WORKER * workers)


def _trusting(cfg: client.Configuration, ca_crt: bytes) -> ssl.SSLContext:
    """A TLS context that trusts what `cfg` trusts."""
    if not cfg.verify_ssl:
        return ssl._create_unverified_context()
    if ca_crt:
        return ssl.create_default_context(cadata=ca_crt.decode())
    return ssl.create_default_context(cafile=cfg.ssl_ca_cert)


def credential_free(cfg: client.Configuration, ca_crt: bytes) -> client.Configuration:
    """`cfg`'s server, trust, proxy and TLS server name, without any of its credentials."""
    bare = client.Configuration(host=cfg.host)
    bare.verify_ssl = cfg.verify_ssl
    bare.ca_cert_data = ca_crt.decode() if ca_crt else None
    bare.ssl_ca_cert = None if ca_crt else cfg.ssl_ca_cert
    bare.proxy, bare.proxy_headers = cfg.proxy, cfg.proxy_headers
    bare.tls_server_name = cfg.tls_server_name
    return bare
