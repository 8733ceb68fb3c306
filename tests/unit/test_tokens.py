"""tokens.py: when a Bound token must be minted again, and when it should be refreshed."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from appidentity.model import Identity
from appidentity.tokens import (
    BOUND_TO,
    CONFIG,
    EXPIRES_AT,
    ISSUED_AT,
    REFRESH_AT,
    bound_to,
    config_hash,
    parse_time,
    refresh_at,
    secret_token,
    token_annotations,
    why_mint,
)

from .conftest import POD_READER, IdentityFactory

ISSUED = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
EXPIRES = ISSUED + timedelta(hours=1)
REFRESH = ISSUED + timedelta(minutes=48)
TOKEN = "eyJhbGciOiJSUzI1NiJ9.cGF5bG9hZA.c2ln"


def minted_secret(
    identity: Identity, secret_uid: str = "sec-1", sa_uid: str = "sa-1"
) -> dict[str, Any]:
    """A token Secret as the operator leaves it after minting at ISSUED for one hour."""
    return {
        "metadata": {
            "name": identity.secret_name,
            "uid": secret_uid,
            "annotations": token_annotations(identity, ISSUED, EXPIRES, secret_uid, sa_uid),
        },
        "data": {"token": base64.b64encode(TOKEN.encode()).decode()},
    }


def test_refresh_at_is_80_percent_of_the_lifetime() -> None:
    assert refresh_at(ISSUED, EXPIRES) == REFRESH


def test_refresh_at_follows_the_real_lifetime_not_the_requested_one() -> None:
    # the API server may grant more (e.g. the 1 year + extended tokens) or less than asked
    granted = ISSUED + timedelta(seconds=7 * 24 * 3600)
    assert refresh_at(ISSUED, granted) == ISSUED + timedelta(seconds=int(7 * 24 * 3600 * 0.8))


def test_token_annotations_record_times_config_and_binding(make_identity: IdentityFactory) -> None:
    identity = make_identity()
    assert token_annotations(identity, ISSUED, EXPIRES, "sec-1", "sa-1") == {
        ISSUED_AT: "2026-12-01T00:00:00Z",
        EXPIRES_AT: "2026-12-01T01:00:00Z",
        REFRESH_AT: "2026-12-01T00:48:00Z",
        CONFIG: config_hash(identity),
        BOUND_TO: "sec-1/sa-1",
    }


def test_annotation_keys_are_in_the_operator_domain() -> None:
    assert [ISSUED_AT, REFRESH_AT, EXPIRES_AT, CONFIG, BOUND_TO] == [
        "appidentity.dev/token-issued-at",
        "appidentity.dev/token-refresh-at",
        "appidentity.dev/token-expires-at",
        "appidentity.dev/token-config",
        "appidentity.dev/token-bound-to",
    ]


def test_parse_time_reads_rfc3339_z() -> None:
    assert parse_time("2026-12-01T00:48:00Z") == REFRESH


# --- why_mint -------------------------------------------------------------------------------------


def test_good_token_needs_no_mint(make_identity: IdentityFactory) -> None:
    identity = make_identity()
    assert (
        why_mint(identity, minted_secret(identity), "sa-1", REFRESH - timedelta(seconds=1)) is None
    )


def test_missing_secret_needs_a_mint(make_identity: IdentityFactory) -> None:
    assert why_mint(make_identity(), None, "sa-1", ISSUED) == "the token Secret does not exist"


@pytest.mark.parametrize(
    "data", [None, {}, {"ca.crt": "eA=="}], ids=["no-data", "empty", "no-token-key"]
)
def test_secret_without_token_needs_a_mint(
    make_identity: IdentityFactory, data: dict[str, str] | None
) -> None:
    identity = make_identity()
    secret = {**minted_secret(identity), "data": data}
    assert why_mint(identity, secret, "sa-1", ISSUED) == "the token Secret holds no token"


@pytest.mark.parametrize(
    "token",
    [{"expirationSeconds": 7200}, {"audiences": ["vault"]}, {"kubeconfig": False}],
    ids=["lifetime", "audiences", "kubeconfig"],
)
def test_changed_token_settings_need_a_mint(
    make_identity: IdentityFactory, token: dict[str, Any]
) -> None:
    before = make_identity()
    after = make_identity({"rules": [POD_READER], "token": token})
    assert why_mint(after, minted_secret(before), "sa-1", ISSUED) == "the token settings changed"


def test_missing_config_annotation_needs_a_mint(make_identity: IdentityFactory) -> None:
    identity = make_identity()
    secret = minted_secret(identity)
    del secret["metadata"]["annotations"][CONFIG]
    assert why_mint(identity, secret, "sa-1", ISSUED) == "the token settings changed"


def test_replaced_service_account_needs_a_mint(make_identity: IdentityFactory) -> None:
    identity = make_identity()
    assert (
        why_mint(identity, minted_secret(identity, sa_uid="sa-1"), "sa-2", ISSUED)
        == "the ServiceAccount or Secret was replaced"
    )


def test_replaced_secret_needs_a_mint(make_identity: IdentityFactory) -> None:
    identity = make_identity()
    secret = minted_secret(identity, secret_uid="sec-1")
    secret["metadata"]["uid"] = "sec-2"  # same annotations copied onto a new object
    assert why_mint(identity, secret, "sa-1", ISSUED) == "the ServiceAccount or Secret was replaced"


def test_unreadable_refresh_time_needs_a_mint(make_identity: IdentityFactory) -> None:
    identity = make_identity()
    secret = minted_secret(identity)
    secret["metadata"]["annotations"][REFRESH_AT] = "soon"
    assert why_mint(identity, secret, "sa-1", ISSUED) == "the token's refresh time is unknown"
    del secret["metadata"]["annotations"][REFRESH_AT]
    assert why_mint(identity, secret, "sa-1", ISSUED) == "the token's refresh time is unknown"


@pytest.mark.parametrize("late", [timedelta(0), timedelta(minutes=5)], ids=["at", "after"])
def test_refresh_time_reached_needs_a_mint(make_identity: IdentityFactory, late: timedelta) -> None:
    identity = make_identity()
    assert (
        why_mint(identity, minted_secret(identity), "sa-1", REFRESH + late)
        == "80% of the token's lifetime has passed"
    )


# --- config_hash ------------------------------------------------------------------------------


def test_config_hash_is_stable_and_short(make_identity: IdentityFactory) -> None:
    one, two = make_identity(), make_identity()
    assert config_hash(one) == config_hash(two)
    assert len(config_hash(one)) == 16


@pytest.mark.parametrize(
    "spec_change",
    [
        {"token": {"audiences": ["vault"]}},
        {"token": {"expirationSeconds": 7200}},
        {"serviceAccount": {"name": "other-sa"}},
        {"token": {"kubeconfig": False}},
    ],
    ids=["audiences", "lifetime", "service-account", "kubeconfig"],
)
def test_config_hash_changes_with_what_shapes_the_token(
    make_identity: IdentityFactory, spec_change: dict[str, Any]
) -> None:
    assert config_hash(make_identity({"rules": [POD_READER], **spec_change})) != config_hash(
        make_identity()
    )


def test_config_hash_ignores_audience_order(make_identity: IdentityFactory) -> None:
    a = make_identity({"rules": [POD_READER], "token": {"audiences": ["x", "y"]}})
    b = make_identity({"rules": [POD_READER], "token": {"audiences": ["y", "x"]}})
    assert config_hash(a) == config_hash(b)


def test_config_hash_ignores_grants(make_identity: IdentityFactory) -> None:
    assert config_hash(make_identity({"clusterRoles": ["view"]})) == config_hash(make_identity())


def test_explicit_default_lifetime_is_the_same_config(make_identity: IdentityFactory) -> None:
    explicit = make_identity({"rules": [POD_READER], "token": {"expirationSeconds": 3600}})
    assert config_hash(explicit) == config_hash(make_identity())


# --- secret_token -----------------------------------------------------------------------------


def test_secret_token_decodes_the_token(make_identity: IdentityFactory) -> None:
    assert secret_token(minted_secret(make_identity())) == TOKEN


@pytest.mark.parametrize("secret", [None, {}, {"data": None}, {"data": {"ca.crt": "eA=="}}])
def test_secret_token_is_none_without_a_token(secret: dict[str, Any] | None) -> None:
    assert secret_token(secret) is None


def test_bound_to_joins_secret_and_service_account_uids() -> None:
    assert bound_to("sec-1", "sa-1") == "sec-1/sa-1"
