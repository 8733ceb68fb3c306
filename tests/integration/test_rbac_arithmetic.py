"""The operator's RBAC arithmetic (rbac.py) against the API server's own authorizer: for the same
rules and requests, `covered` says what a SubjectAccessReview says. The excess check and the
plan rest on it, so a difference is a false excess or a missed one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from appidentity.kube import Kube
from appidentity.rbac import Request, covered
from support import create, wait_until

USER = "appid-test-arithmetic"
RBAC = "rbac.authorization.k8s.io"
URL_RULES = [
    {"nonResourceURLs": ["/appid-a/**", "/appid-b*", "/appid-c/*", "/appid-d"], "verbs": ["get"]}
]
URLS = [
    "/appid-a/x",
    "/appid-a/x/y",
    "/appid-a",
    "/appid-a/",
    "/appid-b",
    "/appid-bee/z",
    "/appid-c",
    "/appid-c/z",
    "/appid-d",
    "/appid-d/e",
    "/appid-e",
]


@pytest.fixture
def bound_user(kube: Kube) -> Iterator[str]:
    create(
        kube,
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "ClusterRole",
            "metadata": {"name": USER},
            "rules": URL_RULES,
        },
    )
    create(
        kube,
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": USER},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": USER},
            "subjects": [{"apiGroup": RBAC, "kind": "User", "name": USER}],
        },
    )
    # RBAC reaches the authorizer a moment after it is written: the comparison starts once the
    # exact URL is allowed (the first URLs asked were sometimes denied under load).
    exact = Request("get", url="/appid-d")
    wait_until(lambda: kube.subject_access_review({"user": USER}, exact), 10, "the binding")
    yield USER
    kube.delete("ClusterRoleBinding", None, USER)
    kube.delete("ClusterRole", None, USER)


def test_non_resource_urls_are_covered_exactly_as_the_api_server_says(
    kube: Kube, bound_user: str
) -> None:
    """Among them `/appid-a/**`: the API server strips every trailing star, not just one."""

    def both(url: str) -> tuple[bool, bool]:
        req = Request("get", url=url)
        return kube.subject_access_review({"user": bound_user}, req), covered(URL_RULES, req)

    answers = {url: both(url) for url in URLS}
    assert {url: a for url, a in answers.items() if a[0] != a[1]} == {}
    assert answers["/appid-a/x/y"] == (True, True)  # the case a one-star strip got wrong
    assert answers["/appid-e"] == (False, False)
