#!/usr/bin/env bash
# A free-threaded CPython (3.14t: ./configure --disable-gil) for the integration
# tests' target apps, built from source once into a fixed prefix, on a Debian 12
# x86_64 host, as root:
#
#   /opt/cpython-3.14t/bin/python3.14t         the interpreter, its headers under
#                                              include/python3.14t (scripts/gen_debug_offsets.py)
#   /opt/cpython-3.14t/venvs/web/              a venv with what the test apps import
#                                              (harness/interpreters.py WEB_APP_PACKAGES)
#
# No package holds one: Debian (bookworm, sid) packages no free-threaded
# interpreter, and PyPI none either. The package registries this machine
# reaches serve no CPython source either (Debian's source pool answers 404), so
# the source is CPython 3.14.7's tree, kept in the repository
# (third_party/cpython/Python-3.14.7.tar.xz, checked by its sha256), or taken
# from $CPYTHON_SOURCE (a Python-3.14.7.tar.xz or an unpacked tree).
#
# No PGO or LTO: `make -j2` took ~5 min here (34 s configure, 4 min make,
# 1 min install) on the 2 vCPUs. Idempotent: done when the prefix's .complete
# marker names this script's STAMP and the venv imports its modules; a run that
# stopped half-way starts over. Concurrent runs wait on a lock.
set -euo pipefail

VERSION=3.14.7
PREFIX=/opt/cpython-3.14t
PYTHON="$PREFIX/bin/python3.14t"
VENV="$PREFIX/venvs/web"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/otel-blocksnoop"
TARBALL="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/third_party/cpython/Python-$VERSION.tar.xz"
TARBALL_SHA256=29585a2a5265f4e2f70781b5b74ba9b8d1ab684ca57163d0304bd5d232d18c9c
# As harness/interpreters.py WEB_APP_PACKAGES and WEB_APP_MODULES.
PACKAGES=(opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
    opentelemetry-instrumentation-aiohttp-server aiohttp uvloop)
MODULES="opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http.trace_exporter, opentelemetry.instrumentation.aiohttp_server, aiohttp, uvloop"
STAMP="cpython=$VERSION configure=--disable-gil packages=${PACKAGES[*]}"
BUILD_DEPENDENCIES=(gcc make pkg-config libssl-dev libffi-dev zlib1g-dev libbz2-dev
    liblzma-dev libsqlite3-dev libreadline-dev libncurses-dev uuid-dev)

say() { printf 'free-threaded-python: %s\n' "$*" >&2; }
die() { printf 'free-threaded-python: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs into $PREFIX)"

# shellcheck source=scripts/debian.sh
. "$(dirname "${BASH_SOURCE[0]}")/debian.sh"

free_threaded() {
    [ -x "$PYTHON" ] && "$PYTHON" -c 'import sys; sys.exit(sys._is_gil_enabled())' 2>/dev/null
}

complete() {
    [ -f "$PREFIX/.complete" ] && [ "$(cat "$PREFIX/.complete")" = "$STAMP" ] \
        && free_threaded && "$VENV/bin/python" -c "import $MODULES" 2>/dev/null
}

# unpack DIR: the source tree into DIR, from $CPYTHON_SOURCE or the repository's.
unpack() {
    local source="${CPYTHON_SOURCE:-$TARBALL}"
    if [ "$source" = "$TARBALL" ] && [ -f "$source" ]; then
        echo "$TARBALL_SHA256  $source" | sha256sum --check --status \
            || die "$source does not have the sha256 it was committed with"
    fi
    if [ -d "$source" ]; then
        cp -a "$source/." "$1"
    elif [ -f "$source" ]; then
        tar -xJf "$source" -C "$1" --strip-components=1
    else
        die "no CPython $VERSION source at $source: no reachable registry serves one; set CPYTHON_SOURCE to a source tree or tarball"
    fi
    grep -q "#define PY_VERSION *\"$VERSION\"" "$1/Include/patchlevel.h" \
        || die "$source is not CPython $VERSION (Include/patchlevel.h)"
}

WORK=""
trap '[ -z "$WORK" ] || rm -rf "$WORK"' EXIT

build() {
    local work started=$SECONDS
    WORK="$(mktemp -d)"
    work="$WORK"
    mkdir "$work/src" "$work/build"
    unpack "$work/src"
    say "building CPython $VERSION --disable-gil into $PREFIX (~5 min on 2 vCPUs)"
    rm -rf "$PREFIX"
    (
        cd "$work/build"
        ../src/configure --disable-gil --prefix="$PREFIX" >"$work/configure.log" 2>&1 \
            || { tail -n 20 "$work/configure.log" >&2; exit 1; }
        make -j2 >"$work/make.log" 2>&1 || { tail -n 40 "$work/make.log" >&2; exit 1; }
        make install >"$work/install.log" 2>&1 || { tail -n 20 "$work/install.log" >&2; exit 1; }
    ) || die "failed to build CPython $VERSION (the log's tail is above)"
    free_threaded || die "$PYTHON does not run without the GIL"
    say "built in $((SECONDS - started)) s"
}

make_venv() {
    say "making $VENV with ${PACKAGES[*]}"
    "$PYTHON" -m venv --clear "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PACKAGES[@]}" 2>&1 \
        | grep -v "^WARNING: Location 'file:" >&2 || true
    # A package whose extension is not built for this ABI would turn the GIL back on.
    "$VENV/bin/python" -c "import $MODULES, sys; sys.exit(sys._is_gil_enabled())" \
        || die "importing the test apps' packages turned the GIL on"
}

main() {
    complete && return
    mkdir -p "$CACHE/src"
    exec 9>"$CACHE/src/.free-threaded-python.lock"
    flock 9
    complete && return  # made by another run while this one waited
    rm -f "$PREFIX/.complete"
    if ! free_threaded || [ "$("$PYTHON" -c 'import platform; print(platform.python_version())')" != "$VERSION" ]; then
        install_debian_packages "${BUILD_DEPENDENCIES[@]}"
        build
    fi
    make_venv
    echo "$STAMP" >"$PREFIX/.complete"
    say "ready: $PYTHON"
}

main
