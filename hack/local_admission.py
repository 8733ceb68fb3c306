"""The requester webhook's admission pieces from `kubectl kustomize deploy/webhook` (stdin),
for a webhook served outside the cluster at the URL given (`make run`, the tests): its
ServiceAccount, RBAC and TLS Secret, the ValidatingAdmissionPolicy that refuses forged stamps,
and the MutatingWebhookConfiguration with its Service reference replaced by that URL. The
webhook's Deployment, Service and PodDisruptionBudget are left out: nothing runs in-cluster."""

import sys

import yaml

REQUESTER = "appidentity-requester"
WEBHOOK = "appidentity-webhook"
RBAC_KINDS = {
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "Secret",
}


def wanted(doc: dict) -> bool:
    kind, name = doc["kind"], doc["metadata"]["name"]
    if kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        return name in (REQUESTER, f"{WEBHOOK}-guard")
    if kind == "MutatingWebhookConfiguration":
        return name == REQUESTER
    return kind in RBAC_KINDS and name.startswith(WEBHOOK)


def main() -> None:
    url = sys.argv[1]
    out = []
    for doc in yaml.safe_load_all(sys.stdin):
        if not doc or not wanted(doc):
            continue
        if doc["kind"] == "MutatingWebhookConfiguration":
            for hook in doc["webhooks"]:
                hook["clientConfig"] = {"url": url}
        out.append(doc)
    kinds = {d["kind"] for d in out}
    if not {"MutatingWebhookConfiguration", "ValidatingAdmissionPolicy", "Secret"} <= kinds:
        sys.exit(f"local_admission.py: deploy/webhook lacks pieces, found only {sorted(kinds)}")
    yaml.safe_dump_all(out, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
