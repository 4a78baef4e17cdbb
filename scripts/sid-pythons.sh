#!/usr/bin/env bash
# CPython 3.14 and 3.15 for the integration tests' target apps, on a Debian 12
# x86_64 host, as root. Debian 12 has neither: Debian sid has both (python3.14,
# python3.15, with -dev headers and -venv), so they live in a sid root of their
# own, made once and cached beside the tests' other roots and venvs:
#
#   $CACHE/roots/sid-pythons/            debootstrap --variant=minbase sid, from
#                                        the host's own apt mirror
#     usr/bin/python3.1{4,5}             the interpreters, usr/include/python3.1X
#                                        their headers (scripts/gen_cpython_offsets.py)
#     opt/venvs/web-3.1X/                a venv of each with what the test apps
#                                        import (harness/interpreters.py WEB_APP_PACKAGES)
#
# Apps run in it under pivot_root (harness/mntns.py), so their /proc/PID/maps
# paths are the root's. Idempotent: done when the root's .complete marker
# names this script's PACKAGES and every venv imports its modules; a run
# that stopped half-way starts over. Concurrent runs wait on a lock.
set -euo pipefail

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/otel-blocksnoop"
ROOTFS="$CACHE/roots/sid-pythons"
SUITE="sid"
PYTHONS=(3.14 3.15)
# As harness/interpreters.py WEB_APP_PACKAGES and WEB_APP_MODULES.
PACKAGES=(opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
    opentelemetry-instrumentation-aiohttp-server aiohttp uvloop)
MODULES="opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http.trace_exporter, opentelemetry.instrumentation.aiohttp_server, aiohttp, uvloop"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# Where the root keeps the host's CA bundle: apart from its own, which installing
# ca-certificates in it rebuilds without the host's local CAs (an HTTPS proxy's).
HOST_CA=/etc/ssl/host-ca-bundle.crt
STAMP="pythons=${PYTHONS[*]} packages=${PACKAGES[*]}"

say() { printf 'sid-pythons: %s\n' "$*" >&2; }
die() { printf 'sid-pythons: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap and chroot need it)"

# shellcheck source=scripts/debian.sh
. "$(dirname "${BASH_SOURCE[0]}")/debian.sh"

# in_root CMD...: CMD in the root, with a clean environment (nothing of the host's
# pip configuration, whose paths the root does not have, but its CA bundle).
in_root() {
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        PIP_CERT="$HOST_CA" SSL_CERT_FILE="$HOST_CA" PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_ROOT_USER_ACTION=ignore PIP_DEFAULT_TIMEOUT=180 \
        chroot "$ROOTFS" "$@"
}

venv_ready() {
    local python="$ROOTFS/opt/venvs/web-$1/bin/python"
    [ -x "$python" ] && in_root "/opt/venvs/web-$1/bin/python" -c "import $MODULES" 2>/dev/null
}

pythons_installed() {
    [ -f "$ROOTFS/.debootstrapped" ] || return 1
    local version
    for version in "${PYTHONS[@]}"; do
        [ -x "$ROOTFS/usr/bin/python$version" ] || return 1
    done
}

complete() {
    [ -f "$ROOTFS/.complete" ] && [ "$(cat "$ROOTFS/.complete")" = "$STAMP" ] || return 1
    local version
    for version in "${PYTHONS[@]}"; do
        venv_ready "$version" || return 1
    done
}

make_root() {
    local mirror
    mirror="$(apt_mirror)"
    say "making a Debian $SUITE root with debootstrap from $mirror: $ROOTFS"
    rm -rf "$ROOTFS"
    mkdir -p "$ROOTFS"
    debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$mirror" >/dev/null
    cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -f "$ROOTFS/etc/apt/sources.list"
    cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
    local packages=() version
    for version in "${PYTHONS[@]}"; do
        packages+=("python$version" "python$version-dev" "python$version-venv")
    done
    say "installing ${packages[*]}"
    # sid's Release files are only valid for a week; a snapshot mirror may be older.
    in_root apt-get -qq -o Acquire::Check-Valid-Until=false update
    in_root apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
    in_root apt-get clean
}

make_venv() {
    local version="$1" venv="/opt/venvs/web-$1"
    # The host's CAs and resolver: pip inside reaches PyPI as the host does.
    mkdir -p "$ROOTFS$(dirname "$HOST_CA")"
    cp "$CA_BUNDLE" "$ROOTFS$HOST_CA"
    cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
    say "making $venv in the root with ${PACKAGES[*]}"
    in_root "python$version" -m venv --clear "$venv"
    in_root "$venv/bin/python" -m pip install -q "${PACKAGES[@]}"
}

main() {
    complete && return
    mkdir -p "$CACHE/roots"
    exec 9>"$CACHE/roots/.sid-pythons.lock"
    flock 9
    complete && return  # made by another run while this one waited
    local started=$SECONDS version
    if ! pythons_installed; then
        rm -f "$ROOTFS/.complete"
        make_root
        touch "$ROOTFS/.debootstrapped"
    fi
    for version in "${PYTHONS[@]}"; do
        venv_ready "$version" || make_venv "$version"
    done
    echo "$STAMP" >"$ROOTFS/.complete"
    say "ready in $((SECONDS - started)) s"
}

install_debian_packages debootstrap
main
