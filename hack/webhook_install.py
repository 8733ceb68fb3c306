"""Renders deploy/webhook/install.yaml: deploy/install.yaml without the MutatingAdmissionPolicies
(GA only since Kubernetes 1.36) and their bindings, plus the requester webhook's manifests of
deploy/webhook/. Run by `make install.yaml`."""

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WEBHOOK = REPO / "deploy" / "webhook"
PARTS = (
    "serviceaccount.yaml",
    "rbac.yaml",
    "secret.yaml",
    "deployment.yaml",
    "service.yaml",
    "mutating-webhook.yaml",
)
POLICIES_1_36 = {"MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"}


def main() -> None:
    base = yaml.safe_load_all((REPO / "deploy" / "install.yaml").read_text())
    docs = [d for d in base if d and d["kind"] not in POLICIES_1_36]
    for part in PARTS:
        docs += [d for d in yaml.safe_load_all((WEBHOOK / part).read_text()) if d]
    head = "# Rendered by `make install.yaml` (hack/webhook_install.py); do not edit.\n"
    sys.stdout.write(head + yaml.safe_dump_all(docs, sort_keys=False))


if __name__ == "__main__":
    main()
