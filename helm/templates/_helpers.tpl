{{/*
"true" when the component is enabled (integration.contacts.enabled), "" otherwise. Every
template is wrapped in it, so a disabled chart renders no objects.
*/}}
{{- define "contacts.enabled" -}}
{{- if and .Values.integration .Values.integration.contacts .Values.integration.contacts.enabled -}}
true
{{- end -}}
{{- end -}}

{{/* Name of the StatefulSet and the Service (the headless Service adds "-headless"). */}}
{{- define "contacts.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 54 | trimSuffix "-" -}}
{{- end -}}

{{/* Image tag: image.tag, else global.appImageTag, else the chart's appVersion. */}}
{{- define "contacts.imageTag" -}}
{{- $global := .Values.global | default dict -}}
{{- toString (.Values.image.tag | default $global.appImageTag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* <registry>/<repository>:<tag>; registry: image.registry, else global.containerRegistry. */}}
{{- define "contacts.image" -}}
{{- $global := .Values.global | default dict -}}
{{- $registry := .Values.image.registry | default $global.containerRegistry | default "" | trimSuffix "/" -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry .Values.image.repository (include "contacts.imageTag" .) -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "contacts.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{/* Selector labels (immutable on a StatefulSet: keep them stable). */}}
{{- define "contacts.selectorLabels" -}}
app: {{ include "contacts.name" . }}
{{- end -}}

{{- define "contacts.labels" -}}
{{ include "contacts.selectorLabels" . }}
type: api
core.airy.co/managed: "true"
core.airy.co/mandatory: {{ .Values.mandatory | toString | quote }}
core.airy.co/component: {{ .Values.component | quote }}
app.kubernetes.io/name: {{ include "contacts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "contacts.imageTag" . | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
{{- end -}}

{{/* Labels of the webhooks Deployment's objects: its own `app`, so neither the StatefulSet's
selector nor the api-contacts Service ever picks its pods. */}}
{{- define "contacts.webhooksLabels" -}}
app: {{ include "contacts.name" . }}-webhooks
core.airy.co/managed: "true"
core.airy.co/mandatory: "false"
core.airy.co/component: {{ printf "%s-webhooks" .Values.component | quote }}
app.kubernetes.io/name: {{ include "contacts.name" . }}-webhooks
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "contacts.imageTag" . | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
{{- end -}}
