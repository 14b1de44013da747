#!/usr/bin/env bash
# Real Kubernetes for the tests, obtained once and cached outside the repo
# (~/.cache/trellis, or $TRELLIS_CACHE):
#   etcd, kubectl       Debian's etcd-server and kubernetes-client (apt)
#   kube-apiserver,     v1.20.2, built from Debian bookworm's `kubernetes`
#   kube-controller-    source package (1.20.5+really1.20.2-1.1+deb12u1) with
#   manager             Go from Debian; ~7 min cold on 2 cores, seconds after
# Binaries end up in $CACHE/bin. Each step says what failed and why.
set -euo pipefail

cache="${TRELLIS_CACHE:-$HOME/.cache/trellis}"
bin="$cache/bin"
version="1.20.5+really1.20.2-1.1+deb12u1"
mkdir -p "$bin"

step() { printf 'e2e/kube/install.sh: %s\n' "$*"; }
fail() { printf 'e2e/kube/install.sh: FAILED: %s\n' "$*" >&2; exit 1; }

# --- Debian packages ---------------------------------------------------------
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v kubectl >/dev/null || need+=(kubernetes-client)
command -v openssl >/dev/null || need+=(openssl)
if [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/kube-controller-manager" ]; then
    command -v go >/dev/null || need+=(golang-go)
    command -v rsync >/dev/null || need+=(rsync)
    command -v dpkg-source >/dev/null || need+=(dpkg-dev)
    [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need+=(golang-github-modern-go-reflect2-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
    step "apt-get install ${need[*]}"
    apt-get update -qq || fail "apt-get update (are Debian's package servers reachable?)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || fail "apt-get install ${need[*]}"
fi
ln -sf "$(command -v etcd)" "$bin/etcd"
ln -sf "$(command -v kubectl)" "$bin/kubectl"

if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ]; then
    step "kube-apiserver and kube-controller-manager cached in $bin"
    exit 0
fi

# --- the source package, through a private apt configuration ------------------
# The deb-src entries are this machine's own Debian sources, as source.
src="$cache/kube-src"
apt_dir="$cache/apt"
mkdir -p "$src" "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
: > "$apt_dir/sources.list"
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    sed 's/^Types:.*/Types: deb-src/' "$f" > "$apt_dir/sources.list.d/$(basename "$f")"
done
if [ -f /etc/apt/sources.list ]; then
    sed -n 's/^deb \(.*\)/deb-src \1/p' /etc/apt/sources.list > "$apt_dir/sources.list"
fi
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list"
          -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
          -o "Dir::State::Lists=$apt_dir/lists"
          -o "Dir::Cache=$apt_dir/cache")
if ! ls "$src"/kubernetes_*.dsc >/dev/null 2>&1; then
    step "fetching the kubernetes $version source package"
    apt-get "${apt_opts[@]}" update -qq || fail "apt-get update with deb-src entries"
    (cd "$src" && apt-get "${apt_opts[@]}" source --download-only -qq "kubernetes=$version") \
        || fail "apt-get source kubernetes=$version"
fi
tree="$src/kubernetes"
if [ ! -d "$tree" ]; then
    step "unpacking"
    (cd "$src" && dpkg-source -x --no-check kubernetes_*.dsc kubernetes >/dev/null) \
        || fail "dpkg-source -x"
    # The vendored reflect2 1.0.1 crashes with Go >= 1.18 ("fatal error:
    # fault"); Debian's 1.0.2 works. Replace, not overlay: an old file left
    # behind redeclares symbols.
    vendored="$tree/vendor/github.com/modern-go/reflect2"
    rm -f "$vendored"/*.go "$vendored"/*.s
    cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$vendored"/ \
        || fail "copying Debian's reflect2 into the vendor tree"
    cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$vendored"/ 2>/dev/null || true
fi

# --- build ---------------------------------------------------------------------
# A failed build can leave an empty _output/bin/prerelease-lifecycle-gen that
# breaks every later one: start from a clean _output (once: the second
# target reuses the code generators the first one built).
rm -rf "$tree/_output"
for what in kube-apiserver kube-controller-manager; do
    [ -x "$bin/$what" ] && continue
    step "building $what (minutes on 2 cores)"
    (cd "$tree" && make WHAT="cmd/$what" >"$src/build-$what.log" 2>&1) \
        || fail "make WHAT=cmd/$what; the end of $src/build-$what.log:
$(tail -20 "$src/build-$what.log")"
    built=$(find "$tree/_output" -type f -name "$what" -perm -u+x | head -1)
    [ -n "$built" ] || fail "make WHAT=cmd/$what produced no $what"
    cp "$built" "$bin/$what"
done
rm -rf "$tree/_output"
"$bin/kube-apiserver" --version >/dev/null || fail "the built kube-apiserver does not run"
step "kube-apiserver and kube-controller-manager built into $bin"
