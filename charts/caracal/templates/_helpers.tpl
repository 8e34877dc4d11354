{{/* The release's base name. */}}
{{- define "caracal.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{/* Labels on everything. */}}
{{- define "caracal.labels" -}}
app.kubernetes.io/name: caracal
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector of one service's pods; call with (dict "root" $ "name" "api"). */}}
{{- define "caracal.selector" -}}
app.kubernetes.io/name: caracal
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "caracal.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "caracal.fullname" .)) -}}
{{- end -}}

{{/* "true" when the chart runs its own PostgreSQL (no database.url, no existing Secret). */}}
{{- define "caracal.inChartPostgres" -}}
{{- if and (not .Values.database.url) (not .Values.secrets.existingSecret) }}true{{ end -}}
{{- end -}}

{{/* "true" when the chart runs its own Redis (no redis.url, no existing Secret). */}}
{{- define "caracal.inChartRedis" -}}
{{- if and (not .Values.redis.url) (not .Values.secrets.existingSecret) }}true{{ end -}}
{{- end -}}

{{- define "caracal.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Refuses values whose grace period cannot cover a clean drain. */}}
{{- define "caracal.checkGrace" -}}
{{- $s := .Values.shutdown -}}
{{- $need := add $s.preStopSleepSeconds $s.drainDelaySeconds $s.shutdownTimeoutSeconds $s.marginSeconds -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $need) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds + drainDelaySeconds + shutdownTimeoutSeconds + marginSeconds = %d" (int .Values.terminationGracePeriodSeconds) (int $need)) -}}
{{- end -}}
{{- end -}}

{{/* The environment every Caracal container gets; names match caracal-core's env.rs. */}}
{{- define "caracal.env" -}}
- name: CARACAL_MODE
  value: {{ .Values.mode | quote }}
- name: CARACAL_CONFIG
  value: /etc/caracal/caracal.toml
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: DATABASE_URL
  valueFrom: { secretKeyRef: { name: {{ include "caracal.secretName" . }}, key: database-url } }
- name: REDIS_URL
  valueFrom: { secretKeyRef: { name: {{ include "caracal.secretName" . }}, key: redis-url } }
- name: METRICS_BEARER_FILE
  value: /var/run/secrets/caracal/metrics-bearer
- name: CARACAL_ADMIN_TOKEN_FILE
  value: /var/run/secrets/caracal/admin-token
{{- with .Values.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end -}}
