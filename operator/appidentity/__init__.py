"""appidentity-operator: least-privilege application identities, proven with their own token."""

GROUP = "appidentity.dev"
VERSION = "v1alpha1"
PLURAL = "appidentities"
KIND = "AppIdentity"
FIELD_MANAGER = "appidentity-operator"
