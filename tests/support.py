"""Helpers shared by the integration tests: the operator as a separate process, and ways to
drive and observe AppIdentities through the project's own API layer."""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from appidentity.kube import Http, Kube, path_for
from appidentity.policy import Policy
from appidentity.policy_manifests import ADMISSION_PARAMETERS, ADMISSION_POLICY

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SH = REPO / "hack" / "cluster.sh"
TEST_STATE_DIR = Path(os.environ.get("APPID_TEST_STATE_DIR", REPO / ".state" / "test-cluster"))


@dataclass(frozen=True)
class Token:
    """A bearer token that never shows up in reprs, assertion rewrites or tracebacks.

    Tests compare and pass tokens around; wrapping them keeps a failing assertion from
    printing a credential into CI logs. Use ``.value`` only where the raw string is needed.
    """

    value: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.value:
            raise ValueError("empty token")

    def __repr__(self) -> str:
        return f"Token(<{len(self.value)} chars, redacted>)"

    __str__ = __repr__


@dataclass(frozen=True)
class Cluster:
    """Where the API server is and how to talk to it."""

    kubeconfig: Path
    server: str
    ca_file: Path
    kubectl: str
    external: bool  # True when APPID_TEST_KUBECONFIG named it: not ours to start or stop

    def run_kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Runs kubectl against this cluster only, whatever KUBECONFIG the shell exports."""
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        return subprocess.run(
            [self.kubectl, "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )


OPERATOR_NAMESPACE = "appidentity-system"
OPERATOR_SA = "appidentity-operator"
TEST_POLICY_FILE = REPO / "tests" / "policy.yaml"
# The grant most tests give: read ConfigMaps in the identity's namespace.
READ_CONFIGMAPS = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
CLUSTER_RULES_NAMESPACE = yaml.safe_load(TEST_POLICY_FILE.read_text())["clusterRules"][
    "allowedNamespaces"
][0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Operator:
    """`appidentity-operator run` in a subprocess; stop/start simulate an outage."""

    cluster: Cluster
    workdir: Path
    log_path: Path
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    kubeconfig: Path | None = None
    policy: Path = TEST_POLICY_FILE
    proc: subprocess.Popen[bytes] | None = None
    # Re-checks every 2 s keep the suite fast; None runs the operator on its default schedule.
    recheck_seconds: float | None = 2
    extra_args: tuple[str, ...] = ()  # more `run` flags (the audit webhook receiver's)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appidentity",
                "run",
                "--all-namespaces",
                "--kubeconfig",
                str(self.kubeconfig or self.cluster.kubeconfig),
                "--policy",
                str(self.policy),
                "--metrics-port",
                str(self.metrics_port),
                "--liveness-port",
                str(self.liveness_port),
                *(("--recheck-seconds", str(self.recheck_seconds)) if self.recheck_seconds else ()),
                "--log-format",
                "json",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        wait_until(self._healthy, timeout=60, what="operator liveness endpoint")

    def _healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "operator exited; see its log"
        try:
            with socket.create_connection(("127.0.0.1", self.liveness_port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc:
            end_process(self.proc, sig)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return str(urllib.request.urlopen(url, timeout=5).read().decode())


@dataclass
class InClusterOperator:
    """The operator installed from deploy/ (e.g. by `make e2e-kind`): the same tests, driven
    through its Deployment instead of a local process."""

    cluster: Cluster
    namespace: str = "appidentity-system"
    deployment: str = "appidentity-operator"

    def _kubectl(self, *args: str) -> str:
        return self.cluster.run_kubectl("-n", self.namespace, *args).stdout

    def start(self) -> None:
        self._kubectl("scale", f"deployment/{self.deployment}", "--replicas=1")
        self._kubectl("rollout", "status", f"deployment/{self.deployment}", "--timeout=120s")

    def stop(self) -> None:
        self._kubectl("scale", f"deployment/{self.deployment}", "--replicas=0")
        self._kubectl(
            "wait",
            "--for=delete",
            "pod",
            "-l",
            "app.kubernetes.io/name=appidentity-operator",
            "--timeout=60s",
        )

    def log(self) -> str:
        return self._kubectl("logs", f"deployment/{self.deployment}", "--tail=-1")

    def metrics(self) -> str:
        path = f"/api/v1/namespaces/{self.namespace}/services/{self.deployment}-metrics:8080/proxy/metrics"
        return self.cluster.run_kubectl("get", "--raw", path).stdout


def token_kubeconfig(server: str, ca_file: Path, token: str, user: str, path: Path) -> Path:
    """A kubeconfig that authenticates with the bearer token alone (no client certificate), so
    what its client may do is exactly what the token's ServiceAccount may do."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {
                    "server": server,
                    "certificate-authority": str(ca_file),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def cel_literal(expression: str) -> Any:
    """The value of a constant CEL expression (bool, int, list of strings), in either quote
    style: deploy/ writes ['view'], the chart and policy-manifests write JSON."""
    text = " ".join(expression.split())
    if text in ("true", "false"):
        return text == "true"
    return ast.literal_eval(text)


