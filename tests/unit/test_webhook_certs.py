"""webhook/certs.py: when the webhook renews its CA and serving certificate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from appidentity.webhook.certs import Material, plan
from cryptography import x509

HOSTS = ("appidentity-webhook.appidentity-system.svc", "127.0.0.1")
DAY = 86400.0
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _fresh() -> Material:
    made = plan(None, HOSTS, T0, 90 * DAY, 3650 * DAY, False)
    assert made is not None
    return made


def _serial(pem: bytes) -> int:
    return int(x509.load_pem_x509_certificate(pem).serial_number)


def test_a_fresh_secret_gets_a_ca_and_a_certificate_for_the_hosts() -> None:
    made = _fresh()
    cert = x509.load_pem_x509_certificate(made.tls_crt)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(n.value) for n in san} == set(HOSTS)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(made.ca_crt))
    assert Material.from_secret(made.secret_data()) == made


def test_nothing_changes_until_a_third_of_the_lifetime_is_left() -> None:
    made = _fresh()
    assert plan(made, HOSTS, T0 + timedelta(days=59), 90 * DAY, 3650 * DAY, True) is None
    renewed = plan(made, HOSTS, T0 + timedelta(days=61), 90 * DAY, 3650 * DAY, True)
    assert renewed is not None and renewed.ca_crt == made.ca_crt
    assert _serial(renewed.tls_crt) != _serial(made.tls_crt)


def test_other_hosts_or_a_shorter_lifetime_renew_the_certificate() -> None:
    made = _fresh()
    assert plan(made, ("localhost",), T0, 90 * DAY, 3650 * DAY, True) is not None
    assert plan(made, HOSTS, T0, 60.0, 3650 * DAY, True) is not None


def test_a_new_ca_joins_the_bundle_before_it_signs_what_is_served() -> None:
    made = _fresh()
    late = T0 + timedelta(days=2500)  # past two thirds of the CA's ten years
    step_one = plan(made, HOSTS, late, 90 * DAY, 3650 * DAY, True)
    assert step_one is not None
    bundle = x509.load_pem_x509_certificates(step_one.ca_crt)
    assert len(bundle) == 2 and step_one.tls_crt == made.tls_crt
    assert plan(step_one, HOSTS, late, 90 * DAY, 3650 * DAY, False) is None  # not injected yet
    step_two = plan(step_one, HOSTS, late, 90 * DAY, 3650 * DAY, True)
    assert step_two is not None
    x509.load_pem_x509_certificate(step_two.tls_crt).verify_directly_issued_by(bundle[0])


def test_an_expired_ca_leaves_the_bundle() -> None:
    made = _fresh()
    assert plan(made, HOSTS, T0 + timedelta(days=4000), 90 * DAY, 3650 * DAY, True) is not None
