"""The requester webhook: the requester stamp for clusters without MutatingAdmissionPolicy
(Kubernetes 1.32-1.35), served from the operator's image by `appidentity-operator webhook`."""
