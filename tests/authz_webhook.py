"""An authorizer that is not RBAC: the Webhook authorizer `hack/cluster.sh authz-webhook on` puts
before RBAC, served from the test process.

The API server asks it only about ServiceAccounts of namespaces named ``authz-webhook-*`` (the
chain's matchConditions), over HTTPS on the port in STATE_DIR/authz-webhook.port, with a serving
certificate and a client certificate of the state dir's own ``authz-ca``. A test says, per user,
which actions to allow and which to deny (``denied: true`` ends the chain before RBAC is
asked); everything else gets no opinion, so RBAC decides as before.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from support import CLUSTER_SH

# (verb, group, resource, subresource, namespace), as a SubjectAccessReview's resourceAttributes
Action = tuple[str, str, str, str, str]
NAMESPACE_PREFIX = "authz-webhook-"  # the only namespaces whose ServiceAccounts it is asked about


def action_of(attributes: dict[str, Any]) -> Action:
    keys = ("verb", "group", "resource", "subresource", "namespace")
    return tuple(str(attributes.get(k) or "") for k in keys)  # type: ignore[return-value]


@dataclass
class AuthzWebhook:
    """The webhook for one control plane's state dir; `start` serves it, `on` puts it into the
    API server's chain, `off` and `stop` undo both."""

    state_dir: Path
    allow: dict[str, set[Action]] = field(default_factory=dict)
    deny: dict[str, set[Action]] = field(default_factory=dict)
    # (user, action, decision) of every review answered, decision being allow, deny or none
    asked: list[tuple[str, Action, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        return int((self.state_dir / "authz-webhook.port").read_text())

    def decide(self, user: str, allow: Iterable[Action] = (), deny: Iterable[Action] = ()) -> None:
        """From now on: `allow` allowed for `user`, `deny` denied, the rest no opinion."""
        with self.lock:
            self.allow[user] = set(allow)
            self.deny[user] = set(deny)

    def review(self, sar: dict[str, Any]) -> dict[str, Any]:
        """The status answering a SubjectAccessReview (authorization.k8s.io/v1)."""
        spec = sar.get("spec") or {}
        user = str(spec.get("user", ""))
        attributes = spec.get("resourceAttributes")
        action = action_of(attributes) if attributes else ("", "", "", "", "")
        with self.lock:
            if attributes and action in self.deny.get(user, set()):
                verdict = "deny"
            elif attributes and action in self.allow.get(user, set()):
                verdict = "allow"
            else:
                verdict = "none"
            self.asked.append((user, action, verdict))
        reason = f"authz-webhook test fixture: {verdict}"
        return {"allowed": verdict == "allow", "denied": verdict == "deny", "reason": reason}

    def users_asked_about(self) -> set[str]:
        with self.lock:
            return {user for user, _, _ in self.asked}

    def start(self) -> None:
        pki = self.state_dir / "pki"
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki / "authz-ca.crt")
        context.load_cert_chain(pki / "authz-webhook.crt", pki / "authz-webhook.key")
        context.verify_mode = ssl.CERT_REQUIRED  # the API server's authz-client, nobody else
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if urlsplit(self.path).path != "/authorize":  # the client adds ?timeout=3s
                    self.send_error(404)
                    return
                sar = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                body = json.dumps(
                    {
                        "apiVersion": "authorization.k8s.io/v1",
                        "kind": "SubjectAccessReview",
                        "status": webhook.review(sar),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, name="authz-webhook", daemon=True).start()
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def switch(self, mode: str) -> None:
        """`hack/cluster.sh authz-webhook on|off`: returns once the API server applied it."""
        done = subprocess.run(
            [str(CLUSTER_SH), "authz-webhook", mode, str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"cluster.sh authz-webhook {mode}:\n{done.stderr[-2000:]}"
