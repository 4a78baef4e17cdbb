# Sourced by setup.sh and docker-setup.sh (after each defines `say`).
# shellcheck shell=bash

# install_debian_packages PKG...: apt-get install those not installed yet, quietly.
install_debian_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# apt_mirror: the host's own Debian mirror (its first deb822 or one-line source).
apt_mirror() {
    local uri
    uri="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v security | head -n 1 | awk '{print $2}')"
    [ -n "$uri" ] || uri="$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null \
        | grep -v security | head -n 1 | awk '{print $2}')"
    echo "${uri:-http://deb.debian.org/debian}"
}
