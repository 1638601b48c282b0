{{/*
Names. Kubernetes names are limited to 63 characters (DNS-1123 labels), so every name is cut there; suffixes are
short and the release-derived prefix is cut first.
*/}}
{{- define "streamflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streamflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A component's name: "<fullname>-<suffix>" (the prefix is cut at 40 so suffixes up to 22 characters fit). */}}
{{- define "streamflow.component" -}}
{{- printf "%s-%s" (include "streamflow.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streamflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades (never the chart version). Call with (dict "root" $ "component" "x"). */}}
{{- define "streamflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamflow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "streamflow.labels" -}}
{{ include "streamflow.selectorLabels" . }}
helm.sh/chart: {{ include "streamflow.chart" .root }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: streamflow
{{- end }}

{{/* The project image: repository@digest when a digest is set, else repository:tag. */}}
{{- define "streamflow.image" -}}
{{- with .Values.image }}
{{- if .digest }}{{ printf "%s@%s" .repository .digest }}{{ else }}{{ printf "%s:%s" .repository .tag }}{{ end }}
{{- end }}
{{- end }}

{{- define "streamflow.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The restricted Pod Security profile, pod level. Call with (dict "root" $ "uid" 10001) to override the user.
*/}}
{{- define "streamflow.podSecurityContext" -}}
{{- $uid := .uid | default .root.Values.podSecurity.runAsUser }}
{{- $gid := .gid | default .root.Values.podSecurity.runAsGroup }}
runAsNonRoot: true
runAsUser: {{ $uid }}
runAsGroup: {{ $gid }}
fsGroup: {{ .fsGroup | default .root.Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The restricted profile, container level: read-only root, no privilege escalation, no capabilities. */}}
{{- define "streamflow.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Secret holding the database URLs (generated, or the user's). */}}
{{- define "streamflow.dbSecret" -}}
{{- if .Values.postgres.enabled }}
{{- .Values.postgres.existingSecret | default (include "streamflow.component" (dict "root" . "name" "db")) }}
{{- else }}
{{- required "externalDatabase.existingSecret is required when postgres.enabled is false" .Values.externalDatabase.existingSecret }}
{{- end }}
{{- end }}

{{- define "streamflow.mlflowURL" -}}
{{- printf "http://%s:5000" (include "streamflow.component" (dict "root" . "name" "mlflow")) }}
{{- end }}

{{- define "streamflow.pushgatewayURL" -}}
{{- if .Values.pushgateway.enabled }}
{{- printf "http://%s:9091" (include "streamflow.component" (dict "root" . "name" "pushgateway")) }}
{{- end }}
{{- end }}

{{/*
Environment of every StreamFlow process: the non-secret settings from the ConfigMap, secrets only through
secretKeyRef (passwords never appear in a manifest). Call with (dict "root" $ "db" true "mlflow" true "extra" (list …)):
db adds the database URL, mlflow the MLflow credentials when mlflow.auth is on, extra more plain variables.
*/}}
{{- define "streamflow.env" -}}
{{- $root := .root }}
{{- $items := list }}
{{- if .db }}
{{- $items = append $items (dict "name" "STREAMFLOW_DB_URL" "valueFrom" (dict "secretKeyRef" (dict "name" (include "streamflow.dbSecret" $root) "key" "streamflow-url"))) }}
{{- end }}
{{- if and .mlflow $root.Values.mlflow.auth.enabled }}
{{- $secret := include "streamflow.mlflowAuthSecret" $root }}
{{- $items = append $items (dict "name" "MLFLOW_TRACKING_USERNAME" "valueFrom" (dict "secretKeyRef" (dict "name" $secret "key" "username"))) }}
{{- $items = append $items (dict "name" "MLFLOW_TRACKING_PASSWORD" "valueFrom" (dict "secretKeyRef" (dict "name" $secret "key" "password"))) }}
{{- end }}
{{- $items = concat $items (.extra | default list) }}
envFrom:
  - configMapRef:
      name: {{ include "streamflow.component" (dict "root" $root "name" "config") }}
{{- with $items }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Secret holding MLflow's basic-auth credentials (generated, or the user's). */}}
{{- define "streamflow.mlflowAuthSecret" -}}
{{- .Values.mlflow.auth.existingSecret | default (include "streamflow.component" (dict "root" . "name" "mlflow-auth")) }}
{{- end }}

{{/*
A PersistentVolumeClaim kept on `helm uninstall` (its data is the loop's state). Call with (dict "root" $ "name"
"mlflow-artifacts" "component" "mlflow" "accessMode" "ReadWriteOnce" "size" "10Gi" "storageClass" "").
*/}}
{{- define "streamflow.keptClaim" -}}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ include "streamflow.component" (dict "root" .root "name" .name) }}
  labels:
    {{- include "streamflow.labels" (dict "root" .root "component" .component) | nindent 4 }}
  annotations:
    helm.sh/resource-policy: keep
spec:
  accessModes: [{{ .accessMode | quote }}]
  {{- with .storageClass }}
  storageClassName: {{ . | quote }}
  {{- end }}
  resources:
    requests:
      storage: {{ .size }}
{{- end }}

{{/* Writable paths under a read-only root filesystem: /tmp and HOME (caches) are emptyDirs. */}}
{{- define "streamflow.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/streamflow
{{- end }}

{{- define "streamflow.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- end }}

{{/*
A workflow leaf template running one `streamflow …` command in the project image. Call with
(dict "root" $ "name" "ingest" "inputs" (list "month" "as-of") "args" (list …)). Every step retries with backoff,
except on exit code 2 (bad input: retrying cannot help), and is bounded by stepDeadlineSeconds.
*/}}
{{- define "streamflow.stepTemplate" -}}
{{- $root := .root }}
{{- $wf := $root.Values.workflows }}
- name: {{ .name }}
  {{- with .inputs }}
  inputs:
    parameters:
      {{- range . }}
      - name: {{ . }}
      {{- end }}
  {{- end }}
  activeDeadlineSeconds: {{ $wf.stepDeadlineSeconds }}
  retryStrategy:
    limit: {{ $wf.retry.limit | quote }}
    retryPolicy: Always
    expression: "asInt(lastRetry.exitCode) != 2"
    backoff:
      duration: {{ $wf.retry.backoffDuration | quote }}
      factor: {{ $wf.retry.backoffFactor | quote }}
      maxDuration: {{ $wf.retry.backoffMaxDuration | quote }}
  container:
    image: {{ include "streamflow.image" $root | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    command: ["streamflow"]
    args:
      {{- range .args }}
      - {{ . | quote }}
      {{- end }}
    {{- include "streamflow.env" (dict "root" $root "db" true "mlflow" true) | nindent 4 }}
    securityContext:
      {{- include "streamflow.containerSecurityContext" $root | nindent 6 }}
    resources:
      {{- toYaml $wf.resources | nindent 6 }}
    volumeMounts:
      - name: data
        mountPath: /data
      {{- include "streamflow.scratchMounts" $root | nindent 6 }}
{{- end }}

{{/* What every StreamFlow workflow shares: its ServiceAccount, the restricted pod profile, volumes, TTL. */}}
{{- define "streamflow.workflowSpec" -}}
serviceAccountName: {{ include "streamflow.component" (dict "root" .root "name" "workflow") }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "streamflow.podSecurityContext" (dict "root" .root) | nindent 2 }}
podMetadata:
  labels:
    {{- include "streamflow.selectorLabels" (dict "root" .root "component" "workflow") | nindent 4 }}
# finished workflows (and their pods' logs) are kept a week, then removed
ttlStrategy:
  secondsAfterCompletion: 604800
podGC:
  strategy: OnWorkflowSuccess
volumes:
  - name: data
    persistentVolumeClaim:
      claimName: {{ include "streamflow.component" (dict "root" .root "name" "data") }}
  {{- include "streamflow.scratchVolumes" .root | nindent 2 }}
{{- end }}
