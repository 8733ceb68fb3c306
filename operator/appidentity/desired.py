"""Pure builders: one Identity in, the plain-dict manifests it should produce out.

One builder per kind, none of them talks to the API server, so `render` can print exactly what
the operator would apply, and drift can be judged by comparing these dicts with what exists.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .model import CONSENT_ANNOTATION, Identity, Rule

RBAC = "rbac.authorization.k8s.io/v1"
Manifest = dict[str, Any]


def _meta(identity: Identity, name: str, namespace: str | None = None) -> dict[str, Any]:
    """Children of one Identity share its labels and owner reference (the operator keeps the
    desired objects of thousands of identities in memory); builders replace, never edit them."""
    meta: dict[str, Any] = {"name": name, "labels": identity.labels}
    if namespace is not None:
        meta["namespace"] = namespace
    # Only same-namespace children may point at the identity: the garbage collector treats a
    # cross-namespace or cluster-scoped dependent's namespaced owner as absent and deletes it.
    if namespace == identity.namespace:
        meta["ownerReferences"] = identity.owner_references
    return meta


def service_account(identity: Identity) -> Manifest:
    sa = identity.spec.service_account
    meta = _meta(identity, identity.service_account, identity.namespace)
    meta["labels"] = {**sa.labels, **meta["labels"]}
    if sa.annotations:
        meta["annotations"] = dict(sa.annotations)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta,
        "automountServiceAccountToken": sa.automount_token,
    }


@dataclass(frozen=True)
class TokenMaterial:
    """What goes into a Bound token Secret. The token is only ever held, never rendered."""

    token: str = field(repr=False)
    expires_at: str
    ca_crt: bytes
    server: str
    # Whether the API server accepts the token: a kubeconfig with any other is of no use.
    for_api_server: bool = True


def _b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


def kubeconfig(identity: Identity, server: str, ca_crt: bytes, token: str) -> str:
    """A kubeconfig usable with `kubectl --kubeconfig`, scoped to the identity's namespace.

    Written as JSON, which is YAML too: PyYAML's pure-Python emitter spent ~25 ms a kubeconfig on
    the long certificate and token strings, the largest CPU cost of provisioning at scale."""
    name = identity.service_account
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "cluster",
                    "cluster": {"server": server, "certificate-authority-data": _b64(ca_crt)},
                }
            ],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [
                {
                    "name": name,
                    "context": {
                        "cluster": "cluster",
                        "user": name,
                        "namespace": identity.namespace,
                    },
                }
            ],
            "current-context": name,
        },
        indent=2,
    )


def token_secret(
    identity: Identity, material: TokenMaterial | None = None, legacy_token: str | None = None
) -> Manifest:
    """The token Secret, always whole: under server-side apply, a field the operator applied
    before and leaves out now is removed.

    Bound: Opaque, holding the minted token once there is one. Legacy: a service-account-token
    Secret whose token the cluster's token controller writes; the operator adds only the
    kubeconfig (built from that token), a key the controller does not touch."""
    meta = _meta(identity, identity.secret_name, identity.namespace)
    if identity.spec.token.type == "Legacy":
        meta["annotations"] = {"kubernetes.io/service-account.name": identity.service_account}
        secret: Manifest = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "kubernetes.io/service-account-token",
        }
        if legacy_token is not None and material is not None and identity.spec.token.kubeconfig:
            config = kubeconfig(identity, material.server, material.ca_crt, legacy_token)
            secret["data"] = {"kubeconfig": _b64(config)}
        return secret
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque"}
    if material is not None:
        data = {
            "token": _b64(material.token),
            "ca.crt": _b64(material.ca_crt),
            "namespace": _b64(identity.namespace),
            "expiresAt": _b64(material.expires_at),
        }
        if identity.spec.token.kubeconfig and material.for_api_server:
            data["kubeconfig"] = _b64(
                kubeconfig(identity, material.server, material.ca_crt, material.token)
            )
        secret["data"] = data
    return secret


TOKEN_SECRET_OF = "appidentity.dev/token-secret"  # on the sentinel: the Secret it watches for


def token_sentinel(identity: Identity, secret_uid: str) -> Manifest:
    """An empty Role (it grants nothing, and nothing binds it) whose only owner is the token
    Secret, so the garbage collector deletes it soon after that Secret. The operator watches
    the Roles it manages but not Secrets (that would need list/watch on every Secret in the
    cluster): this deletion is how it learns within seconds that the Secret, and the token
    bound to it, are gone."""
    meta: dict[str, Any] = {
        "name": f"{identity.secret_name}:sentinel",
        "namespace": identity.namespace,
        "labels": identity.labels,
        "annotations": {TOKEN_SECRET_OF: identity.secret_name},
        "ownerReferences": [
            {"apiVersion": "v1", "kind": "Secret", "name": identity.secret_name, "uid": secret_uid}
        ],
    }
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta}


def sentinel_key(identity: Identity) -> tuple[str, str, str]:
    return ("Role", identity.namespace, f"{identity.secret_name}:sentinel")


def _subject(identity: Identity) -> dict[str, str]:
    return {
        "kind": "ServiceAccount",
        "name": identity.service_account,
        "namespace": identity.namespace,
    }


def role(identity: Identity, name: str, namespace: str, rules: Sequence[Rule]) -> Manifest:
    return {
        "apiVersion": RBAC,
        "kind": "Role",
        "metadata": _meta(identity, name, namespace),
        "rules": [r.to_k8s() for r in rules],
    }


def role_binding(
    identity: Identity, name: str, namespace: str, ref_kind: str, ref_name: str
) -> Manifest:
    return {
        "apiVersion": RBAC,
        "kind": "RoleBinding",
        "metadata": _meta(identity, name, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": ref_kind, "name": ref_name},
        "subjects": [_subject(identity)],
    }


def cluster_role(identity: Identity) -> Manifest:
    return {
        "apiVersion": RBAC,
        "kind": "ClusterRole",
        "metadata": _meta(identity, cluster_object_name(identity)),
        "rules": [r.to_k8s() for r in identity.spec.cluster_rules],
    }


def cluster_role_binding(identity: Identity) -> Manifest:
    name = cluster_object_name(identity)
    return {
        "apiVersion": RBAC,
        "kind": "ClusterRoleBinding",
        "metadata": _meta(identity, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [_subject(identity)],
    }


def cluster_object_name(identity: Identity) -> str:
    return f"appidentity:{identity.namespace}:{identity.name}"


def grant_base_name(identity: Identity, namespace: str) -> str:
    """Role/RoleBinding name in a namespace: the identity's name at home, qualified elsewhere
    so that identities of the same name from two namespaces do not collide."""
    if namespace == identity.namespace:
        return identity.name
    return f"{identity.namespace}.{identity.name}"


def _grants_in(
    identity: Identity,
    namespace: str,
    rules: Sequence[Rule],
    cluster_roles: Sequence[str],
    bind: bool,
) -> list[Manifest]:
    base = grant_base_name(identity, namespace)
    out: list[Manifest] = []
    if rules:
        out.append(role(identity, base, namespace, rules))
        if bind:
            out.append(role_binding(identity, base, namespace, "Role", base))
    if bind:
        out += [
            role_binding(identity, f"{base}:{cr}", namespace, "ClusterRole", cr)
            for cr in cluster_roles
        ]
    return out


def consents(namespace_annotations: Mapping[str, str], identity_namespace: str) -> bool:
    """Whether a namespace accepts grants from identities in `identity_namespace`."""
    listed = namespace_annotations.get(CONSENT_ANNOTATION, "")
    return identity_namespace in {n.strip() for n in listed.split(",")}


@dataclass(frozen=True)
class Desired:
    """What should exist for one identity, in apply order (grantees before grants)."""

    objects: list[Manifest]
    refused_namespaces: list[str]
    active: bool

    def keys(self) -> set[tuple[str, str, str]]:
        return {object_key(o) for o in self.objects}


def object_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace", ""), meta["name"])


def desired_state(identity: Identity, consenting: set[str], active: bool) -> Desired:
    """All objects except the token Secret (whose content depends on the minted token).

    Outside the schedule window the Roles stay but no binding exists, so no token of the
    ServiceAccount carries any grant."""
    spec = identity.spec
    objects = [service_account(identity)]
    objects += _grants_in(identity, identity.namespace, spec.rules, spec.cluster_roles, active)
    refused: list[str] = []
    for grant in spec.namespaces:
        if grant.name not in consenting:
            refused.append(grant.name)
            continue
        objects += _grants_in(identity, grant.name, grant.rules, grant.cluster_roles, active)
    if spec.cluster_rules:
        objects.append(cluster_role(identity))
        if active:
            objects.append(cluster_role_binding(identity))
    return Desired(objects=objects, refused_namespaces=refused, active=active)


def is_subset(desired: Any, actual: Any) -> bool:
    """True when everything `desired` says is also in `actual` (extra fields are fine)."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and is_subset(v, actual[k]) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(desired) == len(actual)
            and all(is_subset(d, a) for d, a in zip(desired, actual, strict=True))
        )
    return bool(desired == actual)


def render(identity: Identity) -> list[Manifest]:
    """Everything the operator would create, assuming every named namespace consents and the
    schedule is active: the reviewable picture for a GitOps diff. The token is never rendered."""
    desired = desired_state(identity, set(identity.grant_namespaces), active=True)
    return [*desired.objects[:1], token_secret(identity), *desired.objects[1:]]
