"""Requests the API server refused (403) before it counted them.

`apiserver_request_total` is recorded behind authorization: a request refused there is in no
series (checked on 1.37.2: two refused LISTs left every series unchanged). The self-check makes
one such request per full proof on purpose (a denied action tried for real), so the benchmark
counts them from the local control plane's audit log, which records every ServiceAccount's
request with its response code (hack/cluster.sh write_audit_policy)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


class RefusedRequests:
    """The audit log from the moment of construction on: `since()` counts the 403s of the
    ServiceAccounts whose namespace starts with `prefix`, by "VERB resource"."""

    def __init__(self, audit_log: Path, prefix: str) -> None:
        self.path = audit_log
        self.user_prefix = f"system:serviceaccount:{prefix}"
        self.offset = audit_log.stat().st_size if audit_log.exists() else 0

    def _lines(self) -> list[bytes]:
        """What was appended since construction, across one rotation (the rotated file is the
        newest `audit-*.log` beside the live one)."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size >= self.offset:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                return f.read().splitlines()
        rotated = sorted(self.path.parent.glob(f"{self.path.stem}-*{self.path.suffix}"))
        out: list[bytes] = []
        if rotated:
            with rotated[-1].open("rb") as f:
                f.seek(self.offset)
                out = f.read().splitlines()
        return out + self.path.read_bytes().splitlines()

    def since(self) -> Counter[str]:
        found: Counter[str] = Counter()
        needle = self.user_prefix.encode()
        for line in self._lines():
            if needle not in line or b'"code":403' not in line:
                continue
            event = json.loads(line)
            if not event.get("user", {}).get("username", "").startswith(self.user_prefix):
                continue
            if event.get("responseStatus", {}).get("code") != 403:
                continue
            ref = event.get("objectRef") or {}
            found[
                f"{event.get('verb', '').upper()} {ref.get('resource', event.get('requestURI'))}"
            ] += 1
        return found
