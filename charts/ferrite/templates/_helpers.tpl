{{/*
Names and labels shared by every template.

Ferrite is a cluster singleton (one ClusterNetwork `default`, cluster-scoped RBAC), so its
objects have fixed names rather than release-prefixed ones: the operator and the agent it
renders find each other by them.
*/}}

{{- define "ferrite.operatorName" -}}ferrite-operator{{- end -}}

{{- define "ferrite.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "ferrite.labels" -}}
helm.sh/chart: {{ include "ferrite.chart" . }}
app.kubernetes.io/part-of: ferrite
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
The operator's selector, a subset of its labels: stable across upgrades (a Deployment's
selector is immutable).
*/}}
{{- define "ferrite.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ferrite.operatorName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ferrite.operatorLabels" -}}
{{ include "ferrite.labels" . }}
app.kubernetes.io/name: {{ include "ferrite.operatorName" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* An image reference: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "ferrite.image" -}}
{{- printf "%s:%s" .repository (.tag | default .appVersion) -}}
{{- end -}}

{{- define "ferrite.operatorImage" -}}
{{- include "ferrite.image" (dict "repository" .Values.operator.image.repository "tag" .Values.operator.image.tag "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{- define "ferrite.agentImage" -}}
{{- include "ferrite.image" (dict "repository" .Values.agent.image.repository "tag" .Values.agent.image.tag "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{/*
Annotations of the cluster-scoped custom resources: Argo CD applies them after the CRDs
(wave 1; CRDs sit in the default wave 0) and skips their dry run while the CRDs do not exist yet.
*/}}
{{- define "ferrite.customResourceAnnotations" -}}
argocd.argoproj.io/sync-wave: "1"
argocd.argoproj.io/sync-options: SkipDryRunOnMissingResource=true
{{- end -}}
