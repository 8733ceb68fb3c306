"""The operator's CPU per request, by transport: why token requests bypass the kubernetes client.

    .venv/bin/python bench/clientcost.py --kubeconfig .state/bench/admin.kubeconfig [--count 400]

Sends the same SelfSubjectAccessReview, with a freshly minted token of the `default`
ServiceAccount of `default`, through (1) the kubernetes client and urllib3 (a credential-free
ApiClient, as the operator's token clients used), (2) the operator's TokenTransport (the standard
library's http.client with kept-alive connections), and (3) urllib3 alone, one after another on
warm connections, and prints this process's CPU time and the wall time per request side by side.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from appidentity.kube import (
    ClientTransport,
    Http,
    Kube,
    TokenTransport,
    credential_free,
    token_transport,
)
from kubernetes import client

REVIEW = {
    "apiVersion": "authorization.k8s.io/v1",
    "kind": "SelfSubjectAccessReview",
    "spec": {"resourceAttributes": {"verb": "get", "resource": "pods", "namespace": "default"}},
}
PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def measure(send: Callable[[], Any], count: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per request, after a warm-up request."""
    send()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        send()
    return (
        1000 * (time.process_time() - cpu) / count,
        1000 * (time.perf_counter() - wall) / count,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--count", type=int, default=400)
    args = parser.parse_args()
    kube = Kube.connect(args.kubeconfig)
    token = kube.request_token("default", "default", 3600, [])["status"]["token"]

    bare = credential_free(kube.api.configuration, kube.ca_crt)
    via_client = Http(kube.api, ClientTransport(client.ApiClient(bare), False), token)
    transport = token_transport(kube.api.configuration, kube.ca_crt, 8)
    assert isinstance(transport, TokenTransport)
    via_stdlib = Http(kube.api, transport, token)
    pool = client.ApiClient(bare).rest_client.pool_manager
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }

    def via_urllib3() -> None:
        pool.request("POST", kube.server + PATH, json=REVIEW, headers=headers).json()

    rows = [
        (
            "kubernetes client + urllib3",
            measure(lambda: via_client.request("POST", PATH, body=REVIEW), args.count),
        ),
        (
            "TokenTransport (http.client)",
            measure(lambda: via_stdlib.request("POST", PATH, body=REVIEW), args.count),
        ),
        ("urllib3 alone", measure(via_urllib3, args.count)),
    ]
    base = rows[0][1][0]
    print(f"{'transport':32s} {'CPU ms/req':>11s} {'wall ms/req':>12s} {'CPU vs client':>14s}")
    for name, (cpu, wall) in rows:
        print(f"{name:32s} {cpu:11.3f} {wall:12.3f} {cpu / base:13.2f}x")


if __name__ == "__main__":
    main()
