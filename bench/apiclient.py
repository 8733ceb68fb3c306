"""A small, counting HTTP client for the benchmark's own API calls, the API server's request
counters, and a watch that timestamps when each AppIdentity turns Ready.

Every request the benchmark itself makes goes through `Api.request`, which classifies it the
way kube-apiserver labels it in `apiserver_request_total` (verb, group, resource, subresource).
Those counts are subtracted from the server's counters, so what is left is what the operator
(and the cluster's own controllers) asked for.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import urllib3
import yaml
from requests.adapters import HTTPAdapter

# Requests that are not storage reads or writes although they are POSTs ("create"): the
# authorizer/authenticator answers them from memory and nothing is persisted.
REVIEW_RESOURCES = frozenset(
    {
        "selfsubjectaccessreviews",
        "selfsubjectrulesreviews",
        "selfsubjectreviews",
        "subjectaccessreviews",
        "localsubjectaccessreviews",
        "tokenreviews",
    }
)
READ_VERBS = frozenset({"GET", "LIST", "WATCH"})
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})
# Non-resource paths that are probes or scrapes, never part of the operator's work.
PROBE_PATHS = frozenset({"/metrics", "/healthz", "/readyz", "/livez"})
# Resources the control plane writes on its own schedule whatever the operator does
# (kube-apiserver identity leases, API Priority and Fairness bookkeeping).
BACKGROUND_RESOURCES = frozenset(
    {"leases", "flowschemas", "prioritylevelconfigurations", "apiservices"}
)
BACKGROUND_STORAGE = frozenset({"leases", "masterleases", "apiServerPeerIPInfo"})

Key = tuple[str, str, str, str]  # verb, group, resource, subresource


def category(key: Key) -> str:
    """read | write | review | probe | background | other, for one counter key."""
    verb, _group, resource, subresource = key
    if not resource:
        return "probe" if subresource in PROBE_PATHS else "read" if verb == "GET" else "other"
    if resource in BACKGROUND_RESOURCES:
        return "background"
    if resource in REVIEW_RESOURCES:
        return "review"
    if verb in READ_VERBS:
        return "read"
    if verb in WRITE_VERBS:
        return "write"
    return "other"


def summarize(counts: Mapping[Key, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in counts.items():
        out[category(key)] = out.get(category(key), 0.0) + value
    return out


def describe(key: Key) -> str:
    verb, group, resource, sub = key
    what = "/".join(p for p in (group or "core", resource or sub, sub if resource else "") if p)
    return f"{verb} {what}"


_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?(?:/(?P<rest>.*))?$"
)


def classify(method: str, path: str, params: Mapping[str, str] | None, content_type: str) -> Key:
    """(verb, group, resource, subresource) as kube-apiserver records this request."""
    params = params or {}
    m = _PATH.match(path)
    if not m:
        return (method.upper(), "", "", path)
    group = m.group("group") or ""
    parts = [p for p in (m.group("rest") or "").split("/") if p]
    if not parts:
        # /api/v1/namespaces/X is a GET of a namespace, not a namespace-scoped collection
        if m.group("ns"):
            parts = ["namespaces", m.group("ns")]
        else:
            return (method.upper(), group, "", "")
    resource = parts[0]
    name = parts[1] if len(parts) > 1 else ""
    subresource = parts[2] if len(parts) > 2 else ""
    verb = method.upper()
    if verb == "GET":
        if params.get("watch") in ("1", "true"):
            verb = "WATCH"
        elif not name:
            verb = "LIST"
    elif verb == "PATCH" and content_type == "application/apply-patch+yaml":
        verb = "APPLY"
    elif verb == "DELETE" and not name:
        verb = "DELETECOLLECTION"
    return (verb, group, resource, subresource)


@dataclass
class Credentials:
    server: str
    ca_file: str
    cert: tuple[str, str] | None = None
    token: str | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @classmethod
    def from_kubeconfig(cls, path: str) -> Credentials:
        """The current context's cluster and user; embedded data is written to a private
        temporary directory (client certificates are needed for the API server's /metrics)."""
        cfg = yaml.safe_load(Path(path).read_text())
        ctx_name = cfg.get("current-context") or cfg["contexts"][0]["name"]
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        tmp = tempfile.TemporaryDirectory(prefix="appid-bench-")
        os.chmod(tmp.name, 0o700)
        base = Path(path).parent

        def material(data_key: str, file_key: str, src: Mapping[str, Any], name: str) -> str:
            if src.get(data_key):
                out = Path(tmp.name) / name
                out.write_bytes(base64.b64decode(src[data_key]))
                out.chmod(0o600)
                return str(out)
            return str(base / src[file_key]) if src.get(file_key) else ""

        ca = material("certificate-authority-data", "certificate-authority", cluster, "ca.crt")
        crt = material("client-certificate-data", "client-certificate", user, "client.crt")
        key = material("client-key-data", "client-key", user, "client.key")
        return cls(
            server=cluster["server"].rstrip("/"),
            ca_file=ca,
            cert=(crt, key) if crt and key else None,
            token=user.get("token"),
            _tmp=tmp,
        )

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status


class Api:
    """JSON over one pooled session. `counts` holds every request made through it."""

    def __init__(self, creds: Credentials, pool: int = 64, admin: bool = True) -> None:
        """admin=False: no client certificate and no default token; every request names the
        bearer token it authenticates with (the self-checks of minted tokens)."""
        self.creds = creds
        self.server = creds.server
        self.session = requests.Session()
        # Otherwise REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE and proxies from the environment win
        # over the cluster's own CA.
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool)
        self.session.mount("https://", adapter)
        self.session.verify = creds.ca_file or False
        self.session.cert = creds.cert if admin else None
        if not creds.ca_file:
            urllib3.disable_warnings()
        self.default_token = creds.token if admin else None
        self.counts: Counter[Key] = Counter()
        self._lock = threading.Lock()

    def count(self, key: Key, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        ok: Iterable[int] = (200, 201),
        token: str | None = None,
        timeout: float = 30.0,
        stream: bool = False,
        accept: str = "application/json",
    ) -> requests.Response:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        bearer = token or self.default_token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        self.count(classify(method, path, params, content_type))
        resp = self.session.request(
            method,
            self.server + path,
            params=dict(params or {}),
            data=json.dumps(body) if body is not None else None,
            headers=headers,
            timeout=timeout,
            stream=stream,
        )
        if resp.status_code not in set(ok):
            text = resp.text if not stream else ""
            resp.close()
            raise ApiError(resp.status_code, text)
        return resp

    def json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        resp = self.request(method, path, **kw)
        data: dict[str, Any] = resp.json() if resp.content else {}
        return data

    def text(self, path: str) -> str:
        """A non-resource GET (e.g. /metrics), not counted: scrapes are excluded anyway."""
        resp = self.session.get(self.server + path, timeout=30)
        resp.raise_for_status()
        return resp.text

    def close(self) -> None:
        self.session.close()


