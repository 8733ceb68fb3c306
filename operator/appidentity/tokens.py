"""Pure token decisions: when a Bound token must be minted again, and when it should refresh.

What the operator knows about a token it minted lives in annotations on the token Secret
(never the token itself), so a restarted operator makes the same decision without a status.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .model import Identity, rfc3339

ISSUED_AT = "appidentity.dev/token-issued-at"
REFRESH_AT = "appidentity.dev/token-refresh-at"
EXPIRES_AT = "appidentity.dev/token-expires-at"
CONFIG = "appidentity.dev/token-config"
BOUND_TO = "appidentity.dev/token-bound-to"
ROTATE_FRACTION = 0.8
# Set by `kubectl appid rotate` (any new value); status.token.rotation echoes the last one done.
ROTATE_ANNOTATION = "appidentity.dev/rotate"


def refresh_at(issued: datetime, expires: datetime) -> datetime:
    """80% of the token's real lifetime, as granted by the API server (not as requested)."""
    return issued + (expires - issued) * ROTATE_FRACTION


def config_hash(identity: Identity) -> str:
    """Everything that shapes the minted token; a change means the token must be minted again."""
    token = identity.spec.token
    shape = {
        "sa": identity.service_account,
        "seconds": token.lifetime_seconds,
        "audiences": sorted(token.audiences),
        "kubeconfig": token.kubeconfig,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def bound_to(secret_uid: str, sa_uid: str) -> str:
    return f"{secret_uid}/{sa_uid}"


def token_annotations(
    identity: Identity, issued: datetime, expires: datetime, secret_uid: str, sa_uid: str
) -> dict[str, str]:
    return {
        ISSUED_AT: rfc3339(issued),
        EXPIRES_AT: rfc3339(expires),
        REFRESH_AT: rfc3339(refresh_at(issued, expires)),
        CONFIG: config_hash(identity),
        BOUND_TO: bound_to(secret_uid, sa_uid),
    }


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def rotation_requested(body: Mapping[str, Any]) -> str | None:
    """The rotation asked for on the AppIdentity that its status does not show done yet."""
    asked = ((body.get("metadata") or {}).get("annotations") or {}).get(ROTATE_ANNOTATION)
    done = ((body.get("status") or {}).get("token") or {}).get("rotation")
    return str(asked) if asked and asked != done else None


def why_mint(
    identity: Identity, secret: Mapping[str, Any] | None, sa_uid: str, now: datetime
) -> str | None:
    """Why a new Bound token is needed, or None while the one in the Secret is good."""
    if secret is None:
        return "the token Secret does not exist"
    annotations = secret.get("metadata", {}).get("annotations") or {}
    if "token" not in (secret.get("data") or {}):
        return "the token Secret holds no token"
    if annotations.get(CONFIG) != config_hash(identity):
        return "the token settings changed"
    if annotations.get(BOUND_TO) != bound_to(secret["metadata"].get("uid", ""), sa_uid):
        return "the ServiceAccount or Secret was replaced"
    try:
        refresh = parse_time(annotations[REFRESH_AT])
    except (KeyError, ValueError):
        return "the token's refresh time is unknown"
    if now >= refresh:
        return "80% of the token's lifetime has passed"
    return None


def secret_token(secret: Mapping[str, Any] | None) -> str | None:
    """The token held in a Secret, decoded; callers must keep it out of any output."""
    data = (secret or {}).get("data") or {}
    raw = data.get("token")
    return base64.b64decode(raw).decode() if raw else None
