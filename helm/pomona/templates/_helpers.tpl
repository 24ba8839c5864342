{{/* Names, labels and the one SparkApplication spec every run is made from. */}}

{{- define "pomona.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's resource name prefix, truncated to the 63 characters a label value allows. */}}
{{- define "pomona.fullname" -}}
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

{{- define "pomona.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pomona.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pomona.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pomona.labels" -}}
helm.sh/chart: {{ include "pomona.chart" . }}
{{ include "pomona.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pomona
{{- end }}

{{/* Labels of driver and executor pods: what the NetworkPolicy and PodMonitor select. */}}
{{- define "pomona.jobPodLabels" -}}
{{ include "pomona.selectorLabels" . }}
app.kubernetes.io/component: spark-job
{{- end }}

{{- define "pomona.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pomona.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The executors': `<driver's>-executor` unless named, the driver's own when not created and not named. */}}
{{- define "pomona.executorServiceAccountName" -}}
{{- if .Values.executorServiceAccount.create }}
{{- default (printf "%s-executor" (include "pomona.serviceAccountName" .)) .Values.executorServiceAccount.name }}
{{- else }}
{{- default (include "pomona.serviceAccountName" .) .Values.executorServiceAccount.name }}
{{- end }}
{{- end }}

{{- define "pomona.triggerServiceAccountName" -}}
{{- if .Values.trigger.serviceAccount.create }}
{{- default (printf "%s-trigger" (include "pomona.fullname" .)) .Values.trigger.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.trigger.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pomona.configMapName" -}}
{{- printf "%s-config" (include "pomona.fullname" .) }}
{{- end }}

{{- /* By digest when one is given: a re-pushed tag then changes nothing that runs. */ -}}
{{- define "pomona.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Backlog mode owns the starting of runs, so the schedule is suspended whatever `schedule.suspend` says. */}}
{{- define "pomona.suspend" -}}
{{- or .Values.schedule.suspend (eq .Values.trigger.mode "backlog") }}
{{- end }}

{{/* Checks JSON Schema cannot express: relations between values. */}}
{{- define "pomona.validate" -}}
{{- $da := .Values.dynamicAllocation }}
{{- if $da.enabled }}
{{- if gt (int $da.minExecutors) (int $da.maxExecutors) }}
{{- fail (printf "dynamicAllocation: expected minExecutors <= maxExecutors, got %d > %d" (int $da.minExecutors) (int $da.maxExecutors)) }}
{{- end }}
{{- if or (lt (int $da.initialExecutors) (int $da.minExecutors)) (gt (int $da.initialExecutors) (int $da.maxExecutors)) }}
{{- fail (printf "dynamicAllocation: expected minExecutors <= initialExecutors <= maxExecutors, got %d, %d, %d" (int $da.minExecutors) (int $da.initialExecutors) (int $da.maxExecutors)) }}
{{- end }}
{{- end }}
{{- /* The NetworkPolicy opens spark.ports; a port moved through spark.conf would be closed. */}}
{{- range $key := list "spark.driver.port" "spark.blockManager.port" "spark.driver.blockManager.port" }}
{{- if hasKey $.Values.spark.conf $key }}
{{- fail (printf "spark.conf: expected %s to be set through spark.ports (the NetworkPolicy opens those), got it in spark.conf" $key) }}
{{- end }}
{{- end }}
{{- /* Executors without a role of their own would fall back to the node's credentials. */}}
{{- $irsa := "eks.amazonaws.com/role-arn" }}
{{- if and .Values.executorServiceAccount.create (hasKey .Values.serviceAccount.annotations $irsa) (not (hasKey .Values.executorServiceAccount.annotations $irsa)) }}
{{- fail (printf "executorServiceAccount.annotations: expected %s (the stack's ExecutorRoleArn) since the driver's account has one, got none" $irsa) }}
{{- end }}
{{- end }}

{{/* Spark properties: the chart's, then `spark.conf` over them. Values are strings, as the CRD requires. */}}
{{- define "pomona.sparkConf" -}}
{{- /* spark.authenticate: on Kubernetes Spark makes a secret per application and hands it to its executors, so
  nothing else in the cluster can talk to the driver's RPC endpoints.
  spark.driver.maxResultSize: what one action may bring to the driver. At POMONA_MAX_IMAGES 50000 the largest is
  the projections, 50,000 × ~1.5 KB in Arrow (≤256 float32, sha256, label) ≈ 75 MB; the failure rows are smaller
  and the PCA states O(1) per run (13 MB each, float64 1280×1280, tree-reduced on the executors). 512m is ~7× that,
  well inside the 2g heap: a runaway collect fails the run with a clear error instead of the driver running out
  of memory. Raise it with spark.conf (and driver.memory) for larger batches. */}}
{{- $conf := dict
  "spark.authenticate" "true"
  "spark.driver.port" (toString .Values.spark.ports.driver)
  "spark.blockManager.port" (toString .Values.spark.ports.blockManager)
  "spark.driver.blockManager.port" (toString .Values.spark.ports.blockManager)
  "spark.python.worker.reuse" "true"
  "spark.dynamicAllocation.shuffleTracking.enabled" (toString .Values.dynamicAllocation.shuffleTrackingEnabled)
  "spark.dynamicAllocation.executorIdleTimeout" .Values.dynamicAllocation.executorIdleTimeout
  "spark.driver.maxResultSize" "512m"
}}
{{- with .Values.monitoring }}
{{- if and .enabled (not .prometheus.jmxExporterJar) }}
{{- $_ := set $conf "spark.ui.prometheus.enabled" (toString .exposeExecutorMetrics) }}
{{- $_ := set $conf "spark.executor.processTreeMetrics.enabled" (toString .exposeExecutorMetrics) }}
{{- if .exposeDriverMetrics }}
{{- $_ := set $conf "spark.metrics.conf.*.sink.prometheusServlet.class" "org.apache.spark.metrics.sink.PrometheusServlet" }}
{{- $_ := set $conf "spark.metrics.conf.*.sink.prometheusServlet.path" "/metrics/driver/prometheus/" }}
{{- end }}
{{- end }}
{{- end }}
{{- $conf = mergeOverwrite $conf .Values.spark.conf }}
{{- range $key, $value := $conf }}
{{ $key | quote }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Where the read-only root filesystem may be written: /tmp and Spark's local dir. */}}
{{- define "pomona.scratchVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: spark-local-dir-1
  mountPath: /var/data/spark-local-dir-1
{{- end }}

{{- define "pomona.envFrom" -}}
- configMapRef:
    name: {{ include "pomona.configMapName" . }}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The SparkApplication spec: the ScheduledSparkApplication's template, the one-off SparkApplication's spec, and
(copied from the cluster by `pomona cluster run`) every manual run's. One source of truth.
Role is "driver" or "executor"; the pod spec parts shared by both are rendered once below.
*/}}
{{- define "pomona.podSpec" -}}
{{- $root := index . 0 }}
{{- $role := index . 1 }}
{{- $values := index $root.Values $role -}}
cores: {{ $values.cores }}
coreLimit: {{ $values.coreLimit | quote }}
memory: {{ $values.memory | quote }}
memoryOverhead: {{ $values.memoryOverhead | quote }}
{{- if eq $role "driver" }}
serviceAccount: {{ include "pomona.serviceAccountName" $root }}
{{- else }}
serviceAccount: {{ include "pomona.executorServiceAccountName" $root }}
{{- end }}
labels:
  {{- include "pomona.jobPodLabels" $root | nindent 2 }}
envFrom:
  {{- include "pomona.envFrom" $root | nindent 2 }}
env:
  # HOME of the image's spark user does not exist; libraries that cache under ~ write to scratch instead.
  - name: HOME
    value: /tmp
podSecurityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
volumeMounts:
  {{- include "pomona.scratchVolumeMounts" $root | nindent 2 }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "pomona.sparkApplicationSpec" -}}
{{- include "pomona.validate" . -}}
type: Python
pythonVersion: "3"
mode: cluster
sparkVersion: {{ .Values.spark.version | quote }}
image: {{ include "pomona.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
mainApplicationFile: {{ .Values.spark.mainApplicationFile | quote }}
{{- with .Values.spark.arguments }}
arguments:
  {{- range . }}
  - {{ . | toString | quote }}
  {{- end }}
{{- end }}
sparkConf:
  {{- include "pomona.sparkConf" . | trim | nindent 2 }}
restartPolicy:
  type: Never
{{- with .Values.dynamicAllocation }}
dynamicAllocation:
  enabled: {{ .enabled }}
  {{- if .enabled }}
  initialExecutors: {{ .initialExecutors }}
  minExecutors: {{ .minExecutors }}
  maxExecutors: {{ .maxExecutors }}
  shuffleTrackingEnabled: {{ .shuffleTrackingEnabled }}
  shuffleTrackingTimeout: {{ .shuffleTrackingTimeout | int64 }}
  {{- end }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ .Values.scratch.tmpSizeLimit }}
  # A volume named spark-local-dir-* becomes Spark's local dir (shuffle and spill) instead of a default one.
  - name: spark-local-dir-1
    emptyDir:
      sizeLimit: {{ .Values.scratch.localDirSizeLimit }}
driver:
  {{- include "pomona.podSpec" (list . "driver") | nindent 2 }}
executor:
  {{- if not .Values.dynamicAllocation.enabled }}
  instances: {{ .Values.executor.instances }}
  {{- end }}
  {{- include "pomona.podSpec" (list . "executor") | nindent 2 }}
{{- with .Values.monitoring }}
{{- if and .enabled .prometheus.jmxExporterJar }}
monitoring:
  exposeDriverMetrics: {{ .exposeDriverMetrics }}
  exposeExecutorMetrics: {{ .exposeExecutorMetrics }}
  prometheus:
    jmxExporterJar: {{ .prometheus.jmxExporterJar | quote }}
    port: {{ .prometheus.port }}
{{- end }}
{{- end }}
{{- end }}
