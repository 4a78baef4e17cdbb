#!/usr/bin/env bash
# A Docker engine and the base image the Dockerfiles start FROM, on a Debian 12
# x86_64 host, as root, with no image registry. For the container tests
# (`make test-containers`); `scripts/setup.sh` needs none of it.
# Idempotent: each step checks first and does nothing when already done.
#
#   Debian packages   docker.io (the engine), docker-compose (1.29), debootstrap
#   dockerd           started in the background when no engine answers, without
#                     touching the host's firewall (no iptables rules, no
#                     masquerading: containers reach the host at their gateway);
#                     its log goes to $DOCKERD_LOG
#   base image        debian:bookworm-slim built here: debootstrap --variant=minbase
#                     from the host's own apt mirror, trimmed like the slim image,
#                     with the host's CA bundle (builds that fetch over HTTPS trust
#                     what the host trusts), then `docker import`
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}"
SUITE="bookworm"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/otel-blocksnoop-dockerd.log}"
DOCKERD_START_S=60
DEB_PACKAGES=(docker.io docker-compose debootstrap)
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

say() { printf 'docker-setup: %s\n' "$*" >&2; }
die() { printf 'docker-setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, dockerd and debootstrap need it)"

# shellcheck source=scripts/debian.sh
. "$(dirname "${BASH_SOURCE[0]}")/debian.sh"

engine_answers() {
    timeout 10 docker info >/dev/null 2>&1
}

remove_stale_pid_file() {
    # A dockerd killed with SIGKILL leaves its pid file, and a new one refuses to
    # start while that pid names a process, even a zombie or an unrelated one.
    local pid_file=/var/run/docker.pid pid state comm
    [ -f "$pid_file" ] || return 0
    pid="$(cat "$pid_file")"
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    if [ "$comm" != dockerd ] || [ "$state" = Z ]; then
        say "removing the stale $pid_file (pid $pid: ${comm:-gone}${state:+, state $state})"
        rm -f "$pid_file"
    fi
}

start_dockerd() {
    engine_answers && return
    command -v dockerd >/dev/null || die "dockerd is not installed (docker.io)"
    remove_stale_pid_file
    say "starting dockerd (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    setsid dockerd --iptables=false --ip-masq=false --ip-forward=false \
        >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local waited=0
    until engine_answers; do
        [ "$waited" -lt "$DOCKERD_START_S" ] \
            || die "dockerd did not answer within ${DOCKERD_START_S} s: see $DOCKERD_LOG"
        sleep 1
        waited=$((waited + 1))
    done
}

trim_root() {
    # What debian:bookworm-slim leaves out: documentation, manuals, locales,
    # apt's caches and lists; and a dpkg rule that keeps later installs trimmed.
    local root="$1"
    rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/usr/share/locale/* "$root"/usr/share/lintian "$root"/usr/share/linda \
        "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    printf 'APT::Install-Recommends "false";\n' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
}

build_base_image() {
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return
    local mirror root
    mirror="$(apt_mirror)"
    root="$(mktemp -d /var/tmp/otel-blocksnoop-rootfs.XXXXXX)"
    trap 'rm -rf "$root"' RETURN
    say "building $BASE_IMAGE with debootstrap from $mirror"
    debootstrap --variant=minbase "$SUITE" "$root" "$mirror" >/dev/null
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -f "$root/etc/apt/sources.list"
    # The host's CAs: HTTPS from inside a build (pip, uv) trusts what the host
    # does. The local ones go where update-ca-certificates looks too, so that
    # installing ca-certificates in a build keeps them in the bundle it rebuilds.
    mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates"
    [ -f "$CA_BUNDLE" ] && cp "$CA_BUNDLE" "$root$CA_BUNDLE"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" \
        2>/dev/null || true
    trim_root "$root"
    tar -C "$root" --numeric-owner -c . | docker import \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV SSL_CERT_FILE=$CA_BUNDLE" \
        --change "ENV PIP_CERT=$CA_BUNDLE" \
        --change "ENV REQUESTS_CA_BUNDLE=$CA_BUNDLE" \
        --change 'CMD ["bash"]' \
        - "$BASE_IMAGE" >/dev/null
    say "$BASE_IMAGE: $(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | numfmt --to=iec)"
}

install_debian_packages "${DEB_PACKAGES[@]}"
start_dockerd
build_base_image
say "ready"
