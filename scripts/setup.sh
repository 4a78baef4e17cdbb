#!/usr/bin/env bash
# Installs everything otel-blocksnoop needs on a Debian 12 x86_64 host, as root.
# Idempotent: each step checks first and does nothing when already done.
#
#   Debian packages   BCC (python3-bpfcc), kernel headers, linux-libc-dev (what
#                     scripts/gen_syscall_names.py reads), musl (for Austin),
#                     util-linux, mount, coreutils (unshare, pivot_root, chroot:
#                     the tests' apps in a filesystem of their own, harness/mntns.py),
#                     chromium and a font (the HTML report's browser test, driven by
#                     Playwright from the venv: Playwright downloads no browser here)
#   header links      /lib/modules/$(uname -r)/{build,source} -> Debian's headers
#   tracefs           mounted on /sys/kernel/tracing
#   uv + venv         uv from PyPI, then `uv sync --locked` into .venv
#   bcc in the venv   a .pth pointing at a directory that holds only bcc
#   Austin            the musllinux build of austin-dist, into .venv/bin/austin
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
AUSTIN_VERSION="4.0.0"
DEB_PACKAGES=(python3-bpfcc libbpfcc bpfcc-tools linux-headers-amd64 linux-libc-dev musl unzip docker-compose util-linux mount coreutils chromium fonts-dejavu-core)

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (BPF, apt-get and mount need it)"

# shellcheck source=scripts/debian.sh
. "$(dirname "${BASH_SOURCE[0]}")/debian.sh"

link_kernel_headers() {
    local mod="/lib/modules/$(uname -r)"
    [ -e "$mod/build/include/generated/autoconf.h" ] \
        && [ -e "$mod/source/include/linux/kconfig.h" ] && return
    local build common
    build="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)"
    common="$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$build" ] && [ -n "$common" ] || die "no kernel headers under /usr/src"
    say "linking kernel headers: $mod/build -> $build"
    mkdir -p "$mod"
    ln -sfn "$build" "$mod/build"
    ln -sfn "$common" "$mod/source"
}

mount_tracefs() {
    [ -d /sys/kernel/tracing/events ] && return
    say "mounting tracefs on /sys/kernel/tracing"
    mount -t tracefs tracefs /sys/kernel/tracing
}

find_uv() {
    command -v uv 2>/dev/null && return
    local py
    py="$(command -v python3)"
    say "installing uv from PyPI"
    "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore uv >/dev/null
    command -v uv 2>/dev/null && return
    "$py" -c 'import sysconfig; print(sysconfig.get_path("scripts") + "/uv")'
}

sync_venv() {
    local uv
    uv="$(find_uv)"
    UV_PYTHON_DOWNLOADS=never "$uv" sync --locked --quiet --project "$ROOT"
}

link_bcc_into_venv() {
    local src=/usr/lib/python3/dist-packages/bcc
    [ -d "$src" ] || die "python3-bpfcc is not installed ($src missing)"
    # Only bcc itself: the Debian dist-packages also hold an old protobuf
    # and other modules that must not shadow the venv's own.
    local dir="$VENV/system-bcc"
    mkdir -p "$dir"
    ln -sfn "$src" "$dir/bcc"
    local site
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
    echo "$dir" > "$site/otel_blocksnoop_system_bcc.pth"
}

install_austin() {
    local bin="$VENV/bin/austin"
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$AUSTIN_VERSION"; then
        return
    fi
    # The manylinux wheel needs glibc 2.38; the musllinux one runs here with musl.
    say "installing Austin $AUSTIN_VERSION (musl build)"
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    python3 -m pip download -q --disable-pip-version-check --no-deps \
        --only-binary :all: --platform musllinux_1_1_x86_64 \
        -d "$tmp" "austin-dist==$AUSTIN_VERSION" >/dev/null
    unzip -q -o -j "$tmp"/austin_dist-*.whl "austin_dist-$AUSTIN_VERSION.data/scripts/austin" -d "$tmp"
    install -m 0755 "$tmp/austin" "$bin"
    "$bin" --version >/dev/null || die "Austin does not run: $("$bin" --version 2>&1 | head -n 1)"
}

install_debian_packages "${DEB_PACKAGES[@]}"
link_kernel_headers
mount_tracefs
sync_venv
link_bcc_into_venv
install_austin
say "ready"
