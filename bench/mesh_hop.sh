#!/usr/bin/env bash
# Full mesh hop benchmark: wrk -> client sidecar (outbound) -> server
# sidecar (inbound) -> backend, once in plaintext and once over mTLS (both
# sidecars with certificates from a control-plane replica), beside the
# backend measured directly, at a fixed ~1,000 requests per second. A third
# pair runs in static mode (rules from a file, no control plane at all), so
# the plaintext pair, whose config streams from the replica over TLS, shows
# what the control-plane connection costs on the request path.
# Both sidecars are pinned to core 0; wrk, the backend and the replica to core 1.
#
#   bash bench/mesh_hop.sh          # writes its section of BENCHMARKS.md
#
# Needs (installed by this script when missing): wrk, nginx-light.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15}
RATE=${RATE:-1000}
OUT=${OUT:-BENCHMARKS.md}
WORK=$(mktemp -d /tmp/trellis-mesh-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p trellis-proxy -p trellis-control-plane

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
BACKEND=$(port); RAFT=$(port); XDS=$(port); CP_ADMIN=$(port)

# --- backend: nginx, one worker, core 1 --------------------------------------
mkdir -p "$WORK/backend" "$WORK/rules"
cat > "$WORK/backend/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/backend/pid; error_log $WORK/backend/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND; location / { return 200 "hello from the backend\n"; } } }
CONF
taskset -c 1 nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend" & PIDS+=($!)

# --- control plane: one replica, core 1 ---------------------------------------
TOKEN=bench-bootstrap-token-0123456789
echo "$TOKEN *" > "$WORK/tokens"
target/release/trellisctl pki init --dir "$WORK/pki" >/dev/null
TRELLIS_LOG=warn taskset -c 1 target/release/trellis-control-plane --node-id 1 --data-dir "$WORK/cp" \
    --raft-addr 127.0.0.1:$RAFT --xds-addr 127.0.0.1:$XDS --admin-addr 127.0.0.1:$CP_ADMIN \
    --ca-cert "$WORK/pki/ca.pem" --ca-key "$WORK/pki/ca-key.pem" \
    --peers 1=127.0.0.1:$RAFT --watch-dir "$WORK/rules" --bootstrap-tokens "$WORK/tokens" & PIDS+=($!)

# --- two server sidecars in front of the backend: plaintext and mTLS ---------
PLAIN_IN=$(port); SECURE_IN=$(port)
plain_entry() { # the plain service's endpoint port
    cat <<CONF
apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {name: plain}
spec:
  hosts: [plain]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 127.0.0.1, ports: {http: $1}, labels: {app: plain}}]
CONF
}
{ plain_entry "$PLAIN_IN"; cat <<CONF
---
apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {name: secure}
spec:
  hosts: [secure]
  ports: [{number: 80, name: http}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: $SECURE_IN}, labels: {app: secure, security.istio.io/tlsMode: istio}, serviceAccount: secure}
---
apiVersion: security.trellis.io/v1
kind: PeerAuthentication
metadata: {name: secure}
spec: {selector: {matchLabels: {app: secure}}, mtls: {mode: STRICT}}
---
apiVersion: security.trellis.io/v1
kind: PeerAuthentication
metadata: {name: plain}
spec: {selector: {matchLabels: {app: plain}}, mtls: {mode: DISABLE}}
CONF
} > "$WORK/rules/mesh.yaml"
wait_port "$XDS"
sidecar() { # name admin-port extra-flags...
    local name=$1 admin=$2; shift 2
    TRELLIS_LOG=warn taskset -c 0 target/release/trellis-proxy --workers 1 --control-plane "127.0.0.1:$XDS" --trust-bundle "$WORK/pki/ca.pem" \
        --node-id "$name" --admin-addr "127.0.0.1:$admin" --bootstrap-token "$TOKEN" "$@" &
    PIDS+=($!); LAST_PID=$!
}
PLAIN_ADMIN=$(port); SECURE_ADMIN=$(port); CLIENT_ADMIN=$(port); CLIENT_OUT=$(port)
sidecar plain "$PLAIN_ADMIN" --service plain --service-account plain --labels app=plain \
    --outbound-addr 127.0.0.1:$(port) --inbound-addr 127.0.0.1:$PLAIN_IN --inbound-forward 127.0.0.1:$BACKEND
PLAIN_PID=$LAST_PID
sidecar secure "$SECURE_ADMIN" --service secure --service-account secure --labels app=secure \
    --outbound-addr 127.0.0.1:$(port) --inbound-addr 127.0.0.1:$SECURE_IN --inbound-forward 127.0.0.1:$BACKEND
SECURE_PID=$LAST_PID
sidecar client "$CLIENT_ADMIN" --service client --service-account client --outbound-addr 127.0.0.1:$CLIENT_OUT
CLIENT_PID=$LAST_PID

# --- the static pair: the same hop with no control plane ------------------------
STATIC_IN=$(port); STATIC_OUT=$(port); STATIC_SERVER_ADMIN=$(port); STATIC_CLIENT_ADMIN=$(port)
plain_entry "$STATIC_IN" > "$WORK/static.yaml"
static_sidecar() { # admin-port flags...
    local admin=$1; shift
    TRELLIS_LOG=warn taskset -c 0 target/release/trellis-proxy --workers 1 --config "$WORK/static.yaml" \
        --admin-addr "127.0.0.1:$admin" "$@" &
    PIDS+=($!); LAST_PID=$!
}
static_sidecar "$STATIC_SERVER_ADMIN" --service plain --outbound-addr 127.0.0.1:$(port) \
    --inbound-addr 127.0.0.1:$STATIC_IN --inbound-forward 127.0.0.1:$BACKEND
