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