# --- Prometheus text ---------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<v>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


REQUEST_LABELS = ("verb", "group", "resource", "subresource")


def _sum_by(
    series: list[tuple[dict[str, str], float]], label_names: tuple[str, ...]
) -> dict[tuple[str, ...], float]:
    """Adds up a metric's samples by the given labels (the rest, e.g. code or scope, folded)."""
    out: dict[tuple[str, ...], float] = {}
    for labels, value in series:
        key = tuple(labels.get(n, "") for n in label_names)
        out[key] = out.get(key, 0.0) + value
    return out


def parse_metrics(text: str, names: Iterable[str]) -> dict[str, list[tuple[dict[str, str], float]]]:
    wanted = set(names)
    out: dict[str, list[tuple[dict[str, str], float]]] = {n: [] for n in wanted}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE.match(line)
        if not m or m.group("name") not in wanted:
            continue
        labels = dict(_LABEL.findall(m.group("labels") or ""))
        try:
            out[m.group("name")].append((labels, float(m.group("v"))))
        except ValueError:
            continue
    return out


@dataclass
class ServerCounters:
    """One scrape of kube-apiserver's request and storage counters."""

    requests: dict[Key, float]
    storage: dict[tuple[str, str], float]  # (operation, resource) from etcd_requests_total
    at: float
    server_seconds: dict[Key, float] = field(default_factory=dict)  # request duration sums

    @classmethod
    def scrape_after(
        cls, api: Api, before: ServerCounters, own: Mapping[Key, float], limit: float = 5.0
    ) -> ServerCounters:
        """A scrape once the server has recorded the benchmark's own watches: it counts a
        WATCH when the stream ends, a moment after the client closed it."""
        deadline = time.monotonic() + limit
        while True:
            after = cls.scrape(api)
            late = [
                k
                for k, v in own.items()
                if k[0] == "WATCH" and after.requests.get(k, 0) - before.requests.get(k, 0) < v
            ]
            if not late or time.monotonic() > deadline:
                return after
            time.sleep(0.2)

    @classmethod
    def scrape(cls, api: Api) -> ServerCounters:
        text = api.text("/metrics")
        at = time.monotonic()
        parsed = parse_metrics(
            text,
            (
                "apiserver_request_total",
                "etcd_requests_total",
                "apiserver_request_duration_seconds_sum",
            ),
        )
        reqs = _sum_by(parsed["apiserver_request_total"], REQUEST_LABELS)
        storage = _sum_by(parsed["etcd_requests_total"], ("operation", "resource"))
        seconds = _sum_by(parsed["apiserver_request_duration_seconds_sum"], REQUEST_LABELS)
        return cls(reqs, storage, at, seconds)  # type: ignore[arg-type]


