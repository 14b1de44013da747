#!/usr/bin/env bash
# Proxy benchmark: the same backend measured directly, through trellis-proxy,
# through nginx and through HAProxy, in one run. The proxy under test is
# pinned to core 0; the backend and the load generator share core 1.
#
#   bash bench/run.sh            # writes BENCHMARKS.md
#   DURATION=20 bash bench/run.sh
#   BASELINE_PROXY=/tmp/old/trellis-proxy bash bench/run.sh   # the control runs another build
#
# Needs (installed by this script when missing): wrk, nginx-light, haproxy.
# Only loopback addresses are used.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
RATE=${RATE:-1000}          # fixed-rate run: requests per second
OUT=${OUT:-BENCHMARKS.md}   # the section between the markers is replaced; the rest is kept
WORK=$(mktemp -d /tmp/trellis-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p trellis-proxy

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND=$(port); TRELLIS=$(port); TRELLIS_ADMIN=$(port); NGINX=$(port); HAPROXY=$(port)
RESILIENT=$(port); RESILIENT_ADMIN=$(port)

# --- backend: nginx, one worker, core 1 -----------------------------------
mkdir -p "$WORK/backend" "$WORK/nginx"
# Fixed-rate load: each of 10 connections waits 10 ms between requests (~1k rps).
PACE_MS=$(( 10 * 1000 / RATE ))
printf 'function delay()\n  return %d\nend\n' "$PACE_MS" > "$WORK/pace.lua"
cat > "$WORK/backend/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/backend/pid; error_log $WORK/backend/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND; location / { return 200 "hello from the backend\n"; } } }
CONF
taskset -c 1 nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend" & PIDS+=($!)

# --- trellis-proxy, core 0, one runtime thread -----------------------------
cat > "$WORK/rules.yaml" <<CONF
apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {name: bench}
spec:
  hosts: [bench]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 127.0.0.1, ports: {http: $BACKEND}}]
CONF
TRELLIS_LOG=warn taskset -c 0 target/release/trellis-proxy --workers 1 --config "$WORK/rules.yaml" \
    --outbound-addr 127.0.0.1:$TRELLIS --admin-addr 127.0.0.1:$TRELLIS_ADMIN & TRELLIS_PID=$!; PIDS+=($TRELLIS_PID)

# --- trellis-proxy with timeout, retries, outlier detection, least-request --
cp "$WORK/rules.yaml" "$WORK/resilient.yaml"
cat >> "$WORK/resilient.yaml" <<CONF
---
apiVersion: networking.trellis.io/v1
kind: DestinationRule
metadata: {name: bench}
spec:
  host: bench
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
---
apiVersion: networking.trellis.io/v1
kind: VirtualService
metadata: {name: bench}
spec:
  hosts: [bench]
  http:
  - timeout: 5s
    retries: {attempts: 2, perTryTimeout: 2s, retryOn: "5xx,reset,connect-failure"}
    route: [{destination: {host: bench}}]
CONF
TRELLIS_LOG=warn taskset -c 0 target/release/trellis-proxy --workers 1 --config "$WORK/resilient.yaml" \
    --outbound-addr 127.0.0.1:$RESILIENT --admin-addr 127.0.0.1:$RESILIENT_ADMIN & RESILIENT_PID=$!; PIDS+=($RESILIENT_PID)

# --- nginx reverse proxy, core 0, one worker, keep-alive upstream ------------
cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx/pid; error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NGINX;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; } } }
CONF
taskset -c 0 nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & NGINX_PID=$!; PIDS+=($NGINX_PID)

# --- HAProxy, core 0, one thread ------------------------------------------
cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY
  default_backend be
backend be
  server s1 127.0.0.1:$BACKEND
CONF
taskset -c 0 haproxy -f "$WORK/haproxy.cfg" -db & HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)

for p in $BACKEND $TRELLIS $RESILIENT $NGINX $HAPROXY; do
    for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$TRELLIS_ADMIN/ready" >/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$RESILIENT_ADMIN/ready" >/dev/null && break; sleep 0.1; done
curl -sf -H 'Host: bench' "http://127.0.0.1:$TRELLIS/" >/dev/null || { echo "trellis-proxy does not route" >&2; exit 1; }
curl -sf -H 'Host: bench' "http://127.0.0.1:$RESILIENT/" >/dev/null || { echo "trellis-proxy (resilient) does not route" >&2; exit 1; }

# worker pid of an nginx master (the process doing the work)
worker() { pgrep -P "$1" | head -1 || echo "$1"; }
NGINX_WORKER=$(worker $NGINX_PID)
rss_kib() { awk '/^VmRSS/ {print $2}' /proc/$1/status; }
cpu_ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)
TRELLIS_IDLE_RSS=$(rss_kib $TRELLIS_PID)

