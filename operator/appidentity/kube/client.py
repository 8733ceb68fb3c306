"""The operator's own connection: reads, creates, server-side applies and deletes of plain dict
objects under one field manager, TokenRequests, Events, status patches, reviews about other
users, and clients that authenticate with nothing but a minted token."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from .. import FIELD_MANAGER, GROUP, VERSION
from ..rbac import Request
from .rest import ApiError, Http, load_configuration, path_for, review_attributes
from .transport import OWN_PER_WORKER, own_transport, token_transport


class Kube(Http):
    """The operator's own connection (its ServiceAccount in a cluster, a kubeconfig locally)."""

    def __init__(
        self,
        api: client.ApiClient,
        ca_crt: bytes,
        public_server: str | None = None,
        reload: Callable[[], client.Configuration] | None = None,
        workers: int = 1,
    ):
        """`workers`: the threads that use it at once (the connections kept open follow)."""
        super().__init__(api, own_transport(api, ca_crt, reload, workers))
        self.ca_crt = ca_crt
        # The address written into identities' kubeconfigs; in a cluster the operator's own
        # address is the in-cluster Service, which is right for Pods but not for laptops.
        self.public_server = public_server or self.server
        self._tokens = token_transport(api.configuration, ca_crt, workers)

    @classmethod
    def connect(
        cls, kubeconfig: str | None = None, public_server: str | None = None, workers: int = 1
    ) -> Kube:
        cfg = load_configuration(kubeconfig)
        # Where the kubernetes client carries the operator's own requests (a proxy, a TLS server
        # name), its pool keeps as many connections as the workers use at once.
        cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize, OWN_PER_WORKER * workers)
        ca_crt = Path(cfg.ssl_ca_cert).read_bytes() if cfg.ssl_ca_cert else b""
        return cls(
            client.ApiClient(cfg),
            ca_crt,
            public_server,
            lambda: load_configuration(kubeconfig),
            workers,
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
                "spec": {**user, **review_attributes(req)},
            },
        )
        return bool(review.get("status", {}).get("allowed"))

    def token_client(self, token: str) -> Http:
        """A client that authenticates with the given token and nothing else. All token clients
        share one pool of connections that carry no credentials of their own (no client
        certificate, no operator token): a TLS handshake per verification cost the API server
        more than the access reviews themselves."""
        return Http(self.api, self._tokens, token)
