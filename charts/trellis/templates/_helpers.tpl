{{/* Names and labels shared by the templates. */}}

{{- define "trellis.name" -}}
{{- printf "%s-control-plane" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "trellis.headless" -}}
{{- printf "%s-peers" (include "trellis.name" .) -}}
{{- end -}}

{{- define "trellis.labels" -}}
app.kubernetes.io/name: trellis-control-plane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "trellis.selector" -}}
app.kubernetes.io/name: trellis-control-plane
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "trellis.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}

{{/* One replica's Raft address: its stable name through the headless Service. */}}
{{- define "trellis.peer" -}}
{{- printf "%s-%d.%s.%s.svc:15011" (include "trellis.name" .root) .ordinal (include "trellis.headless" .root) .root.Release.Namespace -}}
{{- end -}}

{{- define "trellis.peers" -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.replicas) -}}
{{- $peers = append $peers (printf "%d=%s" (add $i 1) (include "trellis.peer" (dict "root" $ "ordinal" $i))) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{/* The replicas' proxy ports, as sidecars list them (each replica by name). */}}
{{- define "trellis.xdsAddrs" -}}
{{- $addrs := list -}}
{{- range $i := until (int .Values.replicas) -}}
{{- $addrs = append $addrs (printf "%s-%d.%s.%s.svc:15010" (include "trellis.name" $) $i (include "trellis.headless" $) $.Release.Namespace) -}}
{{- end -}}
{{- join "," $addrs -}}
{{- end -}}

{{- define "trellis.caSecret" -}}
{{- .Values.ca.existingSecret | default (printf "%s-ca" .Release.Name) -}}
{{- end -}}

{{- define "trellis.webhookConfig" -}}
{{- printf "%s-sidecar-injector" .Release.Name -}}
{{- end -}}