STATIC_SERVER_PID=$LAST_PID
static_sidecar "$STATIC_CLIENT_ADMIN" --service client --outbound-addr 127.0.0.1:$STATIC_OUT
STATIC_CLIENT_PID=$LAST_PID
for a in $PLAIN_ADMIN $SECURE_ADMIN $CLIENT_ADMIN $STATIC_SERVER_ADMIN $STATIC_CLIENT_ADMIN; do
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$a/ready" >/dev/null && break; sleep 0.1; done
done
wait_port "$BACKEND"
for h in plain secure; do
    for _ in $(seq 100); do curl -sf -H "Host: $h" "http://127.0.0.1:$CLIENT_OUT/" >/dev/null && break; sleep 0.1; done
    curl -sf -H "Host: $h" "http://127.0.0.1:$CLIENT_OUT/" >/dev/null || { echo "$h does not route" >&2; exit 1; }
done
MTLS_REQUESTS=$(curl -s "http://127.0.0.1:$SECURE_ADMIN/metrics" | awk '/^trellis_requests_total.*mutual_tls/ {s+=$2} END {print s+0}')
[ "$MTLS_REQUESTS" -ge 1 ] || { echo "the secure hop is not mTLS" >&2; exit 1; }

PACE_MS=$(( 10 * 1000 / RATE ))
printf 'function delay()\n  return %d\nend\n' "$PACE_MS" > "$WORK/pace.lua"
cpu_ns() { local s=0 p t; for p in "$@"; do for t in /proc/$p/task/*/schedstat; do s=$((s + $(cut -d' ' -f1 "$t"))); done; done; echo "$s"; }
declare -A P50 P99 RPS CPU
run() { # name host port pids...
    local name=$1 host=$2 port=$3 before after out n; shift 3
    before=$(cpu_ns "$@")
    out=$(taskset -c 1 wrk -t1 -c10 -d"${DURATION}s" --latency -s "$WORK/pace.lua" -H "Host: $host" "http://127.0.0.1:$port/")
    after=$(cpu_ns "$@")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    P50[$name]=$(awk '$1=="50%" {print $2}' <<<"$out")
    P99[$name]=$(awk '$1=="99%" {print $2}' <<<"$out")
    RPS[$name]=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    if [ $# -gt 0 ]; then
        CPU[$name]=$(awk -v d=$((after - before)) -v n="$n" 'BEGIN { if (n > 0) printf "%.1f", d / 1000 / n; else print 0 }')
    else
        CPU[$name]="-"
    fi
}
run direct bench "$BACKEND"
run static plain "$STATIC_OUT" "$STATIC_CLIENT_PID" "$STATIC_SERVER_PID"
run plaintext plain "$CLIENT_OUT" "$CLIENT_PID" "$PLAIN_PID"
run mtls secure "$CLIENT_OUT" "$CLIENT_PID" "$SECURE_PID"

ms() { # wrk duration -> milliseconds
    awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v } else { sub(/s$/, "", v); print v * 1000 } }'
}
added() { awk -v a="$(ms "$1")" -v b="$(ms "$2")" 'BEGIN { printf "%.2f ms", a - b }'; }
{
    echo "<!-- bench/mesh_hop.sh: begin (generated; edit outside the markers) -->"
    echo "## Full mesh hop: two sidecars, plaintext and mTLS"
    echo
    echo "Produced by \`bash bench/mesh_hop.sh\` (DURATION=$DURATION s, ~$RATE rps: wrk, 10 connections, 10 ms pacing) on $(date -u +%Y-%m-%d), $(nproc) cores."
    echo "wrk -> client sidecar (outbound, HTTP/1.1) -> server sidecar (inbound) -> nginx backend."
    echo "Plaintext: PeerAuthentication DISABLE, no sidecar label. mTLS: STRICT, TLS 1.3 between the"
    echo "sidecars, HTTP/2 multiplexed, certificates from a control-plane replica. Static: the plaintext"
    echo "hop again with both sidecars in static mode (a rules file, no control plane)."
    echo "Both sidecars pinned to core 0 (one runtime thread each); wrk, nginx and the replica on core 1."
    echo "CPU µs/req is the two sidecars' scheduler time during the run divided by the requests."
    echo
    echo "| path | achieved rps | p50 | p99 | added p99 over direct | CPU µs/req (both sidecars) |"
    echo "|---|---|---|---|---|---|"
    echo "| direct | ${RPS[direct]} | ${P50[direct]} | ${P99[direct]} | - | - |"
    for n in static plaintext mtls; do
        echo "| $n hop | ${RPS[$n]} | ${P50[$n]} | ${P99[$n]} | $(added "${P99[$n]}" "${P99[direct]}") | ${CPU[$n]} |"
    done
    echo
    echo "mTLS / plaintext CPU per request: $(awk -v a="${CPU[mtls]}" -v b="${CPU[plaintext]}" 'BEGIN { printf "%.2f", a / b }')."
    echo "Plaintext, config streamed over TLS from a replica / static (no control plane): CPU per request"
    echo "$(awk -v a="${CPU[plaintext]}" -v b="${CPU[static]}" 'BEGIN { printf "%.2f", a / b }'), p99 ${P99[plaintext]} vs ${P99[static]}: the control-plane connection is off the request path."
    echo
    echo '```'
    echo "taskset -c 1 wrk -t1 -c10 -d${DURATION}s --latency -s pace.lua -H 'Host: secure' http://127.0.0.1:CLIENT_OUTBOUND/   # pace.lua: function delay() return $PACE_MS end"
    echo '```'
    echo "<!-- bench/mesh_hop.sh: end -->"
} > "$WORK/section.md"
. bench/section.sh
put_section bench/mesh_hop.sh "$WORK/section.md" "$OUT"
cat "$WORK/section.md"
