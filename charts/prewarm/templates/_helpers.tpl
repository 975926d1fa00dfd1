{{/* The chart name, overridable. */}}
{{- define "prewarm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: release-chart, unless the release name already contains the chart name. */}}
{{- define "prewarm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version label value. */}}
{{- define "prewarm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "prewarm.labels" -}}
helm.sh/chart: {{ include "prewarm.chart" . }}
{{ include "prewarm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: prewarm
{{- end }}

{{/* Selector labels. */}}
{{- define "prewarm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "prewarm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the daemon runs as. */}}
{{- define "prewarm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "prewarm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels of the daemon's objects, and its pods' selector. */}}
{{- define "prewarm.daemonSelectorLabels" -}}
{{ include "prewarm.selectorLabels" . }}
app.kubernetes.io/component: daemon
{{- end }}

{{- define "prewarm.daemonLabels" -}}
{{ include "prewarm.labels" . }}
app.kubernetes.io/component: daemon
{{- end }}

{{/* The GPU agent's name label is fixed: the actuator finds agent pods by it
     (actuator.agent.label_selector, which the chart narrows to this release). */}}
{{- define "prewarm.agentSelectorLabels" -}}
app.kubernetes.io/name: prewarm-gpu-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "prewarm.agentLabels" -}}
helm.sh/chart: {{ include "prewarm.chart" . }}
{{ include "prewarm.agentSelectorLabels" . }}
app.kubernetes.io/component: gpu-agent
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: prewarm
{{- end }}

{{/* The agent's ServiceAccount (no RBAC: the agent never calls the Kubernetes API). */}}
{{- define "prewarm.agentServiceAccountName" -}}
{{- printf "%s-gpu-agent" (include "prewarm.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "prewarm.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "prewarm.agentImage" -}}
{{- $repository := .Values.agent.image.repository | default .Values.image.repository }}
{{- $tag := .Values.agent.image.tag | default (printf "%s-agent" (.Values.image.tag | default .Chart.AppVersion)) }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/*
The settings tree the daemon and the agents read (PREWARM_CONFIG), as YAML: .Values.config with the
keys that must agree with the chart's own objects set from the chart. A user value that contradicts
one of them fails the render with a message naming the chart value to change instead, rather than
a daemon that silently looks for its Lease or its agents in the wrong place.
*/}}
{{- define "prewarm.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $grpc := int .Values.daemon.ports.grpc -}}
{{- $agentPort := int .Values.agent.port -}}
{{- $agentSelector := printf "app.kubernetes.io/name=prewarm-gpu-agent,app.kubernetes.io/instance=%s" .Release.Name -}}
{{- $forced := list
  (list (list "actuator" "namespace") .Release.Namespace "the release namespace (helm --namespace)")
  (list (list "control" "namespace") .Release.Namespace "the release namespace (helm --namespace)")
  (list (list "actuator" "placeholder" "priority_class") .Values.placeholder.priorityClassName "placeholder.priorityClassName")
  (list (list "actuator" "placeholder" "expendable_priority_cutoff") (int .Values.placeholder.expendablePodsPriorityCutoff) "placeholder.expendablePodsPriorityCutoff")
  (list (list "actuator" "agent" "label_selector") $agentSelector "the agent pods' labels")
  (list (list "actuator" "agent" "port") $agentPort "agent.port")
  (list (list "agent" "listen") (printf "0.0.0.0:%d" $agentPort) "agent.port")
  (list (list "agent" "cache_dir") .Values.agent.diskCache.path "agent.diskCache.path")
  (list (list "agent" "shm_dir") .Values.agent.sharedMemory.path "agent.sharedMemory.path")
  (list (list "daemon" "http_port") (int .Values.daemon.ports.http) "daemon.ports.http")
  (list (list "control" "listen_address") (printf "0.0.0.0:%d" $grpc) "daemon.ports.grpc")
-}}
{{- if .Values.catalog -}}
{{- $forced = append $forced (list (list "planner" "catalog_path") "/etc/prewarm/catalog.yaml" "catalog (the chart mounts it)") -}}
{{- end -}}
{{- range $entry := $forced -}}
{{- $path := index $entry 0 -}}
{{- $value := index $entry 1 -}}
{{- $node := $cfg -}}
{{- range $key := initial $path -}}
{{- if not (index $node $key) -}}
{{- $_ := set $node $key (dict) -}}
{{- end -}}
{{- $node = index $node $key -}}
{{- end -}}
{{- $leaf := last $path -}}
{{- if and (hasKey $node $leaf) (ne (toString (index $node $leaf)) (toString $value)) -}}
{{- fail (printf "config.%s is set by the chart to %v; remove it from config and set %s instead" (join "." $path) $value (index $entry 2)) -}}
{{- end -}}
{{- $_ := set $node $leaf $value -}}
{{- end -}}
{{- if not (kindIs "invalid" .Values.agent.metricsPort) -}}
{{- $metrics := int .Values.agent.metricsPort -}}
{{- $current := dig "agent" "metrics_port" nil $cfg -}}
{{- if and (not (kindIs "invalid" $current)) (ne (toString $current) (toString $metrics)) -}}
{{- fail (printf "config.agent.metrics_port is set by the chart to %d; remove it from config and set agent.metricsPort instead" $metrics) -}}
{{- end -}}
{{- $_ := set $cfg.agent "metrics_port" $metrics -}}
{{- end -}}
{{- if .Values.agent.compileCache.path -}}
{{- if not (hasKey $cfg.agent "allowed_install_roots") -}}
{{- $_ := set $cfg.agent "allowed_install_roots" (list .Values.agent.compileCache.path) -}}
{{- end -}}
{{- end -}}
{{- if eq (include "prewarm.controlTokensUsed" .) "true" -}}
{{- if not (hasKey $cfg.control "auth") -}}
{{- $_ := set $cfg.control "auth" (dict) -}}
{{- end -}}
{{- $dir := include "prewarm.controlTokensDir" . -}}
{{- $_ := set $cfg.control.auth "tokens" (list
  (dict "name" "admin" "scope" "write" "file" (printf "%s/write" $dir))
  (dict "name" "reader" "scope" "read" "file" (printf "%s/read" $dir))) -}}
{{- end -}}
{{- if eq (include "prewarm.agentTokenUsed" .) "true" -}}
{{- $file := printf "%s/token" (include "prewarm.agentTokenDir" .) -}}
{{- if not (hasKey $cfg "agent") }}{{ $_ := set $cfg "agent" (dict) }}{{ end -}}
{{- if not (hasKey $cfg.agent "auth") }}{{ $_ := set $cfg.agent "auth" (dict) }}{{ end -}}
{{- $_ := set $cfg.agent.auth "token_file" $file -}}
{{- if not (hasKey $cfg "actuator") }}{{ $_ := set $cfg "actuator" (dict) }}{{ end -}}
{{- if not (hasKey $cfg.actuator "agent") }}{{ $_ := set $cfg.actuator "agent" (dict) }}{{ end -}}
{{- if not (or (hasKey $cfg.actuator.agent "token") (hasKey $cfg.actuator.agent "token_file")) -}}
{{- $_ := set $cfg.actuator.agent "token_file" $file -}}
{{- end -}}
{{- end -}}
{{- $election := dig "daemon" "leader_election" "enabled" true $cfg -}}
{{- if and (gt (int .Values.daemon.replicas) 1) (not $election) -}}
{{- fail "daemon.replicas > 1 needs config.daemon.leader_election.enabled: every replica would act" -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end }}

{{/* The pod securityContext both workloads share. */}}
{{- define "prewarm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The agent's tier mounts, at the same paths as on the node (paths the agent reports to
     inference pods must resolve there too). */}}
{{- define "prewarm.agentVolumeMounts" -}}
- name: disk-cache
  mountPath: {{ .Values.agent.diskCache.path }}
- name: shared-memory
  mountPath: {{ .Values.agent.sharedMemory.path }}
{{- with .Values.agent.compileCache.path }}
- name: compile-cache
  mountPath: {{ . }}
{{- end }}
{{- end }}

{{/* The daemon's and the agents' parts of the settings tree (see configmap.yaml). */}}
{{- define "prewarm.daemonConfig" -}}
{{- omit (include "prewarm.config" . | fromYaml) "agent" | toYaml }}
{{- end }}

{{- define "prewarm.agentConfig" -}}
{{- pick (include "prewarm.config" . | fromYaml) "logging" "agent" | toYaml }}
{{- end }}

{{/* "true" when the chart supplies the control API's tokens (see controlTokens in values.yaml). */}}
{{- define "prewarm.controlTokensUsed" -}}
{{- $control := .Values.config.control | default dict -}}
{{- $auth := $control.auth | default dict -}}
{{- and .Values.controlTokens.enabled (dig "enabled" true $control) (eq ($auth.mode | default "token") "token") (empty $auth.tokens) -}}
{{- end }}

{{/* "true" when the chart supplies the GPU agents' token (see agentToken in values.yaml). */}}
{{- define "prewarm.agentTokenUsed" -}}
{{- $agent := .Values.config.agent | default dict -}}
{{- $auth := $agent.auth | default dict -}}
{{- and .Values.agent.enabled .Values.agentToken.enabled (eq ($auth.mode | default "token") "token") (not $auth.token) (not $auth.token_file) -}}
{{- end }}

{{- define "prewarm.agentTokenSecret" -}}
{{- .Values.agentToken.existingSecret | default (printf "%s-agent-token" (include "prewarm.fullname" .)) }}
{{- end }}

{{- define "prewarm.agentTokenDir" -}}
/etc/prewarm-agent-token
{{- end }}

{{- define "prewarm.controlTokensSecret" -}}
{{- .Values.controlTokens.existingSecret | default (printf "%s-control-tokens" (include "prewarm.fullname" .)) }}
{{- end }}

{{- define "prewarm.controlTokensDir" -}}
/etc/prewarm-control-tokens
{{- end }}
