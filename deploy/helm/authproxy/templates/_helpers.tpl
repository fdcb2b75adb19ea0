{{- define "authproxy.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "authproxy.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "authproxy.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "authproxy.storeSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: token-store
{{- end -}}

{{/* The proxy's configuration: .Values.config with the admin listener and,
     with sharedStore.enabled, the shared token store. */}}
{{- define "authproxy.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $_ := set $cfg "admin" (dict "address" (printf "0.0.0.0:%d" (int .Values.adminPort)) "allow_remote_clients" true) -}}
{{- if .Values.sharedStore.enabled -}}
{{- $tc := default (dict) (get $cfg "token_cache") -}}
{{- $_ := set $tc "shared" (dict
      "address" (printf "%s-valkey:6379" (include "authproxy.fullname" .))
      "password" (dict "file" "/var/run/secrets/valkey/password")
      "encryption_key" (dict "file" "/var/run/secrets/authproxy/cache-key/cache-key")) -}}
{{- $_ := set $cfg "token_cache" $tc -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
