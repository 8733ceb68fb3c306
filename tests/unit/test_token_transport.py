"""TokenTransport's and OwnTransport's connection reuse and credentials, with stand-in
connections: no API behaviour involved."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from appidentity.kube import ApiError, Http, Kube, OwnTransport, TokenTransport
from appidentity.kube.transport import own_transport, token_transport
from kubernetes import client

TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl"


class Response:
    def __init__(self, will_close: bool = False) -> None:
        self.status, self.reason, self.will_close = 200, "OK", will_close

    def read(self) -> bytes:
        return b'{"ok": true}'


class Connection:
    """Fails on the response when `dead` (a connection the server closed while it was idle)."""

    made: ClassVar[list[Connection]] = []

    def __init__(self, *_: Any, dead: bool = False, will_close: bool = False, **__: Any) -> None:
        self.dead, self.will_close, self.closed = dead, will_close, False
        self.headers: dict[str, str] = {}
        self.sock: socket.socket | None = None
        Connection.made.append(self)

    def request(self, method: str, url: str, body: Any = None, headers: Any = None) -> None:
        self.headers = dict(headers or {})

    def getresponse(self) -> Response:
        if self.dead:
            raise http.client.RemoteDisconnected("Remote end closed connection")
        return Response(self.will_close)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def transport(monkeypatch: pytest.MonkeyPatch) -> TokenTransport:
    Connection.made = []
    monkeypatch.setattr(http.client, "HTTPSConnection", Connection)
    return TokenTransport("https://127.0.0.1:6443", ssl.create_default_context(), size=2)


def test_a_connection_closed_while_idle_is_replaced_and_the_request_sent_again(
    transport: TokenTransport,
) -> None:
    stale = Connection(dead=True)
    transport._idle.append(stale)  # type: ignore[arg-type]
    assert transport.send("POST", "/x", {}, {"a": 1})[0] == 200
    assert stale.closed
    assert transport._idle == [Connection.made[-1]]  # the fresh one is kept for reuse


def test_a_fresh_connection_that_fails_is_an_error_without_the_token(
    transport: TokenTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http.client, "HTTPSConnection", lambda *a, **k: Connection(dead=True))
    http_ = Http(None, transport, TOKEN)  # type: ignore[arg-type]
    with pytest.raises(ApiError) as failure:
        http_.request("GET", "/apis")
    assert failure.value.status == 0
    assert TOKEN not in str(failure.value) and TOKEN not in repr(failure.value)


def test_each_request_names_its_own_token_on_a_shared_connection(
    transport: TokenTransport,
) -> None:
    Http(None, transport, "token-a").request("GET", "/a")  # type: ignore[arg-type]
    Http(None, transport, "token-b").request("GET", "/b")  # type: ignore[arg-type]
    assert len(Connection.made) == 1
    assert Connection.made[0].headers["Authorization"] == "Bearer token-b"


def test_a_connection_the_server_will_close_is_not_kept(transport: TokenTransport) -> None:
    transport._idle.append(Connection(will_close=True))  # type: ignore[arg-type]
    transport.send("GET", "/x", {}, None)
    assert transport._idle == []


def test_an_idle_connection_the_server_closed_is_dropped_before_it_is_tried(
    transport: TokenTransport,
) -> None:
    mine, theirs = socket.socketpair()
    theirs.close()  # the server's end: the idle connection now reads as ready (end of stream)
    stale = Connection()
    stale.sock = mine
    transport._idle.append(stale)  # type: ignore[arg-type]
    assert transport.send("POST", "/x", {}, {"a": 1})[0] == 200
    assert stale.closed and stale.headers == {}  # never sent on
    mine.close()


class Settings:
    """The kubernetes client's Configuration as OwnTransport reads it."""

    host = "https://127.0.0.1:6443"

    def __init__(self, token: str) -> None:
        self.api_key = {"authorization": f"Bearer {token}"}
        self.refresh_api_key_hook = None

    def auth_settings(self) -> dict[str, Any]:
        return {"BearerToken": {"value": self.api_key["authorization"]}}


@pytest.fixture
def own(monkeypatch: pytest.MonkeyPatch) -> OwnTransport:
    Connection.made = []
    monkeypatch.setattr(http.client, "HTTPSConnection", Connection)
    reloaded = Settings("fresh")
    return OwnTransport(Settings("old"), ssl.create_default_context(), 2, lambda: reloaded)  # type: ignore[arg-type]


def test_the_operators_own_requests_carry_its_credentials_and_its_name(own: OwnTransport) -> None:
    own.send("GET", "/api", {}, None)
    headers = Connection.made[0].headers
    assert headers["Authorization"] == "Bearer old"
    assert headers["User-Agent"].startswith("appidentity-operator/")


def test_a_write_that_met_a_closed_connection_is_not_sent_twice(own: OwnTransport) -> None:
    own._idle.append(Connection(dead=True))  # type: ignore[arg-type]
    with pytest.raises(http.client.RemoteDisconnected):
        own.send("POST", "/api/v1/namespaces/a/serviceaccounts", {}, {"kind": "ServiceAccount"})
    own._idle.append(Connection(dead=True))  # type: ignore[arg-type]
    assert own.send("GET", "/api", {}, None)[0] == 200  # a read is


def test_a_refused_credential_is_read_again_and_the_request_sent_once_more(
    own: OwnTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([401, 200])
    monkeypatch.setattr(Response, "__init__", _status(answers))
    assert own.send("GET", "/api", {}, None)[0] == 200
    assert [c.headers["Authorization"] for c in Connection.made][-1] == "Bearer fresh"


def _status(answers: Iterator[int]) -> Callable[..., None]:
    def init(self: Response, will_close: bool = False) -> None:
        self.status, self.reason, self.will_close = next(answers), "", will_close

    return init


def test_each_worker_keeps_its_connections_for_reuse() -> None:
    """As many idle connections are kept as the workers can use at once (one each for the
    operator's own requests, two for its self-check's), so none costs a new TLS handshake."""
    cfg = client.Configuration(host="https://127.0.0.1:6443")
    cfg.verify_ssl = False
    workers = 24
    pools = [
        (own_transport(client.ApiClient(cfg), b"", None, workers), workers),
        (token_transport(cfg, b"", workers), 2 * workers),
    ]
    for pool, kept in pools:
        assert isinstance(pool, TokenTransport)
        conns = [Connection() for _ in range(kept + 1)]
        for conn in conns:
            pool._release(conn)  # type: ignore[arg-type]
        assert [c.closed for c in conns] == [False] * kept + [True]


def test_behind_a_proxy_the_clients_pool_keeps_a_connection_per_worker(tmp_path: Any) -> None:
    """Where the kubernetes client carries the operator's own requests (a proxy), its pool is
    as large as the workers: urllib3 discards, with a warning, what a full pool cannot keep."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        "clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n"
        "    insecure-skip-tls-verify: true\n    proxy-url: http://127.0.0.1:3128\n"
        "users:\n- name: u\n  user: {token: not-a-real-token}\n"
        "contexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n"
    )
    kube = Kube.connect(str(kubeconfig), workers=64)
    assert kube.api.configuration.proxy == "http://127.0.0.1:3128"
    assert kube.api.configuration.connection_pool_maxsize == 64
