{{/* The namespace of the operator and of every namespaced object of the chart. */}}
{{- define "appidentity.namespace" -}}
{{- required "namespace.name is required" .Values.namespace.name -}}
{{- end -}}

{{/* The ServiceAccount subject of the operator's bindings. */}}
{{- define "appidentity.subject" -}}
- kind: ServiceAccount
  name: appidentity-operator
  namespace: {{ include "appidentity.namespace" . }}
{{- end -}}

{{/* policy or webhook: how the requester is recorded (values.yaml, requester.mode). */}}
{{- define "appidentity.mutatingPolicies" -}}
{{- .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy" -}}
{{- end -}}
{{- define "appidentity.requesterMode" -}}
{{- if ne .Values.requester.mode "auto" -}}
{{- .Values.requester.mode -}}
{{- else if eq (include "appidentity.mutatingPolicies" .) "true" -}}
policy
{{- else -}}
webhook
{{- end -}}
{{- end -}}
