"""Target interpreters: pyenv's CPython 3.9-3.13, sid's 3.14 and 3.15, venvs with packages.

pyenv's venvs are made on demand and cached; Debian sid's interpreters live
in a root of their own (``SID_ROOT``), with their venvs, made by
scripts/sid-pythons.sh: apps run inside it (harness.mntns).

Also interpreters whose file name says no version (``static_python``,
``renamed_python``), as a venv made with ``--copies`` or Debian's
statically linked python3 give them.

Shared by the integration tests (tests/integration/conftest.py), the
benchmarks (bench/blocksnoop_bench/linking.py) and examples/request_trace.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

MINORS = (9, 10, 11, 12, 13)
# What targets/web_app.py needs. pip picks the newest release that supports
# each interpreter: on 3.9 that is OpenTelemetry 1.41 (instrumentation 0.62b1)
# and aiohttp 3.13, their last releases for 3.9.
WEB_APP_PACKAGES = (
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-instrumentation-aiohttp-server",
    "aiohttp",
    "uvloop",
)
WEB_APP_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.instrumentation.aiohttp_server",
    "aiohttp",
    "uvloop",
)
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "otel-blocksnoop"
SID_ROOT = CACHE / "roots" / "sid-pythons"
"""A Debian sid root with python3.14 and python3.15 (scripts/sid-pythons.sh makes it, once)."""
SID_MINORS = (14, 15)
"""The CPython versions this machine's Debian lacks, found in ``SID_ROOT``: apps run inside it."""
SID_SETUP = Path(__file__).resolve().parent.parent / "scripts" / "sid-pythons.sh"
FREE_THREADED_VERSION = "3.14.7"
"""The free-threaded CPython built here from source (no package has one), as the script says."""
FREE_THREADED_PREFIX = Path("/opt/cpython-3.14t")
"""Where scripts/free-threaded-python.sh installs it, with a venv of ``WEB_APP_PACKAGES``."""
FREE_THREADED_SETUP = Path(__file__).resolve().parent.parent / "scripts" / "free-threaded-python.sh"


def free_threaded_venv() -> Path | None:
    """The python of the free-threaded build's venv with ``WEB_APP_PACKAGES``, if made."""
    python = FREE_THREADED_PREFIX / "venvs" / "web" / "bin" / "python"
    return python if python.exists() else None


def sid_python(minor: int) -> str | None:
    """The path, inside ``SID_ROOT``, of its CPython 3.<minor>, if it is there."""
    inside = f"/usr/bin/python3.{minor}"
    return inside if (SID_ROOT / inside.lstrip("/")).exists() else None


def sid_venv(minor: int) -> str | None:
    """The path, inside ``SID_ROOT``, of the python of its venv with ``WEB_APP_PACKAGES``."""
    inside = f"/opt/venvs/web-3.{minor}/bin/python"
    # A link to /usr/bin/python3.X, which only the root has: not followed here.
    return inside if os.path.lexists(SID_ROOT / inside.lstrip("/")) else None


def pyenv_python(minor: int) -> Path | None:
    """The newest pyenv CPython 3.<minor>, if pyenv has one."""
    try:
        root = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    found = sorted(Path(root, "versions").glob(f"3.{minor}.*/bin/python3"))
    return found[-1] if found else None


def imports(python: Path | str, modules: tuple[str, ...]) -> bool:
    probe = [str(python), "-c", f"import {', '.join(modules)}"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def cached_venv(name: str, base: Path, packages: tuple[str, ...], modules: tuple[str, ...]) -> Path:
    """The python of a venv of ``base`` with ``packages``, made once and kept in the cache.

    ``modules`` tell whether a cached venv has them. Raises CalledProcessError
    (or OSError) when the venv cannot be made.
    """
    venv = CACHE / "targets" / name
    python = venv / "bin" / "python"
    if python.exists() and imports(python, modules):
        return python
    sys.stderr.write(f"making {venv} with {', '.join(packages)}...\n")
    subprocess.run([str(base), "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], check=True)
    return python


def static_python(minor: int) -> Path | None:
    """The pyenv CPython 3.<minor>, linked into one executable, made once and kept in the cache.

    Linked as CPython's own Makefile links ``python`` without
    ``--enable-shared`` (Debian and Ubuntu ship their python3 so): its
    Programs/python.o and libpython3.X.a, with ``-Xlinker -export-dynamic``.
    Running it maps no libpython file. None when pyenv has no such build;
    CalledProcessError (or OSError) when it cannot be linked.
    """
    base = pyenv_python(minor)
    if base is None:
        return None
    prefix = base.resolve().parent.parent
    version = f"3.{minor}"
    config = next(prefix.glob(f"lib/python{version}/config-{version}*/"), None)
    if config is None or not (config / "python.o").exists():
        return None
    python = CACHE / "targets" / f"static-{prefix.name}" / "python"
    if python.exists():
        return python
    libs = subprocess.run(
        [str(prefix / "bin" / f"python{version}-config"), "--libs", "--embed"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    python.parent.mkdir(parents=True, exist_ok=True)
    partial = python.with_suffix(".partial")
    subprocess.run(
        ["cc", "-o", str(partial), str(config / "python.o"), str(config / f"libpython{version}.a"),
         *libs, "-Xlinker", "-export-dynamic"],
        check=True,
    )  # fmt: skip
    partial.replace(python)
    return python


def renamed_python(executable: Path, packages_of: Path, dest: Path) -> Path:
    """A copy of ``executable`` at ``dest``/bin/python3, seeing the packages of ``packages_of``.

    ``packages_of`` is the python of a venv of the same CPython; ``dest``
    becomes a venv like it whose interpreter is a copy, named without its
    version, as ``python3 -m venv --copies`` makes it (Dockerfile.app).
    """
    venv = packages_of.parent.parent
    (site,) = venv.glob("lib/python3.*/site-packages")
    python = dest / "bin" / "python3"
    python.parent.mkdir(parents=True)
    shutil.copy2(executable, python)
    shutil.copy(venv / "pyvenv.cfg", dest / "pyvenv.cfg")
    (dest / site.relative_to(venv)).parent.mkdir(parents=True)
    (dest / site.relative_to(venv)).symlink_to(site)
    return python
