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
{{- if and (not .Values.redis.url) (not .Values.redis.sentinel.master) (not .Values.secrets.existingSecret) }}true{{ end -}}
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
{{- include "caracal.storeEnv" . }}
- name: METRICS_BEARER_FILE
  value: /var/run/secrets/caracal/metrics-bearer
- name: CARACAL_ADMIN_TOKEN_FILE
  value: /var/run/secrets/caracal/admin-token
{{- /* `otlpEndpoint` at the top level is the name this setting had before telemetry.*. */}}
{{- with (.Values.telemetry.otlpEndpoint | default .Values.otlpEndpoint) }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $.Values.telemetry.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $.Values.telemetry.sampleRatio | toString | quote }}
{{- if $.Values.telemetry.traceProbes }}
- name: CARACAL_TELEMETRY__TRACE_PROBES
  value: "true"
{{- end }}
{{- end }}
{{- end -}}


{{- /* How the services reach Redis (REDIS_URL, or the Sentinels), and the store TLS files and
       Redis password from Secrets the operator creates: the env that names them, their mounts
       and their volumes (services and the migration job alike). */}}
{{- define "caracal.storeEnv" -}}
{{- with .Values.redis.sentinel }}
{{- if .master }}
{{- if not .nodes }}{{ fail "redis.sentinel.nodes: list the Sentinels (redis://host:26379) with redis.sentinel.master" }}{{ end }}
{{- if $.Values.redis.url }}{{ fail "redis.sentinel.master and redis.url: set one, not both" }}{{ end }}
- name: CARACAL_REDIS_SENTINEL__MASTER
  value: {{ .master | quote }}
- name: CARACAL_REDIS_SENTINEL__NODES
  value: {{ toJson .nodes | quote }}
{{- else }}
- name: REDIS_URL
  valueFrom: { secretKeyRef: { name: {{ include "caracal.secretName" $ }}, key: redis-url } }
{{- end }}
{{- end }}
{{- if .Values.redis.tls.secret }}
- name: CARACAL_REDIS_TLS__CA_FILE
  value: /var/run/secrets/caracal/redis-tls/ca.crt
{{- if .Values.redis.tls.clientCertificate }}
- name: CARACAL_REDIS_TLS__CLIENT_CERT_FILE
  value: /var/run/secrets/caracal/redis-tls/tls.crt
- name: CARACAL_REDIS_TLS__CLIENT_KEY_FILE
  value: /var/run/secrets/caracal/redis-tls/tls.key
{{- end }}
{{- end }}
{{- if .Values.redis.passwordSecret.name }}
- name: REDIS_PASSWORD_FILE
  value: /var/run/secrets/caracal/redis-password/password
{{- end }}
{{- end -}}

{{- define "caracal.storeMounts" -}}
{{- if .Values.database.tlsSecret }}
- { name: postgres-tls, mountPath: /var/run/secrets/caracal/postgres-tls, readOnly: true }
{{- end }}
{{- if .Values.redis.tls.secret }}
- { name: redis-tls, mountPath: /var/run/secrets/caracal/redis-tls, readOnly: true }
{{- end }}
{{- if .Values.redis.passwordSecret.name }}
- { name: redis-password, mountPath: /var/run/secrets/caracal/redis-password, readOnly: true }
{{- end }}
{{- end -}}

{{- define "caracal.storeVolumes" -}}
{{- /* 0440: keys readable by the pod's group (fsGroup) only. */}}
{{- if .Values.database.tlsSecret }}
- name: postgres-tls
  secret: { secretName: {{ .Values.database.tlsSecret }}, defaultMode: 0440 }
{{- end }}
{{- if .Values.redis.tls.secret }}
- name: redis-tls
  secret: { secretName: {{ .Values.redis.tls.secret }}, defaultMode: 0440 }
{{- end }}
{{- with .Values.redis.passwordSecret }}
{{- if .name }}
- name: redis-password
  secret:
    secretName: {{ .name }}
    defaultMode: 0440
    items: [{ key: {{ .key }}, path: password }]
{{- end }}
{{- end }}
{{- end -}}
