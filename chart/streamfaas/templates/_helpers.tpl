{{/* Names: RELEASE-streamfaas, or the release's name where it says streamfaas already. */}}
{{- define "streamfaas.fullname" -}}
{{- if contains "streamfaas" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-streamfaas" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "streamfaas.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: streamfaas
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The selector of one component's pods: include with (list . "gateway"). */}}
{{- define "streamfaas.selector" -}}
app.kubernetes.io/name: streamfaas
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "streamfaas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "streamfaas.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "streamfaas.authSecret" -}}
{{- include "streamfaas.fullname" . }}-auth
{{- end -}}

{{/* An image reference: include with (list . .Values.images.streamfaas). */}}
{{- define "streamfaas.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $repo := required "images.*.repository is required" $image.repository -}}
{{- $tag := default $root.Chart.AppVersion $image.tag -}}
{{- if $root.Values.images.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $root.Values.images.registry) $repo $tag -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* The Secret with NATS's password and the URL that carries it (nats-secret.yaml). */}}
{{- define "streamfaas.natsSecret" -}}
{{- printf "%s-nats-auth" (include "streamfaas.fullname" .) -}}
{{- end -}}

{{- define "streamfaas.natsUrl" -}}
{{- default (printf "nats://%s-nats:4222" (include "streamfaas.fullname" .)) .Values.queue.natsUrl -}}
{{- end -}}

{{- define "streamfaas.workerGatewayUrl" -}}
{{- default (printf "http://%s-gateway:%v" (include "streamfaas.fullname" .) .Values.gateway.service.port) .Values.queue.worker.gatewayUrl -}}
{{- end -}}

{{/* The queue workers' gateway URLs, comma-separated (a URL holds no comma): gatewayUrls, else gatewayUrl. */}}
{{- define "streamfaas.workerGatewayUrls" -}}
{{- if .Values.queue.worker.gatewayUrls -}}
{{- join "," .Values.queue.worker.gatewayUrls -}}
{{- else -}}
{{- include "streamfaas.workerGatewayUrl" . -}}
{{- end -}}
{{- end -}}

{{/* What every container of the chart runs with: no root, no privileges, a read-only root. */}}
{{- define "streamfaas.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The pod-level settings of every pod: include with (list . UID), UID being the image's user. */}}
{{- define "streamfaas.podCommon" -}}
{{- $root := index . 0 -}}
{{- $uid := index . 1 -}}
{{- with $root.Values.images.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
securityContext:
  runAsUser: {{ $uid }}
  runAsGroup: {{ $uid }}
  # Mounted Secrets and volumes belong to this group, so the non-root user reads and writes them.
  fsGroup: {{ $uid }}
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* Annotations from a values map, every value a string: `--set podAnnotations.rev=123` (or true)
would otherwise reach the API server as a number, which refuses it. */}}
{{- define "streamfaas.annotations" -}}
{{- range $key, $value := . }}
{{ $key | quote }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
