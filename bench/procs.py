"""Processes the benchmark starts: the local control plane (hack/cluster.sh) and the operator.

The operator runs as a separate process exactly as a user runs it; its peak RSS (VmHWM) and
CPU seconds (utime + stime) are read from /proc while it runs and just before it is stopped.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SH = REPO / "hack" / "cluster.sh"
KUBECTL = REPO / "bin" / "kubectl"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- control plane -------------------------------------------------------------------------------


def cluster_running(state: Path) -> bool:
    done = subprocess.run(
        ["bash", str(CLUSTER_SH), "status", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


def cluster_up(state: Path, timeout: float = 600) -> str:
    """Starts (or reuses) the control plane in `state`; returns the admin kubeconfig path."""
    done = subprocess.run(
        ["bash", str(CLUSTER_SH), "up", str(state)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cluster.sh up failed:\n{done.stderr[-2000:]}")
    last = done.stdout.strip().splitlines()[-1]
    if not last.startswith("export KUBECONFIG="):
        raise RuntimeError(f"unexpected cluster.sh output: {last!r}")
    return last.split("=", 1)[1]


def cluster_down(state: Path) -> None:
    subprocess.run(
        ["bash", str(CLUSTER_SH), "down", str(state)],
        capture_output=True,
        timeout=120,
        check=False,
    )


def kubectl(kubeconfig: str, *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [str(KUBECTL), "--kubeconfig", kubeconfig, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()[-500:]}")
    return done.stdout


def control_plane_pids(kubeconfig: str) -> dict[str, int]:
    """pids of the control plane whose state dir holds this kubeconfig (cluster.sh layout),
    checked against their command lines; empty for any other cluster."""
    state = Path(kubeconfig).resolve().parent
    found = {}
    for name in ("kube-apiserver", "etcd", "kube-controller-manager"):
        try:
            pid = int((state / f"{name}.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if f"/{name} " in cmdline and str(state) in cmdline:
            found[name] = pid
    return found


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        stats = read_proc(pid)
        if stats is not None:
            out[name] = stats.cpu_seconds
    return out


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# --- the operator --------------------------------------------------------------------------------


@dataclass
class ProcStats:
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    hwm_bytes: int = 0
    threads: int = 0


def read_proc(pid: int) -> ProcStats | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    # Fields after the ")" that closes the command name: state is #3, utime #14, stime #15.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    values: dict[str, int] = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "Threads"):
            values[name] = int(rest.split()[0])
    return ProcStats(
        cpu_seconds=cpu,
        rss_bytes=values.get("VmRSS", 0) * 1024,
        hwm_bytes=values.get("VmHWM", 0) * 1024,
        threads=values.get("Threads", 0),
    )


OPERATOR_SRC = REPO / "operator"


def operator_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the operator runs in: the operator code of this checkout first on the
    path, so a benchmark run from a git worktree measures that worktree's operator and not the
    checkout the virtualenv's editable install points at. `extra` may add to PYTHONPATH."""
    env = {**os.environ, **(extra or {})}
    paths = [str(OPERATOR_SRC), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def operator_options(python: str) -> set[str]:
    """The long options `appidentity run` accepts (from its --help), so the benchmark passes
    newer options only to an operator that has them."""
    done = subprocess.run(
        [python, "-m", "appidentity", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=str(REPO),
        env=operator_env(),
    )
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", done.stdout))


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """In the operator's child process: SIGTERM when the benchmark goes away, however it ends.
    An operator left running from an interrupted benchmark keeps reconciling the next run's
    identities and spoils its figures."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Operator:
    """`python -m appidentity run ...` as a child process, with /proc sampling."""

    def __init__(
        self,
        python: str,
        kubeconfig: str,
        log_path: Path,
        workers: int | None,
        schedule: list[str] | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.env = env
        self.python = python
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.workers = workers
        self.schedule = list(schedule or [])
        self.extra_args = list(extra_args or [])
        self.metrics_port = 0
        self.liveness_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.last = ProcStats()
        self.peak_rss = 0
        self._sampler: threading.Thread | None = None
        self._stop_sampling = threading.Event()

    def start(self) -> None:
        self.metrics_port, self.liveness_port = free_port(), free_port()
        cmd = [
            self.python,
            "-m",
            "appidentity",
            "run",
            "--all-namespaces",
            "--kubeconfig",
            self.kubeconfig,
            "--metrics-port",
            str(self.metrics_port),
            "--liveness-port",
            str(self.liveness_port),
            "--log-format",
            "json",
        ]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        cmd += self.schedule
        cmd += self.extra_args
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
            start_new_session=True,
            env=operator_env(self.env),
            preexec_fn=_die_with_parent,
        )
        log.close()
        self._stop_sampling.clear()
        self.peak_rss = 0
        self._sampler = threading.Thread(target=self._sample, daemon=True, name="proc-sampler")
        self._sampler.start()

    def _sample(self) -> None:
        assert self.proc is not None
        while not self._stop_sampling.wait(0.25):
            self.sample()

    def sample(self) -> ProcStats:
        if self.proc is not None and self.proc.poll() is None:
            found = read_proc(self.proc.pid)
            if found is not None:
                self.last = found
                self.peak_rss = max(self.peak_rss, found.rss_bytes, found.hwm_bytes)
        return self.last

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Until the liveness endpoint answers (kopf serves it once startup handlers ran and
        the watches began) and the metrics port serves; returns the seconds it took."""
        deadline = time.monotonic() + timeout
        urls = [
            f"http://127.0.0.1:{self.liveness_port}/healthz",
            f"http://127.0.0.1:{self.metrics_port}/metrics",
        ]
        pending = list(urls)
        while pending:
            if not self.alive():
                raise RuntimeError(f"the operator exited early; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator was not ready within {timeout:.0f}s")
            try:
                with urllib.request.urlopen(pending[0], timeout=2) as resp:
                    if resp.status == 200:
                        pending.pop(0)
                        continue
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return time.monotonic() - self.started_at

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10
        ) as resp:
            text: str = resp.read().decode()
            return text

    def stop(self, timeout: float = 30.0) -> ProcStats:
        """SIGTERM (kopf shuts down cleanly), SIGKILL after `timeout`, or after 10 minutes when
        tracemalloc runs: its snapshot at exit, with a traceback per allocation, takes minutes
        at N=2000. Returns the last /proc reading taken just before the signal: VmHWM is the
        peak RSS over the process' life."""
        if "APPID_BENCH_TRACEMALLOC" in (self.env or {}):
            timeout = max(timeout, 600.0)
        final = self.sample()
        self._stop_sampling.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._sampler is not None:
            self._sampler.join(timeout=2)
        return final
