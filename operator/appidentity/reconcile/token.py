"""The token's lifecycle: kept while valid, minted (bound to its Secret) when missing, expiring,
or tampered with, waited for when the cluster's token controller fills a legacy Secret, and
revoked (its Secret deleted) outside the schedule."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .. import desired as build
from .. import status as st
from .. import tokens
from ..model import Identity, rfc3339
from ..verify.run import for_api_server
from .state import Case, Event, Memory, Runtime, TokenState

AUDIENCES = "appidentity.dev/token-audiences"


def token_phase(
    rt: Runtime, case: Case, sa: Mapping[str, Any], secret: dict[str, Any] | None, mem: Memory
) -> TokenState:
    """Outside the schedule: the Secret deleted (revoking its token). Inside: a valid token,
    minted or kept; a new one is due for a proof. A rotation asked for (`kubectl appid rotate`)
    revokes the current token first, by deleting its Secret."""
    identity = case.identity
    if not case.active:
        if _revoke(rt, identity, secret):
            gone = "outside the schedule window: token Secret deleted"
            case.events.append(Event("Normal", "TokenRevoked", gone))
        message = schedule_message(identity, case.now)
        return TokenState(st.Condition(st.TOKEN_ISSUED, False, "ScheduleInactive", message))
    rotation = tokens.rotation_requested(case.body)
    had_token = bool((case.previous.get("token") or {}).get("expiresAt"))
    why: str | None = None
    if rotation:
        if _revoke(rt, identity, secret):
            done = f"token revoked on request ({tokens.ROTATE_ANNOTATION}: {rotation})"
            case.events.append(Event("Normal", "TokenRevoked", done))
        secret, why = None, "rotation requested"
    elif had_token and tokens.secret_token(secret) is None:
        why = "the token Secret was deleted or emptied, revoking its token"
    token = (
        _bound_token(rt, identity, sa, secret, case.now, why)
        if identity.spec.token.type == "Bound"
        else _legacy_token(rt, identity, secret)
    )
    token.rotation = rotation or ""
    if token.issued:
        mem.verify_soon = True
        # The first token of an identity is part of its provisioning, which its first outcome
        # Event reports; later ones (rotation, repair) get an Event of their own.
        if had_token:
            what = f"new token minted ({token.why}), valid until {token.expires_at}"
            case.events.append(Event("Normal", "TokenIssued", what))
    return token


def schedule_message(identity: Identity, now: datetime) -> str:
    schedule = identity.spec.schedule
    when: datetime | None
    if schedule.not_before and now < schedule.not_before:
        state, when = "not active before", schedule.not_before
    else:
        state, when = "expired at", schedule.expires_at
    return f"schedule: {state} {rfc3339(when) if when else ''}; no bindings, no token"


NO_KUBECONFIG = "; no kubeconfig written: the token's audiences exclude the API server's"


def _valid(expires_at: str, for_api_server: bool, identity: Identity) -> st.Condition:
    # The same words for a kept and a new token: no status write just for wording.
    note = NO_KUBECONFIG if identity.spec.token.kubeconfig and not for_api_server else ""
    message = f"Bound token valid until {expires_at}{note}"
    return st.Condition(st.TOKEN_ISSUED, True, "TokenValid", message)


def _bound_token(
    rt: Runtime,
    identity: Identity,
    sa: Mapping[str, Any],
    secret: dict[str, Any] | None,
    now: datetime,
    why: str | None,
) -> TokenState:
    """Kept while valid; else minted, for `why` when the caller knows what happened."""
    if secret is None:  # revoked now, or it vanished since this reconcile created or read it
        secret = rt.kube.apply(build.token_secret(identity))
    sa_uid = sa["metadata"]["uid"]
    why = why or tokens.why_mint(identity, secret, sa_uid, now)
    if why is None and not build.is_subset(build.token_secret(identity), secret):
        # Re-applying the Secret means re-stating its token; a fresh one is the clean way.
        why = "the token Secret was modified"
    if why is None:
        annotations = secret["metadata"].get("annotations") or {}
        audiences = audiences_of(secret)
        return TokenState(
            _valid(annotations[tokens.EXPIRES_AT], _for_api_server(rt, audiences), identity),
            token=tokens.secret_token(secret),
            audiences=audiences,
            expires_at=annotations[tokens.EXPIRES_AT],
            refresh_at=tokens.parse_time(annotations[tokens.REFRESH_AT]),
            secret_uid=secret["metadata"]["uid"],
        )
    return _mint(rt, identity, secret, sa_uid, now, why)


def _mint(
    rt: Runtime, identity: Identity, secret: Mapping[str, Any], sa_uid: str, now: datetime, why: str
) -> TokenState:
    """A TokenRequest bound to the Secret (deleting the Secret revokes the token), written
    into that Secret with its kubeconfig and the annotations that say when to refresh."""
    response = rt.kube.request_token(
        identity.namespace,
        identity.service_account,
        identity.spec.token.lifetime_seconds,
        list(identity.spec.token.audiences),
        bound_secret=(identity.secret_name, secret["metadata"]["uid"]),
    )
    token = response["status"]["token"]
    expires = tokens.parse_time(response["status"]["expirationTimestamp"])
    audiences = list(response.get("spec", {}).get("audiences") or [])
    for_api = _for_api_server(rt, audiences)
    material = build.TokenMaterial(
        token, rfc3339(expires), rt.kube.ca_crt, rt.kube.public_server, for_api
    )
    manifest = build.token_secret(identity, material)
    manifest["metadata"]["annotations"] = {
        **tokens.token_annotations(identity, now, expires, secret["metadata"]["uid"], sa_uid),
        AUDIENCES: ",".join(audiences),
    }
    rt.kube.apply(manifest)
    return TokenState(
        _valid(rfc3339(expires), for_api, identity),
        token=token,
        audiences=audiences,
        expires_at=rfc3339(expires),
        refresh_at=tokens.refresh_at(now, expires),
        issued=True,
        why=why,
        secret_uid=secret["metadata"]["uid"],
    )


def _for_api_server(rt: Runtime, audiences: list[str]) -> bool:
    """Whether the API server accepts a token of these audiences: none means its own."""
    return not audiences or for_api_server(audiences, rt.baseline.api_audiences())


def audiences_of(secret: Mapping[str, Any]) -> list[str]:
    raw = (secret["metadata"].get("annotations") or {}).get(AUDIENCES, "")
    return [a for a in raw.split(",") if a]


def first_secret(rt: Runtime, identity: Identity) -> dict[str, Any]:
    """The token Secret as it is created, before any token is in it."""
    if identity.spec.token.type == "Bound":
        return build.token_secret(identity)
    return _legacy_secret(rt, identity, None)


def _legacy_secret(rt: Runtime, identity: Identity, token: str | None) -> dict[str, Any]:
    material = build.TokenMaterial("", "never", rt.kube.ca_crt, rt.kube.public_server)
    return build.token_secret(identity, material, legacy_token=token)


def _legacy_token(rt: Runtime, identity: Identity, secret: dict[str, Any] | None) -> TokenState:
    token = tokens.secret_token(secret)
    want = _legacy_secret(rt, identity, token)
    if secret is None or not build.is_subset(want, secret):
        secret = rt.kube.apply(want)
    if token is None:
        return TokenState(
            st.Condition(
                st.TOKEN_ISSUED,
                False,
                "WaitingForTokenController",
                "waiting for the cluster's token controller to fill the Secret",
            ),
            secret_uid=secret["metadata"]["uid"],
        )
    return TokenState(
        st.Condition(
            st.TOKEN_ISSUED,
            True,
            "TokenValid",
            "Legacy token filled by the token controller; it never expires",
        ),
        token=token,
        expires_at="never",
        secret_uid=secret["metadata"]["uid"],
    )


def _revoke(rt: Runtime, identity: Identity, secret: Mapping[str, Any] | None) -> bool:
    if secret is None:
        return False
    uid = secret["metadata"]["uid"]
    return rt.kube.delete("Secret", identity.namespace, identity.secret_name, uid)
