#!/usr/bin/env bash
# The static checks CI runs next to the tests; each must pass:
#
#   fmt       cargo fmt --check
#   clippy    every target, every feature, warnings denied
#   docs      rustdoc with warnings denied
#   features  the facade builds with no feature and with each feature alone
#   unused    no unused dependency (cargo-machete, installed on first use)
#
# Usage: scripts/checks.sh [check...]   (all of them by default)
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
MACHETE_VERSION=0.9.2
cd "$ROOT"

failed=()
check() {
    local name=$1 t0=$SECONDS
    shift
    echo "[checks] $name: $*" >&2
    if "$@"; then
        echo "[checks] $name: ok ($((SECONDS - t0)) s)" >&2
    else
        echo "[checks] $name: FAILED ($((SECONDS - t0)) s)" >&2
        failed+=("$name")
    fi
}

fmt() { cargo fmt --all -- --check; }
clippy() { cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings; }
docs() { RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --quiet; }

# The facade's features, read from its [features] table.
facade_features() {
    awk '/^\[features\]/ { inside = 1; next } /^\[/ { inside = 0 } inside && /^[a-z]/ { print $1 }' Cargo.toml
}

features() {
    local feature status=0
    cargo check -p courier --no-default-features --quiet || status=1
    for feature in $(facade_features); do
        [ "$feature" = default ] && continue
        echo "[checks]   feature $feature" >&2
        cargo check -p courier --no-default-features --features "$feature" --quiet || status=1
    done
    return $status
}

unused() {
    local have=""
    command -v cargo-machete >/dev/null 2>&1 && have=$(cargo-machete --version 2>/dev/null | awk '{print $NF}')
    if [ "$have" != "$MACHETE_VERSION" ]; then
        echo "[checks]   installing cargo-machete $MACHETE_VERSION" >&2
        cargo install cargo-machete --version "$MACHETE_VERSION" --locked --root "$CARGO_HOME" --quiet
    fi
    cargo machete
}

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(fmt clippy docs features unused)
for name in "${wanted[@]}"; do
    check "$name" "$name"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "[checks] failed: ${failed[*]}" >&2
    exit 1
fi
echo "[checks] all passed: ${wanted[*]}" >&2
