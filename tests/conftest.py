"""Fixtures shared by the whole suite: a real control plane, admin and token-only clients, and a
fresh namespace per test.

The cluster is the local one from ``hack/cluster.sh`` unless ``APPID_TEST_KUBECONFIG`` names
another (kind, a CI cluster, ...). The ambient ``KUBECONFIG`` is deliberately never read: a test
run must not be able to touch whatever cluster the developer's shell happens to point at.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from appidentity.kube import Kube
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from requester import RequesterWebhook, install, requester_mode
from support import (
    CLUSTER_RULES_NAMESPACE,
    CLUSTER_SH,
    OPERATOR_NAMESPACE,
    OPERATOR_SA,
    REPO,
    TEST_POLICY_FILE,
    TEST_STATE_DIR,
    Cluster,
    ImageOperator,
    InClusterOperator,
    Operator,
    Token,
    apply_deploy,
    replacing,
    requester_stamp,
    token_kubeconfig,
    wait_until,
)

BUILD_SH = REPO / "hack" / "build-control-plane.sh"
ENV_KUBECONFIG = "APPID_TEST_KUBECONFIG"
ENV_KEEP = "APPID_TEST_KEEP_CLUSTER"
# local (default): a local process with the admin kubeconfig; image: from `make image`'s image
# with a Pod's credentials (tests/support.py ImageOperator); in-cluster: deploy/'s Deployment.
OPERATOR_MODE = os.environ.get("APPID_TEST_OPERATOR", "local")


# --- collection --------------------------------------------------------------------------------


def _uses_cluster(item: pytest.Item) -> bool:
    return "cluster" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks every test that needs the cluster (directly or through another fixture)."""
    for item in items:
        if _uses_cluster(item):
            item.add_marker(pytest.mark.cluster)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Compiles the control plane before any test starts, if cluster tests will run.

    A cold build takes many minutes; done inside the ``cluster`` fixture it would count
    against the first test's timeout. When cached, this returns at once.
    """
    if session.config.option.collectonly or os.environ.get(ENV_KUBECONFIG):
        return
    if not any(_uses_cluster(item) for item in session.items):
        return
    build_log = REPO / ".state" / "build-control-plane.log"
    build_log.parent.mkdir(parents=True, exist_ok=True)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"control plane: ensuring binaries (first build logs to {build_log})")
    with build_log.open("w") as log:
        done = subprocess.run([str(BUILD_SH)], stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise pytest.UsageError(f"hack/build-control-plane.sh failed; see {build_log}")


# --- cluster -----------------------------------------------------------------------------------


def _current_cluster_entry(kubeconfig: Path) -> dict[str, Any]:
    """The ``cluster`` stanza of the kubeconfig's current context."""
    doc = yaml.safe_load(kubeconfig.read_text())
    contexts = {c["name"]: c["context"] for c in doc.get("contexts", [])}
    clusters = {c["name"]: c["cluster"] for c in doc.get("clusters", [])}
    context = contexts[doc["current-context"]]
    entry: dict[str, Any] = clusters[context["cluster"]]
    return entry


def _write_ca_bundle(kubeconfig: Path, entry: dict[str, Any], dest: Path) -> Path:
    """A CA file for clients that take a path (urllib, token-only ApiClients)."""
    if "certificate-authority-data" in entry:
        dest.write_bytes(base64.b64decode(entry["certificate-authority-data"]))
        return dest
    if "certificate-authority" in entry:
        path = Path(entry["certificate-authority"])
        return path if path.is_absolute() else kubeconfig.parent / path
    raise pytest.UsageError(f"{kubeconfig}: the current cluster names no CA; refusing to skip TLS")