STORAGE_WRITES = frozenset({"create", "update", "delete"})


@dataclass
class Window:
    """Server-side counts between two scrapes minus the benchmark's own requests."""

    seconds: float
    requests: dict[Key, float]
    own: dict[Key, float]
    storage_writes: dict[tuple[str, str], float]
    server_seconds: dict[Key, float] = field(default_factory=dict)

    @classmethod
    def between(
        cls, before: ServerCounters, after: ServerCounters, own: Mapping[Key, float]
    ) -> Window:
        reqs: dict[Key, float] = {}
        for key in set(after.requests) | set(before.requests):
            delta = after.requests.get(key, 0) - before.requests.get(key, 0) - own.get(key, 0)
            if delta:
                reqs[key] = delta
        storage = {
            k: after.storage[k] - before.storage.get(k, 0)
            for k in after.storage
            if k[0] in STORAGE_WRITES and after.storage[k] - before.storage.get(k, 0)
        }
        server = {
            k: after.server_seconds[k] - before.server_seconds.get(k, 0.0)
            for k in after.server_seconds
            if k[0] not in ("WATCH", "CONNECT")
            and after.server_seconds[k] - before.server_seconds.get(k, 0.0) > 0
        }
        return cls(after.at - before.at, reqs, dict(own), storage, server)

    def totals(self) -> dict[str, float]:
        return summarize(self.requests)

    def storage_write_total(self, exclude: Iterable[str] = BACKGROUND_STORAGE) -> float:
        skip = set(exclude)
        return sum(v for (_op, res), v in self.storage_writes.items() if res not in skip)

    def by_resource(self, cat: str | None = None) -> list[tuple[str, float]]:
        """'VERB group/resource[/sub]' -> count, largest first, optionally one category only."""
        rows = []
        for key, value in self.requests.items():
            if cat is not None and category(key) != cat:
                continue
            rows.append((describe(key), value))
        return sorted(rows, key=lambda r: -r[1])

    def by_server_time(self) -> list[tuple[str, float, float]]:
        """(kind, seconds the API server spent serving it, count), largest first. Includes the
        benchmark's own requests (the duration histogram has no client label)."""
        rows = [
            (describe(k), v, self.requests.get(k, 0.0) + self.own.get(k, 0.0))
            for k, v in self.server_seconds.items()
            if category(k) not in ("probe", "background")
        ]
        return sorted(rows, key=lambda r: -r[1])


class OwnCounts:
    """Snapshots of an Api's own counter, to get what it sent inside a window."""

    def __init__(self, *apis: Api) -> None:
        self.apis = apis
        self.start = self._now()

    def _now(self) -> Counter[Key]:
        total: Counter[Key] = Counter()
        for api in self.apis:
            with api._lock:
                total.update(api.counts)
        return total

    def since(self) -> dict[Key, float]:
        now = self._now()
        return {
            k: float(now[k] - self.start.get(k, 0)) for k in now if now[k] - self.start.get(k, 0)
        }


# --- watching AppIdentities until Ready ------------------------------------------------------


def is_ready(obj: Mapping[str, Any]) -> bool:
    status = obj.get("status") or {}
    meta = obj.get("metadata") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


