"""The webhook's only API calls: keep its certificates in their Secret (every replica converges
on one CA through the Secret's resourceVersion) and its CA in the webhook configuration's
caBundle."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..kube import ApiError, Kube
from .certs import Material, plan

log = logging.getLogger(__name__)
ADMISSION = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


@dataclass
class TlsSync:
    kube: Kube
    namespace: str
    secret: str
    configuration: str
    hosts: tuple[str, ...]
    cert_seconds: float
    ca_seconds: float

    def _secret_path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{self.secret}"

    def _inject(self, ca_crt: bytes) -> None:
        """Patches caBundle where it differs: afterwards every webhook has `ca_crt`."""
        config = self.kube.request("GET", f"{ADMISSION}/{self.configuration}")
        wanted = base64.b64encode(ca_crt).decode()
        patch: list[dict[str, Any]] = []
        for i, hook in enumerate(config.get("webhooks") or []):
            if (hook.get("clientConfig") or {}).get("caBundle") != wanted:
                patch.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook["name"]})
                path = f"/webhooks/{i}/clientConfig/caBundle"
                patch.append({"op": "add", "path": path, "value": wanted})
        if patch:
            self.kube.request(
                "PATCH",
                f"{ADMISSION}/{self.configuration}",
                body=patch,
                content_type="application/json-patch+json",
            )
            log.info("put the CA into %s's caBundle", self.configuration)

    def sync(self) -> Material:
        """One step: renew what is due in the Secret, inject its CA; returns what to serve."""
        secret = self.kube.request("GET", self._secret_path())
        current = Material.from_secret(secret.get("data"))
        if current is not None:
            self._inject(current.ca_crt)  # so the plan may take the next step of a CA rotation
        now = datetime.now(UTC)
        injected = current is not None
        wanted = plan(current, self.hosts, now, self.cert_seconds, self.ca_seconds, injected)
        if wanted is not None:
            secret["data"] = wanted.secret_data()
            try:
                self.kube.request("PUT", self._secret_path(), body=secret)
                log.info("renewed the certificates in Secret %s/%s", self.namespace, self.secret)
                current = wanted
            except ApiError as exc:
                if exc.status != 409:
                    raise
                # Another replica wrote first: take what it wrote.
                current = Material.from_secret(
                    self.kube.request("GET", self._secret_path()).get("data")
                )
            assert current is not None
            self._inject(current.ca_crt)
        assert current is not None
        return current
