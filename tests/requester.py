"""How the suite records an AppIdentity's requester, as `make install` does: the
MutatingAdmissionPolicy where the API server has it (1.36+), or the requester webhook served
from this checkout by local processes (`appidentity-operator webhook`) on one loopback port, as
several replicas behind a Service would (SO_REUSEPORT spreads connections over the replicas,
and a replica's death leaves the others serving the port).

APPID_TEST_REQUESTER=auto (default) | policy | webhook picks the mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from appidentity.kube import Kube
from support import (
    OPERATOR_NAMESPACE,
    REPO,
    Cluster,
    answers_ok,
    end_process,
    free_port,
    token_kubeconfig,
    wait_until,
)

INSTALL_SH = REPO / "hack" / "install.sh"
MODE_SH = REPO / "hack" / "requester-mode.sh"
WEBHOOK_SA = "appidentity-webhook"
WEBHOOK_CONFIGURATION = "appidentity-requester"
WEBHOOK_NAME = "requester.appidentity.dev"
TLS_SECRET = "appidentity-webhook-tls"
REPLICAS = 2


def _env(cluster: Cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["KUBECONFIG"] = str(cluster.kubeconfig)
    env["KUBECTL"] = cluster.kubectl
    return env


def requester_mode(cluster: Cluster) -> str:
    """policy or webhook: the environment's choice, or what this API server supports."""
    wanted = os.environ.get("APPID_TEST_REQUESTER", "auto")
    if wanted != "auto":
        return wanted
    done = subprocess.run(
        [str(MODE_SH)], env=_env(cluster), capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def install(cluster: Cluster, mode: str, port: int) -> None:
    """hack/install.sh: the CRD and the requester recording of `mode`."""
    done = subprocess.run(
        [str(INSTALL_SH), mode, str(port)],
        env=_env(cluster),
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    assert done.returncode == 0, f"hack/install.sh {mode} failed:\n{done.stderr[-3000:]}"


@dataclass
class Replica:
    health_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "webhook replica exited"
        return answers_ok(f"http://127.0.0.1:{self.health_port}/readyz")


@dataclass
class RequesterWebhook:
    """`appidentity-operator webhook` replicas on one port, each with the webhook
    ServiceAccount's token and nothing else, so its RBAC in deploy/webhook is what is tested."""

    cluster: Cluster
    kube: Kube
    workdir: Path
    port: int = field(default_factory=free_port)
    replicas: list[Replica] = field(default_factory=list)
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/mutate-requester"

    def _kubeconfig(self) -> Path:
        answer = self.kube.request_token(OPERATOR_NAMESPACE, WEBHOOK_SA, 6 * 3600, [])
        return token_kubeconfig(
            self.cluster.server,
            self.cluster.ca_file,
            answer["status"]["token"],
            WEBHOOK_SA,
            self.workdir / "webhook.kubeconfig",
        )

    def start_replica(self) -> Replica:
        replica = Replica()
        log = (self.workdir / f"webhook-{replica.health_port}.log").open("ab")
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        replica.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appidentity",
                "webhook",
                "--kubeconfig",
                str(self._kubeconfig()),
                "--namespace",
                OPERATOR_NAMESPACE,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--health-port",
                str(replica.health_port),
                "--hosts",
                "localhost,127.0.0.1",
                "--log-format",
                "text",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.replicas.append(replica)
        wait_until(replica.ready, 60, "a requester webhook replica to be ready")
        return replica

    def start(self, count: int = REPLICAS) -> None:
        for _ in range(count):
            self.start_replica()

    def stop_replica(self, replica: Replica, sig: int = signal.SIGTERM) -> None:
        if replica.proc is not None:
            end_process(replica.proc, sig)
        self.replicas.remove(replica)

    def stop(self) -> None:
        for replica in list(self.replicas):
            self.stop_replica(replica)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))
