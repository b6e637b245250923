{{/* Names ------------------------------------------------------------------ */}}

{{- define "idemgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "idemgate.fullname" -}}
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

{{- define "idemgate.mode" -}}
{{- if not (has .Values.mode (list "sidecar" "central")) -}}
{{- fail (printf "mode must be \"sidecar\" or \"central\", not %q" (toString .Values.mode)) -}}
{{- end -}}
{{- .Values.mode -}}
{{- end -}}

{{- define "idemgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "idemgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ include "idemgate.mode" . }}
{{- end -}}

{{- define "idemgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "idemgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "idemgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The config ------------------------------------------------------------- */}}

{{- /*
  "45s" -> 45: a duration as idemgate reads it (ms, s, m, h, d), in whole
  seconds, rounded up.
*/ -}}
{{- define "idemgate.durationSeconds" -}}
{{- $d := toString . | trim -}}
{{- $n := regexFind "^[0-9]+" $d -}}
{{- if not $n -}}
{{- fail (printf "%q is not a duration such as \"30s\"" $d) -}}
{{- end -}}
{{- $u := trimPrefix $n $d -}}
{{- $v := atoi $n -}}
{{- if eq $u "ms" -}}{{ div (add $v 999) 1000 }}
{{- else if eq $u "s" -}}{{ $v }}
{{- else if eq $u "m" -}}{{ mul $v 60 }}
{{- else if eq $u "h" -}}{{ mul $v 3600 }}
{{- else if eq $u "d" -}}{{ mul $v 86400 }}
{{- else -}}{{ fail (printf "%q has an unknown unit (ms, s, m, h, d)" $d) }}
{{- end -}}
{{- end -}}

{{- /*
  The config idemgate runs with, as JSON: .Values.config plus the keys the
  chart owns. Rendering fails if .Values.config sets one of those.
*/ -}}
{{- define "idemgate.effectiveConfig" -}}
{{- $mode := include "idemgate.mode" . -}}
{{- $cfg := deepCopy (default (dict) .Values.config) -}}
{{- range $section := list "listen" "admin" "store" "shutdown" -}}
{{- if not (hasKey $cfg $section) -}}{{- $_ := set $cfg $section (dict) -}}{{- end -}}
{{- if not (kindIs "map" (get $cfg $section)) -}}
{{- fail (printf "config.%s must be a map of keys (a TOML table)" $section) -}}
{{- end -}}
{{- end -}}
{{- range $key := list "listen.bootstrap" "admin.listen" "store.dir" -}}
{{- $parts := splitList "." $key -}}
{{- if hasKey (get $cfg (first $parts)) (last $parts) -}}
{{- fail (printf "config.%s is set by the chart (from ports and mode); remove it from your values" $key) -}}
{{- end -}}
{{- end -}}
{{- $listen := get $cfg "listen" -}}
{{- $ip := ternary "127.0.0.1" "0.0.0.0" (eq $mode "sidecar") -}}
{{- $_ := set $listen "bootstrap" (printf "%s:%d" $ip (int .Values.ports.bootstrap)) -}}
{{- if not (get $listen "advertised_host") -}}
{{- $_ := set $listen "advertised_host" (ternary "127.0.0.1" (printf "%s.%s.svc" (include "idemgate.fullname" .) .Release.Namespace) (eq $mode "sidecar")) -}}
{{- end -}}
{{- $_ := set (get $cfg "admin") "listen" (printf "0.0.0.0:%d" (int .Values.ports.admin)) -}}
{{- $_ := set (get $cfg "store") "dir" "/var/lib/idemgate" -}}
{{- /* The TLS tables: the files of the mounted Secrets (idemgate.secretMounts), the user's other keys. */ -}}
{{- $owned := dict "listen" (list "cert" "key" "client_ca") "upstream" (list "ca" "server_name" "cert" "key") "admin" (list "cert" "key" "client_ca") -}}
{{- range $part := list "listen" "upstream" "admin" -}}
{{- $v := get $.Values.tls $part -}}
{{- $sect := dict -}}
{{- if and (hasKey $cfg $part) (not (kindIs "invalid" (index $cfg $part))) -}}{{- $sect = index $cfg $part -}}{{- end -}}
{{- if not (kindIs "map" $sect) -}}
{{- fail (printf "config.%s must be a map of keys (a TOML table)" $part) -}}
{{- end -}}
{{- $user := dict -}}
{{- $userSet := and (hasKey $sect "tls") (not (kindIs "invalid" (index $sect "tls"))) -}}
{{- if $userSet -}}
{{- $user = index $sect "tls" -}}
{{- if not (kindIs "map" $user) -}}
{{- fail (printf "config.%s.tls must be a map of keys (a TOML table)" $part) -}}
{{- end -}}
{{- end -}}
{{- if $v.enabled -}}
{{- $tbl := deepCopy $user -}}
{{- range $k := get $owned $part -}}
{{- if hasKey $tbl $k -}}
{{- fail (printf "config.%s.tls.%s is set by the chart (from tls.%s); remove it from your values" $part $k $part) -}}
{{- end -}}
{{- end -}}
{{- range $m := include "idemgate.secretMounts" $ | fromJsonArray -}}
{{- if eq $m.part $part -}}
{{- range $f := $m.files -}}
{{- $_ := set $tbl $f.config (printf "%s/%s" $m.dir $f.key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq $part "upstream") $v.serverName -}}
{{- $_ := set $tbl "server_name" $v.serverName -}}
{{- end -}}
{{- $_ := set $sect "tls" $tbl -}}
{{- $_ := set $cfg $part $sect -}}
{{- else if $userSet -}}
{{- fail (printf "config.%s.tls is set, but tls.%s.enabled is false: enable tls.%s, which mounts the certificate Secret and writes the file paths" $part $part $part) -}}
{{- end -}}
{{- end -}}
{{- /* The admin token: from a Secret, through the environment, never in the ConfigMap. */ -}}
{{- $admin := get $cfg "admin" -}}
{{- if get $admin "token" -}}
{{- fail "config.admin.token would put the admin token in the ConfigMap in clear: create a Secret and set adminToken.existingSecret" -}}
{{- end -}}
{{- if hasKey $admin "token_env" -}}
{{- fail "config.admin.token_env is set by the chart (from adminToken); remove it from your values" -}}
{{- end -}}
{{- if .Values.adminToken.existingSecret -}}
{{- $_ := set $admin "token_env" "IDEMGATE_ADMIN_TOKEN" -}}
{{- else if eq (toString (get $admin "token_for_reads")) "true" -}}
{{- fail "config.admin.token_for_reads is true, but there is no token: set adminToken.existingSecret" -}}
{{- end -}}
{{- /* The shared window: [dedup.shared] from sharedWindow, never from config. */ -}}
{{- $dedup := dict -}}
{{- if and (hasKey $cfg "dedup") (not (kindIs "invalid" (index $cfg "dedup"))) -}}{{- $dedup = index $cfg "dedup" -}}{{- end -}}
{{- if not (kindIs "map" $dedup) -}}
{{- fail "config.dedup must be a map of keys (a TOML table)" -}}
{{- end -}}
{{- if and (hasKey $dedup "shared") (not (kindIs "invalid" (index $dedup "shared"))) -}}
{{- fail "config.dedup.shared is set by the chart (from sharedWindow); remove it from your values" -}}
{{- end -}}
{{- $sw := .Values.sharedWindow -}}
{{- if $sw.enabled -}}
{{- if and .Values.tls.upstream.enabled .Values.tls.upstream.serverName -}}
{{- fail "tls.upstream.serverName cannot apply to the shared window's client, which checks each broker's own host name (idemgate check refuses the two together): leave serverName empty, or set sharedWindow.enabled=false" -}}
{{- end -}}
{{- $shared := dict "topic" $sw.topic "partitions" (int $sw.partitions) "replication_factor" (int $sw.replicationFactor) "retention_margin" $sw.retentionMargin "catch_up_wait" $sw.catchUpWait -}}
{{- if $sw.sasl.enabled -}}
{{- $m := include "idemgate.sharedSaslMount" . | fromJson -}}
{{- $_ := set $shared "sasl" (dict "mechanism" $sw.sasl.mechanism "username" $sw.sasl.username "password_file" (printf "%s/%s" $m.dir $sw.sasl.passwordKey)) -}}
{{- end -}}
{{- $_ := set $dedup "shared" $shared -}}
{{- $_ := set $cfg "dedup" $dedup -}}
{{- else if $sw.sasl.enabled -}}
{{- fail "sharedWindow.sasl.enabled is true, but sharedWindow.enabled is false: the credentials are for the shared window's topic" -}}
{{- end -}}
{{- toJson $cfg -}}
{{- end -}}

{{- /*
  The Secret holding the shared window's SASL password, as the JSON of one
  idemgate.secretMounts entry.
*/ -}}
{{- define "idemgate.sharedSaslMount" -}}
{{- $s := .Values.sharedWindow.sasl -}}
{{- if not $s.username -}}
{{- fail "sharedWindow.sasl.enabled needs sharedWindow.sasl.username" -}}
{{- end -}}
{{- if not $s.existingSecret -}}
{{- fail "sharedWindow.sasl.enabled needs sharedWindow.sasl.existingSecret: the Secret with the password (key sharedWindow.sasl.passwordKey)" -}}
{{- end -}}
{{- toJson (dict "part" "shared-sasl" "name" "shared-window-sasl" "dir" "/etc/idemgate-sasl/shared-window" "secret" $s.existingSecret "files" (list (dict "config" "password_file" "key" $s.passwordKey))) -}}
{{- end -}}

{{- /*
  The Secrets and ConfigMaps the config's files come from, as JSON: one entry
  per volume, {part, name, dir, secret | configMap, files: [{config, key}]},
  where part is the TLS table (or shared-sasl: [dedup.shared.sasl]) the file
  goes to, config its key there and key the Secret's or ConfigMap's key (also
  the file name under dir).
*/ -}}
{{- define "idemgate.secretMounts" -}}
{{- $t := .Values.tls -}}
{{- $out := list -}}
{{- range $part := list "listen" "admin" -}}
{{- $v := get $t $part -}}
{{- if $v.enabled -}}
{{- if not $v.existingSecret -}}
{{- fail (printf "tls.%s.enabled needs tls.%s.existingSecret: the Secret with the certificate and its key" $part $part) -}}
{{- end -}}
{{- $files := list (dict "config" "cert" "key" $v.certKey) (dict "config" "key" "key" $v.keyKey) -}}
{{- if $v.clientCaKey -}}
{{- $files = append $files (dict "config" "client_ca" "key" $v.clientCaKey) -}}
{{- end -}}
{{- $out = append $out (dict "part" $part "name" (printf "tls-%s" $part) "dir" (printf "/etc/idemgate-tls/%s" $part) "secret" $v.existingSecret "files" $files) -}}
{{- end -}}
{{- end -}}
{{- $u := $t.upstream -}}
{{- if $u.enabled -}}
{{- if and $u.ca.existingSecret $u.ca.existingConfigMap -}}
{{- fail "tls.upstream.ca: set existingSecret or existingConfigMap, not both" -}}
{{- end -}}
{{- $ca := list (dict "config" "ca" "key" $u.ca.key) -}}
{{- if $u.ca.existingSecret -}}
{{- $out = append $out (dict "part" "upstream" "name" "tls-upstream-ca" "dir" "/etc/idemgate-tls/upstream-ca" "secret" $u.ca.existingSecret "files" $ca) -}}
{{- else if $u.ca.existingConfigMap -}}
{{- $out = append $out (dict "part" "upstream" "name" "tls-upstream-ca" "dir" "/etc/idemgate-tls/upstream-ca" "configMap" $u.ca.existingConfigMap "files" $ca) -}}
{{- end -}}
{{- with $u.clientCert.existingSecret -}}
{{- $out = append $out (dict "part" "upstream" "name" "tls-upstream-client" "dir" "/etc/idemgate-tls/upstream-client" "secret" . "files" (list (dict "config" "cert" "key" $u.clientCert.certKey) (dict "config" "key" "key" $u.clientCert.keyKey))) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.sharedWindow.enabled .Values.sharedWindow.sasl.enabled -}}
{{- $out = append $out (include "idemgate.sharedSaslMount" . | fromJson) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{- /* One TOML value: string, bool, integer, array, or inline table. */ -}}
{{- define "idemgate.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) -}}{{ $v }}
{{- else if kindIs "float64" $v -}}
{{- if eq $v (float64 (int64 $v)) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "idemgate.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}
{{- $items := list -}}
{{- range $k, $e := $v -}}
{{- if not (kindIs "invalid" $e) -}}
{{- $items = append $items (printf "%s = %s" (include "idemgate.tomlKey" $k) (include "idemgate.tomlValue" $e)) -}}
{{- end -}}
{{- end -}}
{{- if $items -}}{{ printf "{ %s }" (join ", " $items) }}{{- else -}}{}{{- end -}}
{{- else -}}
{{- fail (printf "config: a %s value cannot be written as TOML" (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{- define "idemgate.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- /* The keys of one table, one "key = value" line each (null values and
  tables left out: idemgate.tomlTable writes those after them). */ -}}
{{- define "idemgate.tomlTableBody" -}}
{{- range $k, $v := . }}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v)) }}
{{ include "idemgate.tomlKey" $k }} = {{ include "idemgate.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end -}}

{{- /*
  One table: its header (.header, e.g. "[listen]" or "[[quotas]]"), its keys,
  then each map-valued key as a [path.key] table of its own ([listen.tls]).
*/ -}}
{{- define "idemgate.tomlTable" -}}
{{ .header }}
{{- include "idemgate.tomlTableBody" .body }}
{{- $path := .path }}
{{- range $k, $v := .body }}
{{- if kindIs "map" $v }}
{{- $sub := printf "%s.%s" $path (include "idemgate.tomlKey" $k) }}
{{ include "idemgate.tomlTable" (dict "header" (printf "[%s]" $sub) "path" $sub "body" $v) }}
{{- end }}
{{- end }}
{{- end -}}

{{- /*
  idemgate.toml: one [section] per top-level map of the effective config, and
  one [[section]] per element of a top-level list of maps (e.g. [[quotas]]).
*/ -}}
{{- define "idemgate.toml" -}}
{{- $cfg := include "idemgate.effectiveConfig" . | fromJson -}}
# Rendered by the idemgate Helm chart (mode {{ include "idemgate.mode" . }}) from .Values.config.
{{- range $section, $body := $cfg }}
{{- $key := include "idemgate.tomlKey" $section }}
{{- if kindIs "map" $body }}
{{ include "idemgate.tomlTable" (dict "header" (printf "[%s]" $key) "path" $key "body" $body) }}
{{- else if kindIs "slice" $body }}
{{- range $entry := $body }}
{{- if not (kindIs "map" $entry) }}
{{- fail (printf "config.%s: each entry must be a map of keys (a [[%s]] table)" $section $section) }}
{{- end }}
{{ include "idemgate.tomlTable" (dict "header" (printf "[[%s]]" $key) "path" $key "body" $entry) }}
{{- end }}
{{- else if not (kindIs "invalid" $body) }}
{{- fail (printf "config.%s must be a map of keys (a TOML table) or a list of them" $section) }}
{{- end }}
{{- end }}
{{ end -}}

{{- define "idemgate.drainSeconds" -}}
{{- $cfg := include "idemgate.effectiveConfig" . | fromJson -}}
{{- include "idemgate.durationSeconds" (default "30s" (get (get $cfg "shutdown") "drain_timeout")) -}}
{{- end -}}

{{- /* [start, end] of config.listen.broker_ports (idemgate's default when unset). */ -}}
{{- define "idemgate.brokerPortRange" -}}
{{- $cfg := include "idemgate.effectiveConfig" . | fromJson -}}
{{- $text := toString (default "19093-19199" (get (get $cfg "listen") "broker_ports")) -}}
{{- $parts := splitList "-" ($text | trim) -}}
{{- if ne (len $parts) 2 -}}
{{- fail (printf "config.listen.broker_ports: %q is not a range such as \"19093-19199\"" $text) -}}
{{- end -}}
{{- list (atoi (trim (first $parts))) (atoi (trim (last $parts))) | toJson -}}
{{- end -}}

{{- /* Central: [{id, port}] for every central.brokerNodeIds, checked against the range. */ -}}
{{- define "idemgate.brokerPorts" -}}
{{- $range := include "idemgate.brokerPortRange" . | fromJsonArray -}}
{{- $start := int (first $range) -}}
{{- $end := int (last $range) -}}
{{- $out := list -}}
{{- $seen := dict -}}
{{- if not .Values.central.brokerNodeIds -}}
{{- fail "central.brokerNodeIds must list the node id of every upstream broker" -}}
{{- end -}}
{{- range $id := .Values.central.brokerNodeIds -}}
{{- $id = int $id -}}
{{- $port := add $start $id -}}
{{- if or (lt $id 0) (gt $port $end) -}}
{{- fail (printf "central.brokerNodeIds: node %d would need port %d, outside config.listen.broker_ports %d-%d; every replica must give node N port start+N, so widen the range" $id $port $start $end) -}}
{{- end -}}
{{- if hasKey $seen (toString $id) -}}
{{- fail (printf "central.brokerNodeIds: node %d is listed twice" $id) -}}
{{- end -}}
{{- $_ := set $seen (toString $id) true -}}
{{- $out = append $out (dict "id" $id "port" $port) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The idemgate container, the same in both modes -------------------------- */}}

{{- define "idemgate.container" -}}
image: {{ include "idemgate.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args: ["run", "--config", "/etc/idemgate/idemgate.toml"]
{{- with .Values.adminToken.existingSecret }}
env:
  # The admin API's bearer token; the config reads it (admin.token_env).
  - name: IDEMGATE_ADMIN_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ . | quote }}
        key: {{ $.Values.adminToken.key | quote }}
{{- end }}
startupProbe:
  httpGet:
    path: /healthz
    port: admin
    {{- if .Values.tls.admin.enabled }}
    scheme: HTTPS
    {{- end }}
  {{- toYaml .Values.probes.startup | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
    {{- if .Values.tls.admin.enabled }}
    scheme: HTTPS
    {{- end }}
  {{- toYaml .Values.probes.readiness | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
    {{- if .Values.tls.admin.enabled }}
    scheme: HTTPS
    {{- end }}
  {{- toYaml .Values.probes.liveness | nindent 2 }}
resources:
  {{- toYaml .Values.resources | nindent 2 }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: idemgate-config
    mountPath: /etc/idemgate
    readOnly: true
  - name: store
    mountPath: /var/lib/idemgate
  {{- range $m := include "idemgate.secretMounts" . | fromJsonArray }}
  - name: {{ $m.name }}
    mountPath: {{ $m.dir }}
    readOnly: true
  {{- end }}
{{- end -}}

{{- /* The pod's volumes for the config's files (TLS, the shared window's
  password): only the keys the config names. */ -}}
{{- define "idemgate.secretVolumes" -}}
{{- range $m := include "idemgate.secretMounts" . | fromJsonArray }}
- name: {{ $m.name }}
  {{- if $m.secret }}
  secret:
    secretName: {{ $m.secret | quote }}
  {{- else }}
  configMap:
    name: {{ $m.configMap | quote }}
  {{- end }}
    # Read-only for the owner and the pod's fsGroup.
    defaultMode: 0440
    items:
      {{- range $f := $m.files }}
      - key: {{ $f.key | quote }}
        path: {{ $f.key | quote }}
      {{- end }}
{{- end }}
{{- end -}}

{{- define "idemgate.podCommon" -}}
enableServiceLinks: false
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "idemgate.podAnnotations" -}}
{{- $a := dict "prometheus.io/port" (toString .Values.ports.admin) -}}
{{- if .Values.tls.admin.enabled -}}
{{- $_ := set $a "prometheus.io/scheme" "https" -}}
{{- end -}}
{{- $a = merge $a (deepCopy (default (dict) .Values.podAnnotations)) -}}
{{- $_ := set $a "checksum/config" (include "idemgate.toml" . | sha256sum) -}}
{{- toYaml $a }}
{{- end -}}

{{- define "idemgate.storeVolume" -}}
- name: store
  emptyDir: {}
{{- end -}}

{{- define "idemgate.volumeClaimTemplates" -}}
volumeClaimTemplates:
  - metadata:
      name: store
    spec:
      accessModes:
        {{- toYaml .Values.persistence.accessModes | nindent 8 }}
      {{- with .Values.persistence.storageClassName }}
      storageClassName: {{ . | quote }}
      {{- end }}
      resources:
        requests:
          storage: {{ .Values.persistence.size | quote }}
{{- end -}}