def _start_local_cluster() -> Path:
    """``hack/cluster.sh up`` on the test state dir; returns the admin kubeconfig."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    done = subprocess.run(
        [str(CLUSTER_SH), "up", str(TEST_STATE_DIR)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(f"hack/cluster.sh up failed ({done.returncode}):\n{done.stderr[-4000:]}")
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"export KUBECONFIG=(.+)", last)
    assert match, f"unexpected last line from cluster.sh up: {last!r}"
    return Path(match.group(1))


def _stop_local_cluster() -> None:
    subprocess.run([str(CLUSTER_SH), "down", str(TEST_STATE_DIR)], check=True, timeout=120)


def _kubectl_path() -> str:
    local = REPO / "bin" / "kubectl"
    return str(local) if local.exists() else "kubectl"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The API server every cluster test talks to; started (and stopped) here unless external."""
    external_kubeconfig = os.environ.get(ENV_KUBECONFIG)
    if external_kubeconfig:
        kubeconfig = Path(external_kubeconfig).resolve()
    else:
        kubeconfig = _start_local_cluster()
    entry = _current_cluster_entry(kubeconfig)
    ca_file = _write_ca_bundle(kubeconfig, entry, tmp_path_factory.mktemp("ca") / "ca.crt")
    yield Cluster(
        kubeconfig=kubeconfig,
        server=str(entry["server"]).rstrip("/"),
        ca_file=ca_file,
        kubectl=_kubectl_path(),
        external=bool(external_kubeconfig),
    )
    if not external_kubeconfig and os.environ.get(ENV_KEEP) != "1":
        _stop_local_cluster()


@pytest.fixture(scope="session")
def admin_api(cluster: Cluster) -> Iterator[client.ApiClient]:
    """Cluster-admin client; never installed as the kubernetes package's global default."""
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig), persist_config=False)
    yield api
    api.close()


@pytest.fixture
def token_api(cluster: Cluster) -> Iterator[Callable[[Token | str], client.ApiClient]]:
    """Factory: an ApiClient that authenticates with the given bearer token and nothing else.

    No client certificate and no kubeconfig user: what such a client may do is exactly what
    the token's identity may do, which is the point of the RBAC tests.
    """
    made: list[client.ApiClient] = []

    def make(token: Token | str) -> client.ApiClient:
        raw = token if isinstance(token, str) else token.value
        configuration = client.Configuration(
            host=cluster.server,
            api_key={"BearerToken": raw},
            api_key_prefix={"BearerToken": "Bearer"},
            ssl_ca_cert=str(cluster.ca_file),
        )
        api = client.ApiClient(configuration)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


# --- namespaces --------------------------------------------------------------------------------


def namespace_name(test_name: str, prefix: str = "") -> str:
    """A unique, valid DNS label (<= 63 chars) that starts with `prefix` and still says which
    test made it."""
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-") or "test"
    suffix = uuid.uuid4().hex[:6]
    return f"{prefix}{slug[: 63 - len(prefix) - len(suffix) - 1].rstrip('-')}-{suffix}"


