"""verify/run.py's pure decision: which tokens the self-check may show to the API server."""

from __future__ import annotations

import pytest
from appidentity.verify.run import for_api_server

API = ["https://127.0.0.1:6443"]


@pytest.mark.parametrize(
    ("audiences", "expected"),
    [
        ([], True),  # no audiences asked: the API server's own
        (API, True),
        (["vault", *API], True),  # one token for both
        (["vault"], False),
        (["vault", "sts.example.com"], False),
    ],
    ids=["default", "api", "both", "vault", "two-external"],
)
def test_only_a_token_meant_for_the_api_server_is_sent_there(
    audiences: list[str], expected: bool
) -> None:
    assert for_api_server(audiences, API) is expected
