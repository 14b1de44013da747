#!/usr/bin/env bash
# Short fuzzing runs of every target (what .ci/run does): builds with
# `cargo +nightly fuzz`, then runs each target for SECONDS (default 20)
# from its committed corpus; new inputs go to a scratch directory, a crash
# or a hang fails the run and leaves its input under fuzz/artifacts/.
# Usage: bash fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(http1_request rule_file pushed_config certificate path)
fi

cache="$HOME/.cache/trellis"
export PATH="$cache/cargo-fuzz/bin:$PATH"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzzing needs the nightly toolchain (cargo +nightly): not found" >&2
    exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
    cargo install --locked --root "$cache/cargo-fuzz" cargo-fuzz --version 0.13.2
fi
# Builds are kept between runs (only Trellis' own crates rebuild).
export CARGO_TARGET_DIR="$cache/fuzz-target"
cargo +nightly fuzz build
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    echo "== fuzz $target for ${seconds}s =="
    log="$scratch/$target.log"
    if ! cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz target $target failed: its input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^Done' "$log"
done
