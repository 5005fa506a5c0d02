#!/usr/bin/env bash
# Prepares this machine for courier's real-broker tests.
#
# On a fresh Debian machine (run as root) it installs what is missing
# (docker.io, debootstrap), starts a Docker daemon when none answers, builds
# the tansu Kafka-protocol broker once (with the fixes in
# testkit/images/kafka/patches), and builds the local test images from
# Debian packages:
#
#   courier-test/base:trixie      debootstrap minbase, imported into Docker
#   courier-test/rabbitmq:trixie  testkit/images/rabbitmq/Dockerfile
#   courier-test/nats:trixie      testkit/images/nats/Dockerfile
#   courier-test/postgres:trixie  testkit/images/postgres/Dockerfile
#   courier-test/redis:trixie     testkit/images/redis/Dockerfile
#   courier-test/kafka:trixie     testkit/images/kafka/Dockerfile (tansu)
#
# Every image carries the label org.courier.test.hash, a hash of what it is
# built from (its directory, its base, the tansu version and patches); an image whose
# label does not match is rebuilt. When everything is in place the script
# only checks and takes a second or two.
#
# It also removes test containers left behind by test processes that died.
#
# Environment:
#   COURIER_TEST_STATE_DIR      where logs and scratch files go (/var/tmp/courier-test)
#   COURIER_TEST_DEBIAN_MIRROR  mirror for debootstrap (default: the first
#                               Debian archive in this machine's apt sources)
#   COURIER_TEST_SKIP_IMAGES=1  only make sure the daemon runs
#   CARGO_HOME                  where the tansu binary is cached, in
#                               courier-test-tansu/ ($HOME/.cargo)
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGES_DIR="$ROOT/testkit/images"
STATE_DIR="${COURIER_TEST_STATE_DIR:-/var/tmp/courier-test}"
DOCKERD_LOG="$STATE_DIR/dockerd.log"
DEBIAN_MIRROR="${COURIER_TEST_DEBIAN_MIRROR:-}"
DEBIAN_SUITE=trixie
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql
TANSU_PATCHES="$IMAGES_DIR/kafka/patches"
TANSU_DIR="$CARGO_HOME/courier-test-tansu"
TANSU_BIN="$TANSU_DIR/tansu"
HASH_LABEL=org.courier.test.hash
BASE_IMAGE="courier-test/base:$DEBIAN_SUITE"
SERVICES=(rabbitmq nats postgres redis kafka)
# The legacy builder needs no buildx plugin, which Debian's docker.io lacks.
export DOCKER_BUILDKIT=0

now_ms() { date +%s%3N; }
T0=$(now_ms)
CURRENT_STEP="start"

log() {
    local ms=$(($(now_ms) - T0))
    printf '[test-env %3d.%01ds] %s\n' $((ms / 1000)) $(((ms % 1000) / 100)) "$*" >&2
}

die() {
    log "FAILED in step '$CURRENT_STEP': $*"
    exit 1
}

trap 'die "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

# step NAME FUNCTION [ARGS...]: runs one step, logging its name and duration.
step() {
    local name=$1 t
    shift
    CURRENT_STEP=$name
    t=$(now_ms)
    log "-> $name"
    "$@"
    t=$(($(now_ms) - t))
    log "   $name: done in $((t / 1000)).$((t % 1000 / 100))s"
}

# ---------------------------------------------------------------- packages

need_root() {
    [ "$(id -u)" -eq 0 ] || die "$1 needs root; run as root or do it by hand"
}

