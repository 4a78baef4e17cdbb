"""Apps in a filesystem of their own, as in a container, without a container engine.

``pivot_root_command`` runs a command in a new mount namespace (``unshare
--mount --propagation private``) whose root is a tmpfs (or a whole root
directory, e.g. a debootstrap of another distribution) holding only what a
``Root`` lists, entered with ``pivot_root``: the old root is unmounted, so
nothing of the host's filesystem is left but what was bound in. The PID
namespace and the network stay the host's (the app's PID is the one the
kernel reports). A Python interpreter is bound at a prefix the host does not
have (``python_root``), so any reader that opens the app's files at the
paths its /proc/PID/maps gives, on the host's side, finds nothing.

``chroot_root`` builds the other kind: a directory holding a copy (hard
links, made once and cached) of an interpreter, for an app started with
plain ``chroot`` in the host's own mount namespace.

Measured on the 2-vCPU test machine (busy): entering such a root costs
about 0.14 s (median of 20 runs of ``true``: 143 ms, against 1 ms on the
host; some twenty small mount/mkdir/ln commands), ``python -c pass`` 0.28 s
inside against 0.15 s on the host; nothing is downloaded or cached. The
chroot copy of a pyenv 3.11 takes 1.0 s once (115 MB of hard links and
small copies), then 10 ms. Interpreters of other distributions (issue 15's
3.14/3.15 roots) can be a whole root directory given as ``Root.base``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness import TARGETS
from harness.interpreters import CACHE, SID_ROOT

PYTHON_PREFIX = "/opt/app-python"
"""Where ``python_root`` puts the interpreter inside: no host has it there."""
SITE_PACKAGES = "/opt/app-packages"
"""Where ``python_root`` puts a venv's site-packages inside (on PYTHONPATH)."""
MUSL = "/usr/lib/x86_64-linux-musl"
"""Hidden inside by ``python_root``: app images seldom have musl, and Austin is linked to it."""

# The POSIX sh run by `unshare` in the new namespace, as root, before the app.
# Arguments: NEW_ROOT BASE, then (verb, a, b) triples, then "--" and the command.
#   bind SRC DEST     bind SRC (and mounts under it) at DEST, read-write
#   robind SRC DEST   the same, read-only
#   link TARGET DEST  a symlink DEST -> TARGET
#   hide - DEST       an empty tmpfs over DEST
#   proc - DEST       a new procfs (of the PID namespace the shell is in) at DEST
_ENTER = r"""
set -eu
app_path=$PATH
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
new=$1; base=$2; shift 2
if [ -n "$base" ]; then
    mount --rbind "$base" "$new"
else
    mount -t tmpfs -o mode=0755 app-root "$new"
fi
while [ "$1" != "--" ]; do
    verb=$1; a=$2; b=$3; shift 3
    case $verb in
    bind|robind)
        if [ -d "$a" ]; then mkdir -p "$new$b"; else mkdir -p "$new${b%/*}"; : > "$new$b"; fi
        mount --rbind "$a" "$new$b"
        if [ "$verb" = robind ]; then mount -o remount,bind,ro "$new$b"; fi ;;
    link) mkdir -p "$new${b%/*}"; ln -sfn "$a" "$new$b" ;;
    hide) mkdir -p "$new$b"; mount -t tmpfs -o mode=0755 hidden "$new$b" ;;
    proc) mkdir -p "$new$b"; mount -t proc proc "$new$b" ;;
    *) echo "enter: unknown verb $verb" >&2; exit 2 ;;
    esac
done
shift
# One name per app: apps started at once in one shared root must not remove each other's.
put_old=.host-root.$$
mkdir "$new/$put_old"
cd "$new"
pivot_root . "$put_old"
cd /
umount -l "/$put_old"
rmdir "/$put_old"
PATH=$app_path
exec "$@"
"""

_NEW_ROOT = "/mnt"
"""Where the new root is assembled, in the new namespace only (the host's /mnt is untouched)."""


