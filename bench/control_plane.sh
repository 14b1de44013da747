#!/usr/bin/env bash
# Control-plane push benchmark: 3 release replicas on loopback, N simulated
# proxies (trellis-xds-bench: one connection each, spread over the
# replicas, ACKing every push); each round writes one rule through the
# operator API, as `trellisctl apply` does, and times apply -> ACK.
#
#   bash bench/control_plane.sh          # writes its section of BENCHMARKS.md
#   ROUNDS=50 bash bench/control_plane.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-20}
OUT=${OUT:-BENCHMARKS.md}
WORK=$(mktemp -d /tmp/trellis-cp-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n 4096
cargo build --release -q -p trellis-control-plane -p trellis-e2e --bins

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -a RAFT XDS ADMIN
for i in 1 2 3; do RAFT[$i]=$(port); XDS[$i]=$(port); ADMIN[$i]=$(port); done
PEERS="1=127.0.0.1:${RAFT[1]},2=127.0.0.1:${RAFT[2]},3=127.0.0.1:${RAFT[3]}"
target/release/trellisctl pki init --dir "$WORK/pki" >/dev/null
export TRELLIS_TRUST_BUNDLE="$WORK/pki/ca.pem" TRELLIS_TOKEN_FILE="$WORK/pki/admin.token"
for i in 1 2 3; do
    target/release/trellis-control-plane --node-id "$i" --data-dir "$WORK/data-$i" \
        --raft-addr "127.0.0.1:${RAFT[$i]}" --xds-addr "127.0.0.1:${XDS[$i]}" \
        --admin-addr "127.0.0.1:${ADMIN[$i]}" --peers "$PEERS" \
        --ca-cert "$WORK/pki/ca.pem" --ca-key "$WORK/pki/ca-key.pem" \
        --operator-tokens "$WORK/pki/operator-tokens" > "$WORK/replica-$i.log" 2>&1 &
    PIDS+=($!)
done
SERVERS="127.0.0.1:${RAFT[1]},127.0.0.1:${RAFT[2]},127.0.0.1:${RAFT[3]}"
XDS_ADDRS="127.0.0.1:${XDS[1]},127.0.0.1:${XDS[2]},127.0.0.1:${XDS[3]}"
target/release/trellisctl --server "$SERVERS" apply -f examples/demo >/dev/null

rss_mib() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
declare -A LINE RSS
IDLE_RSS="$(rss_mib "${PIDS[0]}") / $(rss_mib "${PIDS[1]}") / $(rss_mib "${PIDS[2]}")"
for n in 100 1000; do
    LINE[$n]=$(target/release/trellis-xds-bench --servers "$SERVERS" --xds "$XDS_ADDRS" --streams "$n" --rounds "$ROUNDS" \
        --trust-bundle "$TRELLIS_TRUST_BUNDLE" --token-file "$TRELLIS_TOKEN_FILE")
    RSS[$n]="$(rss_mib "${PIDS[0]}") / $(rss_mib "${PIDS[1]}") / $(rss_mib "${PIDS[2]}")"
    echo "$n: ${LINE[$n]} rss ${RSS[$n]}"
done

field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
{
    echo "<!-- bench/control_plane.sh: begin (generated; edit outside the markers) -->"
    echo "## Control plane: apply -> ACK at every proxy"
    echo
    echo "Produced by \`bash bench/control_plane.sh\` (ROUNDS=$ROUNDS) on $(date -u +%Y-%m-%d), $(nproc) cores."
    echo "Three release replicas on loopback (one Raft group, fsync on every log write), N simulated"
    echo "proxies (\`trellis-xds-bench\`, one connection each, spread evenly over the replicas, the"
    echo "load generator on the same 2 cores). Each round writes one rule through the operator API"
    echo "(what \`trellisctl apply\` does) and times until each stream has received the new version"
    echo "and sent its ACK. Per-ACK percentiles are over N x rounds samples; 'last ACK' is the"
    echo "slowest stream of a round, percentiles over rounds."
    echo
    echo "| N streams | ACK p50 | ACK p99 | ACK max | last ACK p50 | last ACK p99 | replica RSS after (MiB) |"
    echo "|---|---|---|---|---|---|---|"
    for n in 100 1000; do
        l=${LINE[$n]}
        echo "| $n | $(field "$l" ack_p50_ms) ms | $(field "$l" ack_p99_ms) ms | $(field "$l" ack_max_ms) ms | $(field "$l" last_ack_p50_ms) ms | $(field "$l" last_ack_p99_ms) ms | ${RSS[$n]} |"
    done
    echo
    echo "Target: p99 ≤ 250 ms at 1,000 proxies. Replica RSS before any stream: $IDLE_RSS MiB."
    echo
    echo '```'
    echo "target/release/trellis-xds-bench --servers RAFT1,RAFT2,RAFT3 --xds XDS1,XDS2,XDS3 --streams N --rounds $ROUNDS"
    echo '```'
    echo "<!-- bench/control_plane.sh: end -->"
} > "$WORK/section.md"
. bench/section.sh
put_section bench/control_plane.sh "$WORK/section.md" "$OUT"
cat "$WORK/section.md"
