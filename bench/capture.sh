#!/usr/bin/env bash
# Transparent capture benchmark, in two network namespaces ("pods") on a
# bridge: opaque TCP throughput (iperf3) and HTTP (wrk) from the client pod
# to the server pod, first direct, then through the client's sidecar
# (`init-iptables`, the proxy as uid 1337 with --capture): opaque bytes for
# iperf3, a routed mesh service for wrk. The sidecar is pinned to core 0;
# the load generators and servers to core 1. CPU of the sidecar from
# /proc/PID/task/*/schedstat.
#
#   bash bench/capture.sh          # writes its section of BENCHMARKS.md
#
# Needs root, and (installed by this script when missing) iperf3, wrk,
# nginx-light, iptables.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
OUT=${OUT:-BENCHMARKS.md}
WORK=$(mktemp -d /tmp/trellis-capture-bench.XXXXXX)
chmod 755 "$WORK"
TAG=tcb$$
NET=10.251.0
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$TAG-c" 2>/dev/null || true
    ip netns del "$TAG-s" 2>/dev/null || true
    ip link del "${TAG}br" 2>/dev/null || true
    rm -rf "/etc/netns/$TAG-c" "/etc/netns/$TAG-s" "$WORK"
}
trap cleanup EXIT

need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v iptables-restore >/dev/null || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p trellis-proxy
PROXY=$PWD/target/release/trellis-proxy

# --- two pods on a bridge ------------------------------------------------------
ip link add "${TAG}br" type bridge
ip addr add "$NET.1/24" dev "${TAG}br"
ip link set "${TAG}br" up
pod() { # name n
    local ns="$TAG-$1"
    ip netns add "$ns"
    ip link add "${TAG}v$2" type veth peer name "${TAG}p$2"
    ip link set "${TAG}p$2" netns "$ns"
    ip link set "${TAG}v$2" master "${TAG}br" up
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip link set "${TAG}p$2" name eth0
    ip netns exec "$ns" ip addr add "$NET.$2/24" dev eth0
    ip netns exec "$ns" ip link set eth0 up
    ip netns exec "$ns" ip route add default via "$NET.1"
    mkdir -p "/etc/netns/$ns"
    printf '127.0.0.1 localhost\n10.96.9.9 web\n' > "/etc/netns/$ns/hosts"
}
pod c 2
pod s 3
in_c() { ip netns exec "$TAG-c" "$@"; }
in_s() { ip netns exec "$TAG-s" "$@"; }

# --- servers, core 1 -------------------------------------------------------------
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx/pid; error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 8080; location / { return 200 "hello from the backend\n"; } } }
CONF
# Started with ip netns exec directly (not through a function), so $! is the
# server's own PID and the cleanup can stop it.
ip netns exec "$TAG-s" taskset -c 1 nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & PIDS+=($!)
ip netns exec "$TAG-s" taskset -c 1 iperf3 -s -p 5201 >/dev/null 2>&1 & PIDS+=($!)
sleep 1

cpu_ns() { local s=0 t; for t in /proc/$1/task/*/schedstat; do s=$((s + $(cut -d' ' -f1 "$t"))); done; echo "$s"; }
iperf() { in_c taskset -c 1 iperf3 -c "$NET.3" -p 5201 -t "$DURATION" -J | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bytes"]))'; }
wrk_rps() { in_c taskset -c 1 wrk -t1 -c32 -d"${DURATION}s" "$1" | awk '/Requests\/sec/ {print $2}'; }

# --- direct ----------------------------------------------------------------------
DIRECT_BYTES=$(iperf)
DIRECT_RPS=$(wrk_rps "http://$NET.3:8080/")

# --- through the client's sidecar ----------------------------------------------------
cat > "$WORK/rules.yaml" <<CONF
apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web]
  addresses: [10.96.9.9]
  ports: [{number: 8080, name: http}]
  endpoints: [{address: $NET.3}]
CONF
chmod 644 "$WORK/rules.yaml"
in_c "$PROXY" init-iptables --proxy-uid 1337 >/dev/null
TRELLIS_LOG=warn ip netns exec "$TAG-c" taskset -c 0 setpriv --reuid=1337 --regid=1337 --clear-groups \
    "$PROXY" --workers 1 --capture --config "$WORK/rules.yaml" & SIDECAR=$!; PIDS+=($SIDECAR)
for _ in $(seq 100); do in_c curl -sf http://127.0.0.1:15000/ready >/dev/null 2>&1 && break; sleep 0.1; done
before=$(cpu_ns "$SIDECAR")
TCP_BYTES=$(iperf)
after=$(cpu_ns "$SIDECAR")
TCP_CPU_NS=$((after - before))
before=$(cpu_ns "$SIDECAR")
HTTP_RPS=$(wrk_rps "http://web:8080/")
after=$(cpu_ns "$SIDECAR")
HTTP_CPU_NS=$((after - before))

read -r DIRECT_GBIT TCP_GBIT TCP_RATIO TCP_NS_PER_KIB HTTP_RATIO HTTP_US <<<"$(python3 - "$DIRECT_BYTES" "$TCP_BYTES" "$TCP_CPU_NS" "$DIRECT_RPS" "$HTTP_RPS" "$HTTP_CPU_NS" "$DURATION" <<'PY'
import sys
db, tb, tns, drps, hrps, hns, d = sys.argv[1:]
db, tb, tns, drps, hrps, hns, d = int(db), int(tb), int(tns), float(drps), float(hrps), int(hns), float(d)
print(f"{db*8/d/1e9:.2f} {tb*8/d/1e9:.2f} {tb/db:.2f} {tns/(tb/1024):.0f} {hrps/drps:.2f} {hns/1000/(hrps*d):.1f}")
PY
)"

{
    echo "<!-- bench/capture.sh: begin -->"
    echo "## Transparent capture (two network namespaces, one sidecar)"
    echo
    echo "\`bash bench/capture.sh\` ($(date -u +%Y-%m-%d), ${DURATION}s each, $(nproc) cores): the"
    echo "client pod's traffic to the server pod, direct and then captured by the client's"
    echo "sidecar (\`init-iptables\`, uid 1337, \`--capture --workers 1\`, pinned to core 0;"
    echo "iperf3, wrk, nginx and the iperf3 server on core 1). Opaque TCP is iperf3's"
    echo "stream, passed through; HTTP is wrk (1 thread, 32 connections) to a mesh"
    echo "service by its address (\`ServiceEntry.addresses\`), routed by the sidecar."
    echo
    echo "| path | opaque TCP | vs direct | sidecar CPU per KiB | HTTP req/s | vs direct | sidecar CPU per request |"
    echo "|---|---|---|---|---|---|---|"
    echo "| direct | $DIRECT_GBIT Gbit/s | 1.00 | - | $DIRECT_RPS | 1.00 | - |"
    echo "| through the sidecar | $TCP_GBIT Gbit/s | $TCP_RATIO | $TCP_NS_PER_KIB ns | $HTTP_RPS | $HTTP_RATIO | $HTTP_US µs |"
    echo
    echo "<!-- bench/capture.sh: end -->"
} > "$WORK/section.md"
. bench/section.sh
put_section bench/capture.sh "$WORK/section.md" "$OUT"
cat "$WORK/section.md"