def policy_of_admission(vap: dict[str, Any]) -> Policy:
    """The policy a ValidatingAdmissionPolicy's parameter variables enforce, read back into the
    operator's own model, so it can be compared with the ConfigMap's."""
    variables = {v["name"]: v["expression"] for v in vap["spec"]["variables"]}
    document: dict[str, Any] = {}
    for name, path in ADMISSION_PARAMETERS.items():
        *parents, leaf = path
        node = document
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = cel_literal(variables[name])
    return Policy.model_validate(document)


def admission_refusal(cluster: Cluster, doc: dict[str, Any]) -> list[str] | None:
    """None if a server-side dry run accepts the AppIdentity, else the admission policy's
    messages (one per violation, as the operator words them)."""
    done = cluster.run_kubectl(
        "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(doc), check=False
    )
    if done.returncode == 0:
        return None
    match = re.search(
        rf"ValidatingAdmissionPolicy '{ADMISSION_POLICY}' .*denied request: (.*)", done.stderr
    )
    assert match, f"refused, but not by the admission policy:\n{done.stderr}"
    return [m.strip() for m in match.group(1).strip().split("; ")]


# --- the operator run from its image ------------------------------------------------------

RUN_IMAGE = REPO / "hack" / "run-image.sh"
DEPLOY_FOR_TESTS = REPO / "hack" / "deploy-for-tests.sh"
DEPLOYMENT = yaml.safe_load((REPO / "deploy" / "deployment.yaml").read_text())
GRACE_SECONDS = int(DEPLOYMENT["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def image_name() -> str:
    """What `make image` tags (fully qualified, as a cluster reads deploy/'s image name)."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return f"docker.io/library/appidentity-operator:{version}"


def podman(*args: str) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"podman {args[0]} {args[1:2]}: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def apply_deploy(cluster: Cluster) -> None:
    """deploy/ as users apply it, with the suite's policy (hack/deploy-for-tests.sh)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["KUBECTL"] = cluster.kubectl
    subprocess.run(
        [str(DEPLOY_FOR_TESTS), str(cluster.kubeconfig)], env=env, check=True, timeout=180
    )


@dataclass
class ServiceAccountVolume:
    """The kubelet's projected ServiceAccount volume on the host side: `token`, `ca.crt` and
    `namespace` as links into `..data`, itself a link to a timestamped directory. An update is
    a new directory, swapped in by renaming a new `..data` link over the old one (atomic), so a
    reader never sees half of it."""

    path: Path

    def write(self, files: dict[str, bytes]) -> None:
        self.path.mkdir(mode=0o755, parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.") + uuid.uuid4().hex[:9]
        payload = self.path / stamp
        payload.mkdir(mode=0o755)
        for name, content in files.items():
            (payload / name).write_bytes(content)
            (payload / name).chmod(0o644)
        staged = self.path / "..data_tmp"
        staged.unlink(missing_ok=True)
        staged.symlink_to(stamp)
        old = os.readlink(self.path / "..data") if (self.path / "..data").is_symlink() else None
        os.replace(staged, self.path / "..data")
        for name in files:
            if not (self.path / name).is_symlink():
                (self.path / name).symlink_to(f"..data/{name}")
        if old:
            shutil.rmtree(self.path / old)


@dataclass
class ImageOperator:
    """The operator run from `make image`'s image as deploy/'s Pod runs it, with no container
    runtime (hack/run-image.sh): its ServiceAccount's bound token, the policy ConfigMap and the
    Deployment's args and env; the API server reached through KUBERNETES_SERVICE_HOST/_PORT, so
    the client's in-cluster configuration is the one taken. No kubeconfig inside.

    Each token is bound to a Secret of its own (a kubelet binds it to the Pod; here no Pod
    runs), so revoking one is deleting its Secret. The network namespace is the host's (the API
    server is on its loopback), so the metrics and liveness ports are free ones instead of
    8080/8081: several suites run on one machine."""

    cluster: Cluster
    kube: Kube
    workdir: Path
    log_path: Path
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    rootfs: Path | None = None
    token_secret: str | None = None
    exit_code: int | None = None
    pod_name: str = field(default_factory=lambda: f"{OPERATOR_SA}-{uuid.uuid4().hex[:10]}")

    @property
    def volume(self) -> ServiceAccountVolume:
        return ServiceAccountVolume(self.workdir / "serviceaccount")

    def mount_image(self) -> None:
        if subprocess.run(["podman", "image", "exists", image_name()], check=False).returncode:
            raise RuntimeError(f"no image {image_name()}: run `make image` first")
        self.rootfs = Path(podman("image", "mount", image_name()))

    def unmount_image(self) -> None:
        if self.rootfs is not None:
            podman("image", "unmount", image_name())
            self.rootfs = None

    def mint_token(self, seconds: int = 3600) -> str:
        """A TokenRequest of the operator's ServiceAccount bound to a new Secret, written into
        the volume; returns that Secret's name (delete it to revoke the token)."""
        secret = self.kube.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": f"{self.pod_name}-token-{uuid.uuid4().hex[:5]}",
                    "namespace": OPERATOR_NAMESPACE,
                },
            }
        )
        meta = secret["metadata"]
        answer = self.kube.request_token(
            OPERATOR_NAMESPACE, OPERATOR_SA, seconds, [], (meta["name"], meta["uid"])
        )
        self.volume.write(
            {
                "token": answer["status"]["token"].encode(),
                "ca.crt": self.cluster.ca_file.read_bytes(),
                "namespace": OPERATOR_NAMESPACE.encode(),
            }
        )
        return str(meta["name"])

    def rotate(self) -> str:
        """What the kubelet does, then a revocation it does not do: a new token swapped into the
        volume, and the old one revoked by deleting its Secret. Returns the new Secret's name."""
        old, self.token_secret = self.token_secret, self.mint_token()
        if old:
            self.kube.delete("Secret", OPERATOR_NAMESPACE, old)
        return self.token_secret

    # The schedule sped up as for the local operator, so drift only a re-check can see (a
    # deleted token Secret) is found within a test's patience: the one addition to the
    # Deployment's args.
    TEST_ARGS = ("--recheck-seconds", "2")

    def _container(self) -> tuple[list[str], list[str], str]:
        """(command, environment, working directory) as the kubelet would assemble them."""
        config = json.loads(podman("image", "inspect", image_name()))[0]["Config"]
        container = DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]
        args = list(container["args"])
        ports = {"--metrics-port": self.metrics_port, "--liveness-port": self.liveness_port}
        for i, arg in enumerate(args[:-1]):
            if arg in ports:
                args[i + 1] = str(ports[arg])
        args += self.TEST_ARGS
        fields = {"metadata.namespace": OPERATOR_NAMESPACE, "metadata.name": self.pod_name}
        env = list(config.get("Env") or [])
        for var in container.get("env", []):
            value = var.get("value") or fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
            env.append(f"{var['name']}={value}")
        server = urlsplit(self.cluster.server)
        env += [
            f"KUBERNETES_SERVICE_HOST={server.hostname}",
            f"KUBERNETES_SERVICE_PORT={server.port}",
        ]
        return [*config["Entrypoint"], *args], env, str(config.get("WorkingDir") or "/")

    def _policy_volume(self) -> Path:
        """The ConfigMap's keys as files, read from the cluster as the kubelet reads them."""
        container = DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["policy"] == "/etc/appidentity", "run-image.sh mounts it there"
        configmap = self.kube.request(
            "GET", f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/configmaps/appidentity-policy"
        )
        directory = self.workdir / "policy"
        directory.mkdir(exist_ok=True)
        for key, value in configmap["data"].items():
            (directory / key).write_text(value)
        return directory

    def _argv(self, command: list[str] | None = None) -> list[str]:
        """hack/run-image.sh's command line: the image's entrypoint with the Deployment's args,
        or `command` in the same sandbox."""
        assert self.rootfs is not None, "mount_image() first"
        if self.token_secret is None:
            self.token_secret = self.mint_token()
        entrypoint, env, cwd = self._container()
        env_file = self.workdir / "env"
        env_file.write_text("".join(f"{line}\n" for line in env))
        scratch = self.workdir / f"scratch-{uuid.uuid4().hex[:6]}"
        scratch.mkdir()
        return [
            str(RUN_IMAGE),
            str(self.rootfs),
            str(scratch),
            str(self.volume.path),
            str(self._policy_volume()),
            self.pod_name,
            cwd,
            str(env_file),
            "--",
            *(command or entrypoint),
        ]

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self._argv(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ["PATH"]},
        )
        wait_until(self._healthy, timeout=60, what="operator liveness endpoint")

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """`command` from the image, in a sandbox of its own made exactly like the operator's."""
        return subprocess.run(
            self._argv(list(command)),
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": os.environ["PATH"]},
            check=False,
        )

    def _healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "operator exited; see its log"
        return answers_ok(f"http://127.0.0.1:{self.liveness_port}/healthz")

    @property
    def pid(self) -> int:
        """The operator's host PID: the only child of `unshare`, PID 1 in its namespace."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0])

    def stop(self, sig: int = signal.SIGTERM) -> float:
        """Signals the operator (as the kubelet does), SIGKILL after the grace period; returns
        the seconds it took to exit."""
        if not self.proc or self.proc.poll() is not None:
            self.proc = None
            return 0.0
        pid, began = self.pid, time.monotonic()
        os.kill(pid, sig)
        try:
            self.proc.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
            self.proc.wait()
        self.exit_code = self.proc.returncode
        self.proc = None
        return time.monotonic() - began

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return str(urllib.request.urlopen(url, timeout=5).read().decode())


def end_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signals a running process, SIGKILL if it is still there 30 s later."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def answers_ok(url: str) -> bool:
    """A health endpoint that answers 200 within a second."""
    try:
        return bool(urllib.request.urlopen(url, timeout=1).status == 200)
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition", every: float = 0.3
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


# --- AppIdentity helpers -------------------------------------------------------------------


def identity(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "appidentity.dev/v1alpha1",
        "kind": "AppIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def create(kube: Http, obj: dict[str, Any], strict: bool = False) -> dict[str, Any]:
    """POST the object (as whoever `kube` authenticates); `strict` refuses unknown fields the
    way kubectl's default does."""
    meta = obj["metadata"]
    created: dict[str, Any] = kube.request(
        "POST",
        path_for(obj["kind"], meta.get("namespace")),
        query={"fieldValidation": "Strict"} if strict else None,
        body=obj,
    )
    return created