class ReadyWatcher(threading.Thread):
    """Streams AppIdentity watch events (one LIST, then WATCH from its resourceVersion) and
    records, per (namespace, name), the monotonic time the first Ready=True event arrived."""

    PATH = "/apis/appidentity.dev/v1alpha1/appidentities"

    def __init__(self, api: Api, label_selector: str) -> None:
        super().__init__(daemon=True, name="ready-watch")
        self.api = api
        self.selector = label_selector
        self.ready: dict[tuple[str, str], float] = {}
        self.seen: set[tuple[str, str]] = set()
        self.events = 0
        self.error: str = ""
        self._halt = threading.Event()
        self._resp: requests.Response | None = None
        self._lock = threading.Lock()
        self.changed = threading.Condition()
        self.listening = threading.Event()  # the first watch request was answered

    def _note(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        now = time.monotonic()
        with self.changed:
            self.seen.add(key)
            if key not in self.ready and is_ready(obj):
                self.ready[key] = now
                self.changed.notify_all()

    def _list(self) -> str:
        data = self.api.json("GET", self.PATH, params={"labelSelector": self.selector})
        for item in data.get("items", []):
            self._note(item)
        return str(data["metadata"]["resourceVersion"])

    def run(self) -> None:
        try:
            rv = self._list()
            while not self._halt.is_set():
                params = {
                    "watch": "1",
                    "labelSelector": self.selector,
                    "resourceVersion": rv,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": "120",
                }
                try:
                    resp = self.api.request(
                        "GET", self.PATH, params=params, stream=True, timeout=150
                    )
                except ApiError as exc:
                    if exc.status == 410:
                        rv = self._list()
                        continue
                    raise
                with self._lock:
                    self._resp = resp
                self.listening.set()
                if self._halt.is_set():
                    resp.close()
                    break
                try:
                    lines = resp.iter_lines(chunk_size=None)  # type: ignore[call-overload]
                    for line in lines:
                        if not line:
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            if obj.get("code") == 410:
                                rv = self._list()
                            break
                        rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            self.events += 1
                            self._note(obj)
                except (requests.RequestException, AttributeError, ValueError, OSError):
                    if self._halt.is_set():
                        break
                    time.sleep(0.2)
                finally:
                    resp.close()
        except Exception as exc:  # reported by the caller; the benchmark must not hang
            self.error = f"{type(exc).__name__}: {exc}"
            self.listening.set()
            with self.changed:
                self.changed.notify_all()

    def wait_for(self, keys: set[tuple[str, str]], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not keys <= self.ready.keys():
                left = deadline - time.monotonic()
                if left <= 0 or self.error:
                    return False
                self.changed.wait(min(left, 1.0))
        return True

    def stop(self) -> None:
        self._halt.set()
        with self._lock:
            if self._resp is not None:
                # Closing the response does not wake a reader blocked in recv(): it would sit
                # there until the server's next bookmark, about a minute later, and the
                # caller's window with it. Shutting the socket down does.
                sock = getattr(getattr(self._resp.raw, "_connection", None), "sock", None)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                # closing from another thread may race the reader
                with contextlib.suppress(Exception):
                    self._resp.close()
        self.join(timeout=10)


def has_condition(
    obj: Mapping[str, Any], type_: str, *, status: str | None = None, reason: str | None = None
) -> bool:
    """Whether the object's status has a condition of this type (and status, and reason)."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") != type_:
            continue
        if status is not None and c.get("status") != status:
            continue
        if reason is not None and c.get("reason") != reason:
            continue
        return True
    return False


class ConditionWatcher(ReadyWatcher):
    """A ReadyWatcher that also times armed expectations: `arm(key, predicate)`, then the
    monotonic time of the first watch event (after arming) whose object satisfies the
    predicate lands in `hits[key]`."""

    def __init__(self, api: Api, label_selector: str) -> None:
        super().__init__(api, label_selector)
        self.armed: dict[tuple[str, str], Callable[[Mapping[str, Any]], bool]] = {}
        self.hits: dict[tuple[str, str], float] = {}

    def arm(self, key: tuple[str, str], predicate: Callable[[Mapping[str, Any]], bool]) -> None:
        with self.changed:
            self.hits.pop(key, None)
            self.armed[key] = predicate

    def _note(self, obj: Mapping[str, Any]) -> None:
        super()._note(obj)
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        now = time.monotonic()
        with self.changed:
            predicate = self.armed.get(key)
            if predicate is not None and predicate(obj):
                del self.armed[key]
                self.hits[key] = now
                self.changed.notify_all()

    def wait_hits(self, keys: set[tuple[str, str]], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not keys <= self.hits.keys():
                left = deadline - time.monotonic()
                if left <= 0 or self.error:
                    return False
                self.changed.wait(min(left, 1.0))
        return True