ensure_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    # Building librdkafka (rdkafka-sys) from source: a C/C++ toolchain, make, pkg-config, zlib.
    command -v cc >/dev/null 2>&1 || missing+=(build-essential)
    command -v make >/dev/null 2>&1 || missing+=(make)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    [ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
    if [ ${#missing[@]} -eq 0 ]; then
        log "   all packages present"
        return
    fi
    need_root "installing ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    log "   installing: ${missing[*]}"
    apt-get update -qq >"$STATE_DIR/apt.log" 2>&1 || die "apt-get update failed, see $STATE_DIR/apt.log"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >>"$STATE_DIR/apt.log" 2>&1 || die "apt-get install ${missing[*]} failed, see $STATE_DIR/apt.log"
}

# ------------------------------------------------------------------ docker

docker_answers() { docker info >/dev/null 2>&1; }

ensure_daemon() {
    if docker_answers; then
        log "   docker daemon answers"
        return
    fi
    [ -z "${DOCKER_HOST:-}" ] || die "DOCKER_HOST=$DOCKER_HOST does not answer; start that daemon or unset DOCKER_HOST"
    need_root "starting dockerd"
    local pid
    pid=$(pgrep -x dockerd || true)
    if [ -n "$pid" ]; then
        log "   dockerd (pid $pid) runs but does not answer yet; waiting"
    else
        log "   starting dockerd, log: $DOCKERD_LOG"
        setsid nohup dockerd --iptables=false --ip-masq=false \
            --host=unix:///var/run/docker.sock >"$DOCKERD_LOG" 2>&1 </dev/null &
        pid=$!
    fi
    local deadline=$(($(now_ms) + 60000))
    until docker_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            die "dockerd exited; see $DOCKERD_LOG"
        fi
        [ "$(now_ms)" -lt "$deadline" ] || die "dockerd did not answer within 60 s; see $DOCKERD_LOG"
        sleep 0.2
    done
    log "   dockerd (pid $pid) answers"
}

# Removes test containers whose test process is gone (labels set by the
# courier-testkit fixtures: org.courier.test.pid and org.courier.test.host).
remove_leftovers() {
    local host rows id pid chost stale=()
    host=$(hostname)
    rows=$(docker ps -a --filter label=org.courier.test.pid \
        --format '{{.ID}} {{.Label "org.courier.test.pid"}} {{.Label "org.courier.test.host"}}')
    while read -r id pid chost; do
        [ -n "$id" ] || continue
        [ "$chost" = "$host" ] || continue
        kill -0 "$pid" 2>/dev/null || stale+=("$id")
    done <<<"$rows"
    if [ ${#stale[@]} -gt 0 ]; then
        log "   removing ${#stale[@]} container(s) left by finished test processes"
        docker rm -f "${stale[@]}" >/dev/null
    else
        log "   none"
    fi
}

# ------------------------------------------------------------------ images

# The Debian archive this machine's apt uses (not its security archive):
# deb822 sources first, then the one-line format.
apt_mirror() {
    local uri
    uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
    if [ -z "$uri" ]; then
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($i !~ /security/) print $i; break } }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1)
    fi
    printf '%s\n' "$uri"
}

# Prints a short hash of the files under a directory plus extra strings.
hash_inputs() {
    local dir=$1
    shift
    {
        (cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        printf '%s\n' "$@"
    } | sha256sum | cut -c1-16
}

image_hash() {
    docker image inspect -f "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$1" 2>/dev/null || true
}

# This machine's deb822 apt sources with its own release's name replaced by
# the images' suite (bookworm-security becomes trixie-security, ...).
debian_sources() {
    local host
    host=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    if [ -n "$host" ] && [ "$host" != "$DEBIAN_SUITE" ]; then
        sed "s/\\b$host\\b/$DEBIAN_SUITE/g" /etc/apt/sources.list.d/debian.sources
    else
        cat /etc/apt/sources.list.d/debian.sources
    fi
}

base_inputs_hash() {
    printf '%s\n' "$DEBIAN_SUITE minbase v2" "$(debian_sources 2>/dev/null || true)" |
        sha256sum | cut -c1-16
}

build_base() {
    local want dir
    want=$(base_inputs_hash)
    if [ "$(image_hash "$BASE_IMAGE")" = "$want" ]; then
        log "   $BASE_IMAGE is up to date"
        return
    fi
    need_root "debootstrap"
    [ -n "$DEBIAN_MIRROR" ] || DEBIAN_MIRROR=$(apt_mirror)
    [ -n "$DEBIAN_MIRROR" ] || die "no Debian mirror in this machine's apt sources; set COURIER_TEST_DEBIAN_MIRROR"
    [ -f /etc/apt/sources.list.d/debian.sources ] ||
        die "/etc/apt/sources.list.d/debian.sources is missing; the base image copies it"
    dir="$STATE_DIR/rootfs"
    rm -rf "$dir"
    log "   debootstrap $DEBIAN_SUITE from $DEBIAN_MIRROR (about a minute), log: $STATE_DIR/debootstrap.log"
    debootstrap --variant=minbase "$DEBIAN_SUITE" "$dir" "$DEBIAN_MIRROR" \
        >"$STATE_DIR/debootstrap.log" 2>&1 || die "debootstrap failed, see $STATE_DIR/debootstrap.log"
    # The machine's own mirrors, with the image's suite in place of the machine's.
    debian_sources >"$dir/etc/apt/sources.list.d/debian.sources"
    rm -f "$dir/etc/apt/sources.list"
    # No recommends; no service starts during package installation in image builds.
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$dir/etc/apt/apt.conf.d/90courier-test"
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod 755 "$dir/usr/sbin/policy-rc.d"
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    log "   importing $BASE_IMAGE"
    tar -C "$dir" -c . | docker import \
        --change "LABEL $HASH_LABEL=$want" \
        --change 'ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive' \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$dir"
}

# What the cached tansu binary must have been built from.
tansu_recipe() {
    printf 'tansu %s features %s patches %s\n' "$TANSU_VERSION" "$TANSU_FEATURES" \
        "$(hash_inputs "$TANSU_PATCHES")"
}

# Builds tansu from its published sources, with testkit/images/kafka/patches
# applied to its tansu-broker crate (fixes to the broker's group coordinator
# that the tests need; each patch says what it fixes).
ensure_tansu() {
    local want build log="$STATE_DIR/tansu-build.log" src broker_src p
    want=$(tansu_recipe)
    if [ -x "$TANSU_BIN" ] && [ "$(cat "$TANSU_DIR/recipe" 2>/dev/null)" = "$want" ]; then
        log "   $TANSU_BIN present ($want)"
        return
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo is needed to build tansu $TANSU_VERSION"
    command -v git >/dev/null 2>&1 || die "git is needed to patch tansu $TANSU_VERSION"
    log "   building tansu $TANSU_VERSION with cargo (15-25 min on 2 cores), log: $log"
    build="$STATE_DIR/tansu-build"
    rm -rf "$build"
    mkdir -p "$build/sources/src"
    : >"$build/sources/src/lib.rs"
    # The published sources of the two crates, through cargo's own registry.
    printf '%s\n' '[package]' 'name = "tansu-sources"' 'version = "0.0.0"' \
        'edition = "2021"' 'publish = false' '' '[dependencies]' \
        "tansu = { version = \"=$TANSU_VERSION\", default-features = false }" \
        "tansu-broker = { version = \"=$TANSU_VERSION\", default-features = false }" \
        '' '[workspace]' >"$build/sources/Cargo.toml"
    cargo fetch --manifest-path "$build/sources/Cargo.toml" >"$log" 2>&1 ||
        die "cargo fetch of tansu's sources failed, see $log"
    src=$(find "$CARGO_HOME/registry/src" -mindepth 2 -maxdepth 2 \
        -name "tansu-$TANSU_VERSION" | head -n 1)
    broker_src=$(find "$CARGO_HOME/registry/src" -mindepth 2 -maxdepth 2 \
        -name "tansu-broker-$TANSU_VERSION" | head -n 1)
    [ -n "$src" ] && [ -n "$broker_src" ] ||
        die "tansu's sources are not in $CARGO_HOME/registry/src"
    cp -r "$src" "$build/tansu"
    cp -r "$broker_src" "$build/tansu-broker"
    for p in "$TANSU_PATCHES"/*.patch; do
        git -C "$build/tansu-broker" apply -p1 "$p" >>"$log" 2>&1 || die "$p does not apply"
        log "   applied $(basename "$p")"
    done
    printf '\n[workspace]\n\n[patch.crates-io]\ntansu-broker = { path = "../tansu-broker" }\n' \
        >>"$build/tansu/Cargo.toml"
    # The published lock file keeps every other dependency's version; only
    # tansu-broker's entry changes (to the patched copy).
    # Optimized at level 1, not release's 3: a test broker waits on its
    # storage and the network, not on its code, and the build is the
    # longest step of a fresh machine's setup (measured here: 23 min
    # instead of 31, the Kafka conformance cases as fast on both builds).
    cargo build --release --manifest-path "$build/tansu/Cargo.toml" --bin tansu \
        --features "$TANSU_FEATURES" --config profile.release.opt-level=1 \
        --target-dir "$build/target" >>"$log" 2>&1 ||
        die "building tansu failed, see $log"
    mkdir -p "$TANSU_DIR"
    install -m 0755 "$build/target/release/tansu" "$TANSU_BIN"
    printf '%s\n' "$want" >"$TANSU_DIR/recipe"
    rm -rf "$build"
}

build_service() {
    local name=$1 image="courier-test/$1:$DEBIAN_SUITE" dir="$IMAGES_DIR/$1" want extra ctx
    [ -f "$dir/Dockerfile" ] || die "$dir/Dockerfile is missing"
    extra="base=$(image_hash "$BASE_IMAGE")"
    [ "$name" = kafka ] && extra="$extra $(tansu_recipe)"
    want=$(hash_inputs "$dir" "$extra")
    if [ "$(image_hash "$image")" = "$want" ]; then
        log "   $image is up to date"
        return
    fi
    ctx="$dir"
    if [ "$name" = kafka ]; then
        step "tansu binary" ensure_tansu
        CURRENT_STEP="image $name"
        ctx="$STATE_DIR/kafka-context"
        rm -rf "$ctx"
        mkdir -p "$ctx"
        cp -r "$dir"/. "$ctx"/
        cp "$TANSU_BIN" "$ctx/tansu"
    fi
    log "   building $image, log: $STATE_DIR/build-$name.log"
    docker build --network=host --build-arg "BASE=$BASE_IMAGE" --label "$HASH_LABEL=$want" \
        -t "$image" "$ctx" >"$STATE_DIR/build-$name.log" 2>&1 || {
        tail -n 30 "$STATE_DIR/build-$name.log" >&2 || true
        die "docker build of $image failed, see $STATE_DIR/build-$name.log"
    }
    [ "$ctx" = "$dir" ] || rm -rf "$ctx"
}

# -------------------------------------------------------------------- main

mkdir -p "$STATE_DIR"
step "packages" ensure_packages
step "docker daemon" ensure_daemon
step "leftover test containers" remove_leftovers
if [ "${COURIER_TEST_SKIP_IMAGES:-0}" != 1 ]; then
    step "image base" build_base
    for service in "${SERVICES[@]}"; do
        step "image $service" build_service "$service"
    done
fi
CURRENT_STEP="end"
log "test environment ready"
