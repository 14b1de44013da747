#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the tests: etcd,
# kube-apiserver and kube-controller-manager (from e2e/kube/install.sh), on
# free ports, state under DIR. There is no kubelet: tests play it.
#
#   bash e2e/kube/cluster.sh up DIR     # starts; the last line printed is DIR/kubeconfig
#   bash e2e/kube/cluster.sh down DIR   # stops what `up` started (by PID)
#   bash e2e/kube/cluster.sh restart-apiserver DIR   # stops the apiserver, starts it again
#
# The apiserver has token authentication (DIR/kubeconfig is an admin in
# system:masters; so is the controller-manager, whose controllers then all
# share its rights), RBAC, and service-account signing keys and issuer, so
# TokenRequest (`kubectl create token`) and TokenReview work. WATCH_CACHE=false
# turns the watch cache off (a watch then gets a real 410 Gone);
# COMPACTION_INTERVAL (default 5m) is how often the apiserver compacts etcd.
# The apiserver listens on every interface (pods in network namespaces reach
# it at their bridge's gateway as kubernetes.default.svc) and calls webhooks
# at their endpoints' addresses (--enable-aggregator-routing: no kube-proxy).
set -euo pipefail

cache="${TRELLIS_CACHE:-$HOME/.cache/trellis}"
bin="$cache/bin"
cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 up|down DIR" >&2; exit 2; }
fail() { printf 'e2e/kube/cluster.sh: FAILED: %s\n' "$*" >&2; exit 1; }

down() {
    [ -f "$dir/pids" ] || return 0
    while read -r _ pid; do kill "$pid" 2>/dev/null || true; done < "$dir/pids"
    for _ in $(seq 50); do
        alive=0
        while read -r _ pid; do kill -0 "$pid" 2>/dev/null && alive=1; done < "$dir/pids"
        [ $alive = 0 ] && break
        sleep 0.1
    done
    while read -r _ pid; do kill -9 "$pid" 2>/dev/null || true; done < "$dir/pids"
    rm -f "$dir/pids"
}

start_apiserver() { # uses $dir/settings; adds its PID to $dir/pids
    # shellcheck disable=SC1091
    . "$dir/settings"
    local pki="$dir/pki" _
    "$bin/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address 0.0.0.0 --advertise-address 127.0.0.1 --secure-port "$api_port" --insecure-port 0 \
        --enable-aggregator-routing=true \
        --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" \
        --token-auth-file "$pki/tokens.csv" --authorization-mode RBAC \
        --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --api-audiences https://kubernetes.default.svc.cluster.local \
        --service-cluster-ip-range 10.96.0.0/16 \
        --watch-cache="$watch_cache" --etcd-compaction-interval="$compaction" \
        >>"$dir/apiserver.log" 2>&1 &
    echo "apiserver $!" >> "$dir/pids"
    for _ in $(seq 300); do
        if "$bin/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    fail "the apiserver is not ready within 60 s; the end of $dir/apiserver.log:
$(tail -20 "$dir/apiserver.log")"
}

if [ "$cmd" = down ]; then down; exit 0; fi
if [ "$cmd" = restart-apiserver ]; then
    [ -f "$dir/pids" ] || fail "$dir/pids: no cluster runs there"
    dir=$(cd "$dir" && pwd)
    pid=$(awk '$1 == "apiserver" {print $2}' "$dir/pids")
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    grep -v '^apiserver ' "$dir/pids" > "$dir/pids.new" || true
    mv "$dir/pids.new" "$dir/pids"
    start_apiserver
    exit 0
fi
[ "$cmd" = up ] || { echo "usage: $0 up|down|restart-apiserver DIR" >&2; exit 2; }
for b in etcd kube-apiserver kube-controller-manager kubectl; do
    [ -x "$bin/$b" ] || fail "$bin/$b is missing: run bash e2e/kube/install.sh"
done
mkdir -p "$dir/pki" "$dir/etcd"
dir=$(cd "$dir" && pwd)
trap 'status=$?; [ $status = 0 ] || down; exit $status' EXIT

read -r etcd_port etcd_peer api_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')

# --- keys and certificates ----------------------------------------------------
pki="$dir/pki"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=trellis-e2e-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null || fail "openssl: the CA"
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null || fail "openssl: the serving key"
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' > "$pki/san.ext"
openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$pki/san.ext" -out "$pki/apiserver.crt" 2>/dev/null || fail "openssl: the serving certificate"
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null || fail "openssl: the service-account key"
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null || fail "openssl: the service-account public key"
admin_token=$(openssl rand -hex 16)
kcm_token=$(openssl rand -hex 16)
cat > "$pki/tokens.csv" <<CSV
$admin_token,admin,admin,system:masters
$kcm_token,system:kube-controller-manager,kcm,system:masters
CSV

kubeconfig() { # user token file
    cat > "$3" <<CONF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(base64 -w0 < "$pki/ca.crt")
users:
- name: $1
  user:
    token: $2
contexts:
- name: e2e
  context: {cluster: e2e, user: $1, namespace: default}
current-context: e2e
CONF
}
kubeconfig admin "$admin_token" "$dir/kubeconfig"
kubeconfig kcm "$kcm_token" "$dir/kcm.kubeconfig"

# --- processes ------------------------------------------------------------------
: > "$dir/pids"
"$bin/etcd" --name e2e --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "e2e=http://127.0.0.1:$etcd_peer" >"$dir/etcd.log" 2>&1 &
echo "etcd $!" >> "$dir/pids"
cat > "$dir/settings" <<SETTINGS
etcd_port=$etcd_port
api_port=$api_port
watch_cache=${WATCH_CACHE:-true}
compaction=${COMPACTION_INTERVAL:-5m}
SETTINGS
start_apiserver

kubectl() { "$bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }

"$bin/kube-controller-manager" --kubeconfig "$dir/kcm.kubeconfig" \
    --authentication-kubeconfig "$dir/kcm.kubeconfig" --authorization-kubeconfig "$dir/kcm.kubeconfig" \
    --leader-elect=false --port 0 --secure-port 0 \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials=false \
    >"$dir/controller-manager.log" 2>&1 &
echo "controller-manager $!" >> "$dir/pids"
ready=""
for _ in $(seq 300); do
    # The namespace controller's own service account shows the manager works.
    if kubectl get serviceaccount default -n default >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.2
done
[ -n "$ready" ] || fail "the controller-manager did not start within 60 s; the end of $dir/controller-manager.log:
$(tail -20 "$dir/controller-manager.log")"
echo "$dir/kubeconfig"