declare -A RPS P50 P99 CPU_US RSS PACED_RPS
run() { # name port pid
    local name=$1 port=$2 pid=$3 out
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'Host: bench' "http://127.0.0.1:$port/")
    RPS[$name]=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    P50[$name]=$(awk '$1=="50%" {print $2}' <<<"$out")
    P99[$name]=$(awk '$1=="99%" {print $2}' <<<"$out")
    if [ -n "$pid" ]; then
        # CPU per request at a fixed rate: median of three paced runs.
        local samples=() rates=() before after n i
        for i in 1 2 3; do
            before=$(cpu_ticks "$pid")
            out=$(taskset -c 1 wrk -t1 -c10 -d"${DURATION}s" -s "$WORK/pace.lua" -H 'Host: bench' "http://127.0.0.1:$port/")
            after=$(cpu_ticks "$pid")
            n=$(awk '/requests in/ {print $1}' <<<"$out")
            samples+=("$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$n" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print 0 }')")
            rates+=("$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out")")
        done
        CPU_US[$name]=$(printf '%s\n' "${samples[@]}" | sort -n | sed -n 2p)
        PACED_RPS[$name]=$(printf '%s\n' "${rates[@]}" | sort -n | sed -n 2p)
        RSS[$name]=$(( $(rss_kib "$pid") / 1024 ))
    else
        CPU_US[$name]="-"; RSS[$name]="-"; PACED_RPS[$name]="-"
    fi
}
run direct "$BACKEND" ""
run trellis "$TRELLIS" "$TRELLIS_PID"
run trellis+resilience "$RESILIENT" "$RESILIENT_PID"
run nginx "$NGINX" "$NGINX_WORKER"
run haproxy "$HAPROXY" "$HAPROXY_PID"
TRELLIS_LOADED_RSS=$(awk '/^VmHWM/ {print $2}' /proc/$TRELLIS_PID/status)

