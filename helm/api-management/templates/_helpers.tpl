{{/* Chart name, trimmed to a DNS label. */}}
{{- define "api-management.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object names: the release name when it already contains the chart
name (`helm install api-management ...` gives "api-management"). */}}
{{- define "api-management.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "api-management.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object but the migration Job. */}}
{{- define "api-management.labels" -}}
app: {{ include "api-management.fullname" . }}
app.kubernetes.io/name: {{ include "api-management.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: trellis
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "api-management.chart" . }}
{{- end -}}

{{- define "api-management.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "api-management.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "api-management.configName" -}}
{{- printf "%s-config" (include "api-management.fullname" .) -}}
{{- end -}}

{{- define "api-management.secretName" -}}
{{- if .Values.secret.create -}}
{{- default (printf "%s-secrets" (include "api-management.fullname" .)) .Values.secret.name -}}
{{- else -}}
{{- required "secret.name: name an existing Secret when secret.create is false" .Values.secret.name -}}
{{- end -}}
{{- end -}}

{{/* The Service's in-cluster host name. */}}
{{- define "api-management.host" -}}
{{- printf "%s.%s.svc.cluster.local" (include "api-management.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* Shutdown: the grace period must exceed preStop + SHUTDOWN_DELAY +
SHUTDOWN_TIMEOUT, or the kubelet kills requests in flight. Returns the
time the pod may still be serving, in seconds. */}}
{{- define "api-management.drainSeconds" -}}
{{- $s := .Values.shutdown -}}
{{- $drain := add $s.preStopSleepSeconds $s.delaySeconds $s.timeoutSeconds -}}
{{- if le (int $s.terminationGracePeriodSeconds) (int $drain) -}}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%v) must exceed shutdown.preStopSleepSeconds + delaySeconds + timeoutSeconds (%v)" $s.terminationGracePeriodSeconds $drain) -}}
{{- end -}}
{{- $drain -}}
{{- end -}}

{{/* The restricted Pod Security profile: pod part. */}}
{{- define "api-management.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The restricted Pod Security profile: container part. */}}
{{- define "api-management.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "api-management.envFrom" -}}
- configMapRef:
    name: {{ include "api-management.configName" . }}
- secretRef:
    name: {{ include "api-management.secretName" . }}
{{- end -}}

{{/* One Deployment: the stable v1 or the canary v2.
Arguments: (dict "root" $ "variant" "v1" "name" NAME "tag" TAG "replicas" N-or-nil) */}}
{{- define "api-management.deployment" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $app := include "api-management.fullname" $root -}}
{{- $drain := include "api-management.drainSeconds" $root -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "api-management.labels" $root | nindent 4 }}
    version: {{ .variant }}
    app.kubernetes.io/version: {{ .tag | quote }}
    app.kubernetes.io/component: api
spec:
  {{- if not (kindIs "invalid" .replicas) }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  progressDeadlineSeconds: 600
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  selector:
    matchLabels:
      app: {{ $app }}
      version: {{ .variant }}
  template:
    metadata:
      labels:
        app: {{ $app }}
        version: {{ .variant }}
        app.kubernetes.io/name: {{ include "api-management.name" $root }}
        app.kubernetes.io/instance: {{ $root.Release.Name }}
        app.kubernetes.io/version: {{ .tag | quote }}
        app.kubernetes.io/component: api
        {{- if $v.istio.enabled }}
        sidecar.istio.io/inject: "true"
        {{- end }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- if $v.secret.create }}
        checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
        {{- end }}
        {{- if $v.metrics.scrape }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $v.httpPort | quote }}
        prometheus.io/path: {{ $v.metrics.path }}
        {{- end }}
        {{- if $v.istio.enabled }}
        proxy.istio.io/config: |
          terminationDrainDuration: {{ $drain }}s
          holdApplicationUntilProxyStarts: true
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "api-management.serviceAccountName" $root }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $v.shutdown.terminationGracePeriodSeconds }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "api-management.podSecurityContext" $root | nindent 8 }}
      {{- if $v.topologySpread.enabled }}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: {{ $v.topologySpread.hostname }}
          labelSelector:
            matchLabels:
              app: {{ $app }}
              version: {{ .variant }}
          matchLabelKeys: ["pod-template-hash"]
        - maxSkew: 1
          topologyKey: topology.kubernetes.io/zone
          whenUnsatisfiable: {{ $v.topologySpread.zone }}
          labelSelector:
            matchLabels:
              app: {{ $app }}
              version: {{ .variant }}
          matchLabelKeys: ["pod-template-hash"]
      {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: api-management
          image: "{{ $v.image.repository }}:{{ .tag }}"
          imagePullPolicy: {{ $v.image.pullPolicy }}
          ports:
            - name: http
              containerPort: {{ $v.httpPort }}
              protocol: TCP
          envFrom:
            {{- include "api-management.envFrom" $root | nindent 12 }}
          env:
            - name: APP_VARIANT
              value: {{ .variant }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          startupProbe:
            httpGet:
              path: {{ $v.probes.startup.path }}
              port: http
            periodSeconds: {{ $v.probes.startup.periodSeconds }}
            timeoutSeconds: {{ $v.probes.startup.timeoutSeconds }}
            failureThreshold: {{ $v.probes.startup.failureThreshold }}
          livenessProbe:
            httpGet:
              path: {{ $v.probes.liveness.path }}
              port: http
            periodSeconds: {{ $v.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ $v.probes.liveness.failureThreshold }}
          readinessProbe:
            httpGet:
              path: {{ $v.probes.readiness.path }}
              port: http
            periodSeconds: {{ $v.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $v.probes.readiness.failureThreshold }}
          lifecycle:
            preStop:
              exec:
                command: ["/bin/sleep", "{{ $v.shutdown.preStopSleepSeconds }}"]
          securityContext:
            {{- include "api-management.containerSecurityContext" $root | nindent 12 }}
          terminationMessagePolicy: FallbackToLogsOnError
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
{{- end -}}