def merge_patch(kube: Http, kind: str, namespace: str | None, name: str, patch: Any) -> None:
    kube.request(
        "PATCH",
        path_for(kind, namespace, name),
        body=patch,
        content_type="application/merge-patch+json",
    )


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def wait_ready(kube: Kube, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = kube.get("AppIdentity", namespace, name)
        good = condition(obj, "Ready").get("status") == "True" and (obj or {}).get(
            "status", {}
        ).get("observedGeneration") == (obj or {}).get("metadata", {}).get("generation")
        return obj if good else None

    found: dict[str, Any] = wait_until(ready, timeout, f"AppIdentity {namespace}/{name} Ready")
    return found


def wait_reason(
    kube: Kube, namespace: str, name: str, reason: str, type_: str = "Ready", timeout: float = 60
) -> dict[str, Any]:
    def has() -> dict[str, Any] | None:
        obj = kube.get("AppIdentity", namespace, name)
        return obj if condition(obj, type_).get("reason") == reason else None

    found: dict[str, Any] = wait_until(has, timeout, f"{namespace}/{name} {type_} reason {reason}")
    return found


def events_for(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    items = kube.request("GET", f"/api/v1/namespaces/{namespace}/events").get("items", [])
    return [e for e in items if e.get("involvedObject", {}).get("name") == name]


def whoami_status(token_api: Callable[[Token], Any], token: Token) -> int:
    """HTTP status of a SelfSubjectReview made with the token alone. Tokens travel wrapped in
    Token, whose repr is redacted, so no assertion can print one."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.AuthenticationV1Api(token_api(token)).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
        return 200
    except ApiException as exc:
        return int(exc.status)


def secret_token(kube: Kube, namespace: str, name: str) -> Token | None:
    raw = ((kube.get("Secret", namespace, name) or {}).get("data") or {}).get("token")
    return Token(base64.b64decode(raw).decode()) if raw else None


def requester_stamp(cluster: Cluster) -> str | None:
    """The requester stamp admission gives an AppIdentity the admin writes, from a server-side
    dry run; None while the requester policy is not in effect."""
    pods = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
    probe = identity("stamp-probe", "appidentity-system", rules=[pods])
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    dry_run = ["create", "--dry-run=server", "-o", "json", "-f", "-"]
    done = subprocess.run(
        [cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), *dry_run],
        input=json.dumps(probe),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return None
    annotations = json.loads(done.stdout)["metadata"].get("annotations") or {}
    stamp: str | None = annotations.get("appidentity.dev/requester")
    return stamp


def conflicting_identity(kube: Kube, namespace: str, name: str) -> None:
    """An AppIdentity whose ServiceAccount name is taken by one the operator did not create:
    the operator must report a Conflict and leave that ServiceAccount alone."""
    meta = {"name": name, "namespace": namespace}
    create(kube, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})
    create(kube, identity(name, namespace, rules=[READ_CONFIGMAPS]))


@contextmanager
def replacing(session: Operator, own: Operator) -> Iterator[Operator]:
    """`own` runs instead of the session's operator (never both: they would fight over every
    identity), and the session's comes back afterwards."""
    session.stop()
    own.start()
    try:
        yield own
    finally:
        own.stop()
        session.start()


ALL_VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
CONFIGMAPS_ALL = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ALL_VERBS}
PODS_READ = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}


def use_part_of_the_grant(kube: Kube, namespace: str, token_api: Callable[[Token], Any]) -> None:
    """Issue 21's application: identity `app` granted every verb on configmaps and get, list on
    pods; its token gets and lists configmaps, and is denied a get of a secret."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    create(kube, identity("app", namespace, rules=[CONFIGMAPS_ALL, PODS_READ]))
    wait_ready(kube, namespace, "app")
    token = secret_token(kube, namespace, "app-token")
    assert token is not None
    core = client.CoreV1Api(token_api(token))
    core.read_namespaced_config_map("kube-root-ca.crt", namespace)
    core.list_namespaced_config_map(namespace)
    try:
        core.read_namespaced_secret("app-token", namespace)
        raise AssertionError("the secret get was allowed")
    except ApiException as denied:
        assert denied.status == 403
