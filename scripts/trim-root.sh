#!/bin/sh
# Trims the sidecar image's root (Dockerfile, stage "root") down to what runs:
# Python, BCC's libbpfcc with the LLVM/clang libraries it links, musl for
# Austin, util-linux's setpriv and nsenter (Austin's start in the app's mount
# namespace), and sh/pgrep/sleep for the compose and Kubernetes commands that
# find the app. Everything else the base image and apt brought goes: the package
# managers (apt, dpkg, perl, debconf), login and disk tools, time zones, glibc's
# charset converters, documentation, ICU's unused halves, the Python modules
# nothing here imports, and of coreutils and util-linux every program but those
# named in PROGRAMS. The dpkg status keeps the packages that stay (those two
# listed whole), so image scanners still see them. It fails when a library any remaining ELF file needs
# is gone.
set -eu

KEEP="
base-files base-passwd dash coreutils grep sed debianutils
libc6 libgcc-s1 libstdc++6 gcc-12-base
python3 python3-minimal python3.11 python3.11-minimal libpython3.11-minimal
libpython3.11-stdlib libpython3-stdlib media-types
python3-bpfcc libbpfcc libbpf1 libelf1 libllvm14 libclang-cpp14 libz3-4 libicu72
libxml2 libffi8 libedit2 libbsd0 libmd0 zlib1g liblzma5 libbz2-1.0 libzstd1
liblz4-1 libtinfo6 libncursesw6 libssl3 libexpat1 libcrypt1 libuuid1
libnsl2 libtirpc3 libtirpc-common libgssapi-krb5-2 libkrb5-3 libkrb5support0
libk5crypto3 libcom-err2 libkeyutils1
libselinux1 libpcre2-8-0 libacl1 libattr1 libgmp10 libcap2
musl procps libproc2-0 libsystemd0 libgcrypt20 libgpg-error0
util-linux libcap-ng0 libsmartcols1 libudev1 libmount1 libblkid1
"

# The programs kept of the packages in PARTLY; their other programs go.
PARTLY="coreutils util-linux"
PROGRAMS="
setpriv nsenter
sleep cat ls env id mkdir rm rmdir cp mv ln echo true false head tail sort uniq tr
cut wc test [ printf basename dirname readlink realpath uname date chmod touch tee
stat du df nproc timeout
"

is_kept() {
    for k in $KEEP; do [ "$k" = "$1" ] && return 0; done
    return 1
}

# Every dropped package's files, and those of the packages kept in part, listed
# before dpkg itself is gone.
for pkg in $PARTLY; do dpkg-query -L "$pkg"; done > /tmp/partly-files
: > /tmp/dropped
: > /tmp/dropped-files
for pkg in $(dpkg-query -Wf '${Package}\n'); do
    is_kept "$pkg" && continue
    echo "$pkg" >> /tmp/dropped
    dpkg-query -L "$pkg" >> /tmp/dropped-files 2>/dev/null || true
done
while read -r pkg; do
    rm -f /var/lib/dpkg/info/"$pkg".* /var/lib/dpkg/info/"$pkg":amd64.*
done < /tmp/dropped
# Files only: a directory (or a link to one, as /bin is) may be shared with a
# package that stays.
while read -r path; do
    [ -d "$path" ] && continue
    if [ -f "$path" ] || [ -L "$path" ]; then rm -f "$path"; fi
done < /tmp/dropped-files

# Of the packages kept in part, the programs not named.
while read -r path; do
    case "$path" in
        /bin/* | /sbin/* | /usr/bin/* | /usr/sbin/*) ;;
        *) continue ;;
    esac
    [ -d "$path" ] && continue
    keep=""
    for program in $PROGRAMS; do [ "${path##*/}" = "$program" ] && keep=1; done
    [ -n "$keep" ] || rm -f "$path"
done < /tmp/partly-files

# The status file without the dropped packages' stanzas (python3 is still here).
python3 - /var/lib/dpkg/status /tmp/dropped <<'EOF'
import sys
status, dropped = sys.argv[1], set(open(sys.argv[2]).read().split())
stanzas = open(status).read().strip().split("\n\n")
kept = [s for s in stanzas if s.split("\n", 1)[0].removeprefix("Package: ") not in dropped]
open(status, "w").write("\n\n".join(kept) + "\n")
EOF
rm -f /tmp/dropped /tmp/dropped-files /tmp/partly-files

# What the packages that stay bring but nothing here uses.
PY=/usr/lib/python3.11
DYN=$PY/lib-dynload
rm -rf \
    /usr/share/doc /usr/share/man /usr/share/info /usr/share/locale /usr/share/lintian \
    /usr/share/zoneinfo /usr/share/common-licenses /usr/share/bash-completion \
    /usr/lib/x86_64-linux-gnu/gconv \
    /usr/lib/x86_64-linux-gnu/libicui18n.so.* /usr/lib/x86_64-linux-gnu/libicuio.so.* \
    /usr/lib/x86_64-linux-gnu/libicutest.so.* /usr/lib/x86_64-linux-gnu/libicutu.so.* \
    /var/cache/* /var/lib/apt /var/log/* /etc/apt \
    $PY/test $PY/idlelib $PY/tkinter $PY/lib2to3 $PY/ensurepip $PY/pydoc_data \
    $PY/turtledemo $PY/distutils $PY/unittest/test $PY/sqlite3 $PY/curses \
    $DYN/_sqlite3.* $DYN/_dbm.* $DYN/_gdbm.* $DYN/_curses*.* $DYN/readline.* \
    $DYN/_codecs_jp.* $DYN/_codecs_kr.* $DYN/_codecs_cn.* $DYN/_codecs_tw.* \
    $DYN/_codecs_hk.* $DYN/_codecs_iso2022.* $DYN/_ctypes_test.* $DYN/_testcapi.* \
    $DYN/_testbuffer.* $DYN/_testinternalcapi.* $DYN/_testmultiphase.* \
    $DYN/_testclinic.* $DYN/_xxtestfuzz.* $DYN/xxlimited*.* $DYN/xxsubtype.*

# Every library a remaining ELF file links must still be here.
python3 - <<'EOF'
import os, subprocess, sys
missing = []
for top in ("/usr", "/etc", "/opt"):
    for d, _, files in os.walk(top):
        for name in files:
            path = os.path.join(d, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
            listed = subprocess.run(
                ["/lib64/ld-linux-x86-64.so.2", "--list", path], capture_output=True, text=True
            ).stdout
            missing += [f"{path}: {l.strip()}" for l in listed.splitlines() if "not found" in l]
if missing:
    sys.exit("trim-root: libraries gone that files still need:\n" + "\n".join(missing))
EOF