# Resilience cost. Run one after the other, one proxy's own paced runs vary
# by ~20% here, more than the 5% to be resolved. So the plain proxy, the
# resilient one and a second plain one (the control) take the same paced
# load at the same time, on the same core, and each round compares their
# CPU per request: whatever disturbs the machine disturbs all three. And
# each round starts three new processes, in a rotating order: one process
# stays a few % faster or slower than its twin for its whole life (where its
# memory landed), which rounds on the same processes would all repeat. The
# control's ratio shows what "no difference" measures as.
cpu_ns() { local s=0 t; for t in /proc/$1/task/*/schedstat; do s=$((s + $(cut -d' ' -f1 "$t"))); done; echo "$s"; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
paced() { # port seconds
    taskset -c 1 wrk -t1 -c10 -d"$2s" -s "$WORK/pace.lua" -H 'Host: bench' "http://127.0.0.1:$1/"
}
ROUNDS=${ROUNDS:-9}
CONFIGS=(rules resilient rules) # plain, resilient, control
# BASELINE_PROXY=path: the control runs that build instead (an older
# commit's, say), so its ratio compares the two builds in the same rounds.
BINS=(target/release/trellis-proxy target/release/trellis-proxy "${BASELINE_PROXY:-target/release/trellis-proxy}")
PAIR_RATIOS=(); CONTROL_RATIOS=()
for round in $(seq "$ROUNDS"); do
    ports=(); admins=(); pids=()
    for k in 0 1 2; do ports+=("$(port)"); admins+=("$(port)"); pids+=(0); done
    for step in 0 1 2; do
        k=$(( (step + round) % 3 ))
        TRELLIS_LOG=warn taskset -c 0 "${BINS[$k]}" --workers 1 --config "$WORK/${CONFIGS[$k]}.yaml" \
            --outbound-addr "127.0.0.1:${ports[$k]}" --admin-addr "127.0.0.1:${admins[$k]}" & pids[$k]=$!; PIDS+=($!)
    done
    for k in 0 1 2; do
        for _ in $(seq 100); do curl -sf "http://127.0.0.1:${admins[$k]}/ready" >/dev/null && break; sleep 0.1; done
    done
    wrks=()
    for k in 0 1 2; do paced "${ports[$k]}" 1 >/dev/null & wrks+=($!); done # warm-up
    wait "${wrks[@]}"
    wrks=(); before=()
    for k in 0 1 2; do before+=("$(cpu_ns "${pids[$k]}")"); done
    for k in 0 1 2; do paced "${ports[$k]}" "$DURATION" > "$WORK/wrk.$k" & wrks+=($!); done
    wait "${wrks[@]}"
    per_req=()
    for k in 0 1 2; do
        per_req+=("$(div $(( $(cpu_ns "${pids[$k]}") - before[k] )) "$(awk '/requests in/ {print $1}' "$WORK/wrk.$k")")")
    done
    kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
    PAIR_RATIOS+=("$(div "${per_req[1]}" "${per_req[0]}")")
    CONTROL_RATIOS+=("$(div "${per_req[2]}" "${per_req[0]}")")
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
RESILIENCE_RATIO=$(median "${PAIR_RATIOS[@]}")
CONTROL_RATIO=$(median "${CONTROL_RATIOS[@]}")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
{
    echo "<!-- bench/run.sh: begin (generated; edit outside the markers) -->"
    echo "## Sidecar hop: trellis-proxy vs nginx vs HAProxy"
    echo
    echo "Produced by \`bash bench/run.sh\` (DURATION=$DURATION s, $CONNS connections) on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))."
    echo "Plain HTTP/1.1 keep-alive GETs; backend: nginx (1 worker, \`return 200\`, 23-byte body)."
    echo "Proxy under test pinned to core 0 (trellis-proxy with its one-thread runtime,"
    echo "nginx with one worker, HAProxy with one thread); wrk and the backend on core 1."
    echo "These machines are noisy: read the ratios, measured in the same run."
    echo
    echo "| path | max req/s | p50 | p99 | CPU µs/req at ~$RATE rps (achieved rps) | RSS after load |"
    echo "|---|---|---|---|---|---|"
    for n in direct trellis trellis+resilience nginx haproxy; do
        rss=${RSS[$n]}; [ "$rss" != "-" ] && rss="$rss MiB"
        echo "| $n | ${RPS[$n]} | ${P50[$n]} | ${P99[$n]} | ${CPU_US[$n]} (${PACED_RPS[$n]}) | $rss |"
    done
    echo
    echo "Ratios, trellis-proxy / nginx: max req/s $(ratio "${RPS[trellis]}" "${RPS[nginx]}") (target ≥ 1),"
    echo "CPU per request $(ratio "${CPU_US[trellis]}" "${CPU_US[nginx]}") (target ≤ 1)."
    echo "trellis+resilience / trellis (timeout, retries, outlier detection, least-request vs plain routing):"
    echo "max req/s $(ratio "${RPS[trellis+resilience]}" "${RPS[trellis]}"); CPU per request $(ratio "${CPU_US[trellis+resilience]}" "${CPU_US[trellis]}") from the table (runs one after the other: ±20% here, not the measure);"
    echo "CPU per request with both under the same paced load at once (~$RATE rps each, $ROUNDS rounds of $DURATION s, new processes each round):"
    echo "median $RESILIENCE_RATIO (rounds: ${PAIR_RATIOS[*]}) (target ≤ 1.05);"
    if [ -n "${BASELINE_PROXY:-}" ]; then
        echo "control: the baseline build \`$BASELINE_PROXY\` in the same rounds, its CPU per request / this build's: median $CONTROL_RATIO (rounds: ${CONTROL_RATIOS[*]})."
    else
        echo "control, a second plain trellis-proxy in the same rounds: median $CONTROL_RATIO (rounds: ${CONTROL_RATIOS[*]})."
    fi
    echo "trellis-proxy / HAProxy: max req/s $(ratio "${RPS[trellis]}" "${RPS[haproxy]}"), CPU per request $(ratio "${CPU_US[trellis]}" "${CPU_US[haproxy]}")."
    echo
    echo "trellis-proxy RSS: idle $((TRELLIS_IDLE_RSS / 1024)).$(( (TRELLIS_IDLE_RSS % 1024) * 10 / 1024 )) MiB (target ≤ 8 MiB), peak under load $((TRELLIS_LOADED_RSS / 1024)) MiB."
    echo
    echo "Commands (ports vary per run):"
    echo
    echo '```'
    echo "taskset -c 1 wrk -t1 -c$CONNS -d${DURATION}s --latency -H 'Host: bench' http://127.0.0.1:PORT/"
    echo "taskset -c 1 wrk -t1 -c10 -d${DURATION}s -s pace.lua -H 'Host: bench' http://127.0.0.1:PORT/   # pace.lua: function delay() return $PACE_MS end"
    echo "taskset -c 0 target/release/trellis-proxy --workers 1 --config rules.yaml"
    echo '```'
    echo
    echo "Latency columns are wrk's at max load ($CONNS connections). CPU µs/req = (utime + stime of the"
    echo "proxy process, from /proc, during a paced run) / requests completed in it; median of three runs."
    echo "<!-- bench/run.sh: end -->"
} > "$WORK/section.md"
. bench/section.sh
put_section bench/run.sh "$WORK/section.md" "$OUT"
cat "$WORK/section.md"