@dataclass(frozen=True)
class Root:
    """What an app's own filesystem holds: host paths bound in, links, hidden dirs, its env."""

    binds: tuple[tuple[str, str], ...] = ()  # (host path, path inside), read-only
    writable: tuple[tuple[str, str], ...] = ()  # (host path, path inside), read-write
    links: tuple[tuple[str, str], ...] = ()  # (target, path inside)
    hidden: tuple[str, ...] = ()  # paths inside covered by an empty tmpfs
    env: Mapping[str, str] = field(default_factory=dict)  # exported to the app
    base: Path | None = None  # a whole root directory; None: an empty tmpfs
    own_proc: bool = False  # a procfs of its own (for an app in a PID namespace of its own)


def pivot_root_command(root: Root, argv: list[str]) -> list[str]:
    """The argv that runs ``argv`` (paths as the app sees them) inside ``root``.

    /dev is the host's, and so is /proc unless ``root.own_proc`` (then the
    argv must run in a PID namespace of its own: ``unshare --pid --fork``
    first). The process keeps its PID through every exec, so a sidecar may
    launch this argv and watch it.
    """
    spec = ["proc", "-", "/proc"] if root.own_proc else ["bind", "/proc", "/proc"]
    spec += ["bind", "/dev", "/dev"]
    for source, inside in root.binds:
        spec += ["robind", source, inside]
    for source, inside in root.writable:
        spec += ["bind", source, inside]
    for target, inside in root.links:
        spec += ["link", target, inside]
    for inside in root.hidden:
        spec += ["hide", "-", inside]
    exports = [f"{name}={value}" for name, value in root.env.items()]
    if exports:
        argv = ["/usr/bin/env", *exports, *argv]
    base = str(root.base) if root.base is not None else ""
    unshare = ["unshare", "--mount", "--propagation", "private"]
    return [*unshare, "sh", "-c", _ENTER, "enter", _NEW_ROOT, base, *spec, "--", *argv]


def host_system() -> Root:
    """The host's system files (read-only): enough for glibc programs and ``sh`` to run."""
    binds = [("/usr", "/usr"), ("/etc", "/etc")]
    links = []
    for top in ("bin", "sbin", "lib", "lib64"):
        host = Path("/") / top
        if host.is_symlink():
            links.append((str(host.readlink()), f"/{top}"))
        elif host.is_dir():
            binds.append((str(host), f"/{top}"))
    return Root(binds=tuple(binds), links=tuple(links), hidden=("/tmp",))  # noqa: S108 - an empty tmpfs, inside


def python_root(prefix: Path, site_packages: Path | None = None) -> Root:
    """The host's system plus the Python installed at ``prefix`` (a pyenv version), moved.

    Inside, the interpreter is ``PYTHON_PREFIX/bin/python3`` and its libpython
    under ``PYTHON_PREFIX/lib`` (on LD_LIBRARY_PATH: pyenv links it with an
    absolute RUNPATH to its host prefix, which is not there). A venv's
    ``site_packages`` goes on PYTHONPATH. musl is hidden (``MUSL``).
    """
    system = host_system()
    binds = [*system.binds, (str(prefix), PYTHON_PREFIX)]
    env = {"LD_LIBRARY_PATH": f"{PYTHON_PREFIX}/lib", "PATH": f"{PYTHON_PREFIX}/bin:/usr/bin:/bin"}
    if site_packages is not None:
        binds.append((str(site_packages), SITE_PACKAGES))
        env["PYTHONPATH"] = SITE_PACKAGES
    return Root(
        binds=tuple(binds),
        links=system.links,
        hidden=(*system.hidden, *((MUSL,) if Path(MUSL).is_dir() else ())),
        env=env,
    )


def sid_root() -> Root:
    """Debian sid's root (``SID_ROOT``, CPython 3.14 and 3.15), with the host's /tmp and targets.

    Both at the paths they have on the host, so that an app's arguments (the
    target scripts, FIFOs and files under a test's tmp_path) need no
    translation. The mount points are made in the root once, and stay.
    """
    return Root(
        base=SID_ROOT,
        binds=((str(TARGETS), str(TARGETS)),),
        writable=(("/tmp", "/tmp"),),  # noqa: S108 - the host's own /tmp, shared
    )


