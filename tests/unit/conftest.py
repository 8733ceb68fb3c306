"""Helpers for the unit tests: AppIdentity bodies and parsed Identities, no cluster involved."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from appidentity.model import Identity, parse_identity

POD_READER: dict[str, Any] = {
    "apiGroups": [""],
    "resources": ["pods"],
    "verbs": ["get", "list", "watch"],
}

BodyFactory = Callable[..., dict[str, Any]]
IdentityFactory = Callable[..., Identity]


def identity_body(
    spec: dict[str, Any] | None,
    name: str = "app",
    namespace: str = "team-a",
    uid: str = "uid-1234",
    generation: int = 3,
) -> dict[str, Any]:
    return {
        "apiVersion": "appidentity.dev/v1alpha1",
        "kind": "AppIdentity",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": generation},
        "spec": spec,
    }


@pytest.fixture
def body() -> BodyFactory:
    """Factory: an AppIdentity object as the API server would hand it over."""
    return identity_body


@pytest.fixture
def make_identity() -> IdentityFactory:
    """Factory: a parsed Identity; `spec` defaults to one rule that reads pods."""

    def make(spec: dict[str, Any] | None = None, **meta: Any) -> Identity:
        return parse_identity(
            identity_body({"rules": [POD_READER]} if spec is None else spec, **meta)
        )

    return make
