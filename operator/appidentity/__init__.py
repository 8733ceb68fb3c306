"""appidentity-operator: least-privilege application identities, proven with their own token."""

GROUP = "appidentity.dev"
VERSION = "v1alpha1"
PLURAL = "appidentities"
KIND = "AppIdentity"
FIELD_MANAGER = "appidentity-operator"
# The User-Agent of every request the operator sends with an identity's own token (the
# self-check, `check`). The audit log records it, and `usage` leaves those requests out: they
# are the operator proving the grant, not the application using it. The token's credential id
# cannot tell them apart (both use the same token).
SELF_CHECK_USER_AGENT = "appidentity-operator-selfcheck/" + VERSION
