{{/*
Names, labels, images and shared pod pieces of the Ebb chart.
*/}}

{{/* The chart name (or nameOverride), 63 characters at most. */}}
{{- define "ebb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object name: fullnameOverride, else RELEASE-ebb, else RELEASE when the
release name already contains the chart name. Kept short so "-autoscaler" still fits a label.
*/}}
{{- define "ebb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart-version for the helm.sh/chart label. */}}
{{- define "ebb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of one component's objects: (dict "ctx" $ "component" "controller"). */}}
{{- define "ebb.componentName" -}}
{{- printf "%s-%s" (include "ebb.fullname" .ctx) .component -}}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "controller"). */}}
{{- define "ebb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ebb.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of one component's objects: (dict "ctx" $ "component" "controller"). */}}
{{- define "ebb.labels" -}}
helm.sh/chart: {{ include "ebb.chart" .ctx }}
{{ include "ebb.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: ebb
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The Ebb image reference. */}}
{{- define "ebb.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The queue sidecar's image reference (defaults to the Ebb image). */}}
{{- define "ebb.queueImage" -}}
{{- $repo := default .Values.image.repository .Values.queue.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.queue.image.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* In-cluster DNS name of a component's Service: NAME.NAMESPACE.svc (works from any namespace). */}}
{{- define "ebb.serviceHost" -}}
{{- printf "%s.%s.svc" (include "ebb.componentName" .) .ctx.Release.Namespace -}}
{{- end -}}

{{/* The webhook's serving certificate Secret. */}}
{{- define "ebb.webhookTLSSecret" -}}
{{- printf "%s-tls" (include "ebb.componentName" (dict "ctx" . "component" "webhook")) -}}
{{- end -}}

{{/* The webhook's cert-manager Certificate. */}}
{{- define "ebb.webhookCertificate" -}}
{{- include "ebb.componentName" (dict "ctx" . "component" "webhook") -}}
{{- end -}}

{{/*
Pod spec fields shared by every Deployment: (dict "ctx" $ "values" .Values.controller "component" "controller").
*/}}
{{- define "ebb.podCommon" -}}
serviceAccountName: {{ include "ebb.componentName" . }}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
securityContext:
{{ toYaml .ctx.Values.podSecurityContext | indent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
{{ toYaml . }}
{{- end }}
{{- with .values.affinity }}
affinity:
{{ toYaml . | indent 2 }}
{{- end }}
{{- end -}}

{{/* The /tmp emptyDir every container mounts (the root filesystem is read-only). */}}
{{- define "ebb.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "ebb.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* gRPC health probes (grpc.health.v1) on a port: (dict "port" 8090). */}}
{{- define "ebb.grpcProbes" -}}
startupProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: 2
  failureThreshold: 30
readinessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: 5
  failureThreshold: 3
livenessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* Environment every Ebb container gets. */}}
{{- define "ebb.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: PYTHONUNBUFFERED
  value: "1"
{{- end -}}

{{/*
Name of a cluster-scoped object (ClusterRole, webhook configurations): prefixed with the
release namespace so that two releases of the same name in different namespaces do not
collide. (dict "ctx" $ "component" "webhook" "suffix" "mutating"); suffix may be empty.
*/}}
{{- define "ebb.clusterScopedName" -}}
{{- list .ctx.Release.Namespace (include "ebb.componentName" .) (.suffix | default "") | compact | join "-" | trunc 253 -}}
{{- end -}}

{{/*
A component pod's annotations: Prometheus's scrape annotations for its metrics port
(`port`), then the chart's own (`own`, e.g. checksums), then the user's podAnnotations
(`user`), which win.
*/}}
{{- define "ebb.podAnnotations" -}}
{{- $scrape := dict "prometheus.io/scrape" "true" "prometheus.io/port" (toString .port) "prometheus.io/path" "/metrics" -}}
{{- toYaml (mergeOverwrite $scrape (.own | default dict) (.user | default dict)) -}}
{{- end }}