@pytest.fixture
def make_namespace(
    admin_api: client.ApiClient, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """Factory for extra namespaces (named with an optional prefix), all deleted (without
    waiting) when the test ends."""
    core = client.CoreV1Api(admin_api)
    created: list[str] = []

    def make(prefix: str = "") -> str:
        name = namespace_name(request.node.name, prefix)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        created.append(name)
        return name

    yield make
    for name in created:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def namespace(make_namespace: Callable[[], str]) -> str:
    """A fresh namespace for this test alone."""
    return make_namespace()


@pytest.fixture
def service_account_token(
    admin_api: client.ApiClient,
) -> Callable[[str, str], Token]:
    """Factory: creates ServiceAccount ``name`` in ``namespace`` and returns a TokenRequest token.

    The token has the API server's default audiences, so it authenticates to the API server.
    """
    core = client.CoreV1Api(admin_api)

    def make(namespace: str, name: str) -> Token:
        try:
            core.create_namespaced_service_account(
                namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec())
        response = core.create_namespaced_service_account_token(name, namespace, request)
        return Token(response.status.token)

    return make


# --- the operator -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Kube:
    """Admin access through the project's own API layer (plain dicts in and out)."""
    return Kube.connect(str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def requester_recording(cluster: Cluster) -> str:
    """How admission records the requester here: policy or webhook (tests/requester.py)."""
    mode = requester_mode(cluster)
    report = os.environ.get("APPID_TEST_MODE_FILE")  # hack/test_matrix.py's table
    if report:
        Path(report).write_text(mode)
    return mode


@pytest.fixture(scope="session")
def crd_installed(
    cluster: Cluster,
    kube: Kube,
    requester_recording: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RequesterWebhook | None]:
    """The CRD and the requester recording, as `make install` installs them (in image mode the
    whole of deploy/, as a user installs it); in webhook mode, the webhook's replicas running.
    The operator grants nothing to an identity whose requester admission did not record."""
    webhook = None
    if OPERATOR_MODE == "image":
        assert requester_recording == "policy", "the image is tested where deploy/ (1.36+) applies"
        apply_deploy(cluster)
        cluster.run_kubectl("apply", "-f", str(REPO / "deploy" / "requester-policy.yaml"))
    else:
        webhook = RequesterWebhook(cluster, kube, tmp_path_factory.mktemp("webhook"))
        install(cluster, requester_recording, webhook.port)
        if requester_recording == "webhook":
            webhook.start()
    for ns in ("appidentity-system", CLUSTER_RULES_NAMESPACE):
        cluster.run_kubectl("create", "namespace", ns, check=False)
    wait_until(
        lambda: requester_stamp(cluster), 60, f"the requester {requester_recording} to take effect"
    )
    yield webhook if requester_recording == "webhook" else None
    if webhook is not None:
        webhook.stop()


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster, kube: Kube, crd_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator | InClusterOperator | ImageOperator]:
    """A local operator process; with APPID_TEST_OPERATOR=image, the operator run from its image
    with a Pod's credentials; with APPID_TEST_OPERATOR=in-cluster, the one deploy/ installed
    into the cluster that APPID_TEST_KUBECONFIG names."""
    if OPERATOR_MODE == "in-cluster":
        yield InClusterOperator(cluster)
        return
    workdir = tmp_path_factory.mktemp("operator")
    if OPERATOR_MODE == "image":
        image = ImageOperator(cluster, kube, workdir, workdir / "operator.log")
        image.mount_image()
        try:
            image.start()
            yield image
            image.stop()
        finally:
            image.unmount_image()
        return
    op = Operator(cluster, workdir, workdir / "operator.log")
    op.start()
    yield op
    op.stop()


def _own_kubeconfig(kube: Kube, cluster: Cluster, path: Path) -> Path:
    """A kubeconfig with a token of deploy/'s operator ServiceAccount and nothing else."""
    response = kube.request_token(OPERATOR_NAMESPACE, OPERATOR_SA, 7200, [])
    token = response["status"]["token"]
    return token_kubeconfig(cluster.server, cluster.ca_file, token, OPERATOR_SA, path)


@pytest.fixture(scope="module")
def own_sa_policy() -> Path:
    """The policy file of `own_sa_operator`; a module may override this fixture."""
    return TEST_POLICY_FILE


@pytest.fixture(scope="module")
def own_sa_operator(
    kube: Kube,
    cluster: Cluster,
    operator: Operator | InClusterOperator,
    own_sa_policy: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    """For this module, the operator runs with its own ServiceAccount under deploy/'s RBAC and
    grantable ceiling instead of the admin's credentials."""
    if not isinstance(operator, Operator):
        pytest.skip("the in-cluster operator already runs as its own ServiceAccount")
    for name in ("serviceaccount.yaml", "rbac.yaml", "grantable.yaml"):
        cluster.run_kubectl("apply", "-f", str(REPO / "deploy" / name))
    wait_until(
        lambda: (kube.get("ClusterRole", None, "appidentity-operator-grantable") or {}).get(
            "rules"
        ),
        30,
        "the grantable ceiling to aggregate",
    )
    workdir = tmp_path_factory.mktemp("own-sa")
    own = Operator(
        cluster,
        workdir,
        workdir / "operator.log",
        kubeconfig=_own_kubeconfig(kube, cluster, workdir / "operator.kubeconfig"),
        policy=own_sa_policy,
    )
    with replacing(operator, own):
        yield own