def python_inside() -> str:
    """The interpreter inside a ``python_root``."""
    return f"{PYTHON_PREFIX}/bin/python3"


def site_packages_of(venv_python: Path) -> Path:
    """The site-packages of the venv whose interpreter is ``venv_python``."""
    found = sorted((venv_python.parent.parent / "lib").glob("python3.*/site-packages"))
    if not found:
        msg = f"no site-packages in the venv of {venv_python}"
        raise FileNotFoundError(msg)
    return found[-1]


def chroot_root(prefix: Path, targets: Path) -> Path:
    """A directory to ``chroot`` into: the Python at ``prefix`` and ``targets``, made once.

    Hard links where the cache shares a filesystem with ``prefix`` (copies
    otherwise): the interpreter, its libpython and standard library (without
    its tests), the C libraries it loads, and ``targets`` at /app. Inside,
    the interpreter is ``PYTHON_PREFIX/bin/python3``. The app writes to /tmp
    inside the root.
    """
    version = prefix.name
    root = CACHE / "roots" / f"chroot-{version}"
    done = root / ".complete"
    if not done.exists():
        _build_chroot(root, prefix)
        done.touch()
    # Overwritten in place, never removed: another test may be running from it.
    shutil.copytree(
        targets,
        root / "app",
        ignore=shutil.ignore_patterns("__pycache__", "*.c"),
        dirs_exist_ok=True,
    )
    return root


def _build_chroot(root: Path, prefix: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    inside = root / PYTHON_PREFIX.lstrip("/")
    (inside / "bin").mkdir(parents=True)
    (inside / "lib").mkdir()
    minor = max((prefix / "lib").glob("python3.*")).name
    _link_or_copy(prefix / "bin" / minor, inside / "bin" / minor)
    (inside / "bin" / "python3").symlink_to(minor)
    for library in (prefix / "lib").glob("libpython3*.so*"):
        _link_or_copy(library, inside / "lib" / library.name)
    shutil.copytree(
        prefix / "lib" / minor,
        inside / "lib" / minor,
        copy_function=_link_or_copy,
        ignore=shutil.ignore_patterns("test", "site-packages", "__pycache__", "idlelib"),
        symlinks=True,
    )
    dynload = inside / "lib" / minor / "lib-dynload"
    for needed in _shared_libraries([prefix / "bin" / minor, *dynload.glob("*.so")]):
        target = root / needed.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(needed).resolve(), target)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    for name, usr in (("lib", "usr/lib"), ("lib64", "usr/lib64")):
        if not (root / name).exists() and (root / usr).exists():
            (root / name).symlink_to(usr)


def _shared_libraries(files: list[Path]) -> set[str]:
    """The C libraries ``files`` load (ldd), by the paths they are loaded at on the host."""
    out = subprocess.run(
        ["ldd", *map(str, files)], capture_output=True, text=True, check=False
    ).stdout
    found = set()
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if len(parts) >= 3 and parts[1] == "=>" else parts[0]
        if path.startswith("/") and "libpython" not in path and not path.endswith(":"):
            found.add(_usr_path(path))
    return found


def _usr_path(path: str) -> str:
    """/lib/x/y as /usr/lib/x/y where /lib is a link to usr/lib (merged /usr)."""
    top, _, rest = path.lstrip("/").partition("/")
    host = Path("/") / top
    if host.is_symlink():
        return f"/{str(host.readlink()).strip('/')}/{rest}"
    return path


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


__all__ = [
    "PYTHON_PREFIX",
    "SITE_PACKAGES",
    "Root",
    "chroot_root",
    "host_system",
    "pivot_root_command",
    "python_inside",
    "python_root",
    "sid_root",
    "site_packages_of",
]
