"""The rights every ServiceAccount has by default (discovery, self-reviews, issuer discovery),
measured on the cluster rather than hard-coded: a ServiceAccount with no bindings of its own
asks for its effective rules, and what it gets is the baseline that is not "excess"."""

from __future__ import annotations

import threading
import time
from typing import Any

from ..desired import is_subset
from ..kube import Kube
from ..rbac import RuleDict

BASELINE_SA = "appidentity-baseline"
TTL_SECONDS = 300.0
TOKEN_SECONDS = 600


def baseline_service_account(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": BASELINE_SA,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "appidentity-operator"},
        },
        "automountServiceAccountToken": False,
    }


class Baseline:
    """Callable: namespace -> baseline rules there, cached for a few minutes (or `max_age`
    seconds, when the caller needs a fresher answer)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self._lock = threading.Lock()
        self._rules: dict[str, tuple[float, list[RuleDict]]] = {}  # namespace: (read at, rules)
        self._token: tuple[float, str, list[str]] | None = None

    def ensure(self) -> None:
        """Applies the baseline ServiceAccount unless it is already as wanted (a restart
        writes nothing)."""
        want = baseline_service_account(self.namespace)
        found = self.kube.get("ServiceAccount", self.namespace, BASELINE_SA)
        if found is None or not is_subset(want, found):
            self.kube.apply(want)

    def _client_token(self) -> tuple[str, list[str]]:
        """(a token of the baseline ServiceAccount, the audiences the API server gave it)."""
        if self._token and time.monotonic() < self._token[0]:
            return self._token[1], self._token[2]
        issued = self.kube.request_token(self.namespace, BASELINE_SA, TOKEN_SECONDS, [])
        audiences = list(issued.get("spec", {}).get("audiences") or [])
        self._token = (time.monotonic() + TOKEN_SECONDS / 2, issued["status"]["token"], audiences)
        return self._token[1], audiences

    def api_audiences(self) -> list[str]:
        """The API server's own audiences (its `--api-audiences`), measured rather than assumed:
        a TokenRequest that names none is given them."""
        with self._lock:
            return self._client_token()[1]

    def __call__(self, namespace: str, max_age: float = TTL_SECONDS) -> list[RuleDict]:
        with self._lock:
            cached = self._rules.get(namespace)
            if cached and time.monotonic() - cached[0] < min(max_age, TTL_SECONDS):
                return cached[1]
            http = self.kube.token_client(self._client_token()[0])
            found, _ = http.rules_review(namespace)
            rules: list[RuleDict] = list(found)
            self._rules[namespace] = (time.monotonic(), rules)
            return rules
