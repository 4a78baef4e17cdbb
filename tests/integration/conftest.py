"""Fixtures shared by integration tests: target interpreters with OpenTelemetry."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from harness.interpreters import (
    MINORS,
    SID_MINORS,
    SID_SETUP,
    WEB_APP_MODULES,
    WEB_APP_PACKAGES,
    cached_venv,
    pyenv_python,
    renamed_python,
    sid_venv,
    static_python,
)
from harness.mntns import Root, pivot_root_command, sid_root
from tests.helpers import IN_CI


def otel_venv(
    name: str,
    base: Path | None,
    packages: tuple[str, ...] = ("opentelemetry-sdk",),
    modules: tuple[str, ...] = ("opentelemetry.sdk.trace",),
) -> Path:
    """A venv of ``base`` with ``packages`` (``modules`` checks them), made once and cached."""
    if base is None or not base.exists():
        pytest.skip(f"no {name} interpreter here")
    try:
        return cached_venv(name, base, packages, modules)
    except subprocess.CalledProcessError as error:
        if IN_CI:
            pytest.fail(f"failed to install {' '.join(packages)} for {name}: {error}")
        pytest.skip(f"cannot install {' '.join(packages)} for {name}: {error}")


@dataclass(frozen=True)
class TargetPython:
    """An interpreter the target apps run on: on the host, or inside a root of its own.

    Inside a root (Debian sid's 3.14 and 3.15, ``harness.mntns.sid_root``) the
    app runs under pivot_root, with the host's /tmp and the target apps at
    their host paths: arguments need no translation, only ``command``.
    """

    name: str
    python: str  # the interpreter's path, as the app sees it
    root: Root | None = None
    version: tuple[int, int] = (0, 0)  # (3, X); (0, 0) when not known here

    def command(self, argv: list[str]) -> list[str]:
        """The argv that runs ``argv`` (which may name ``python``) where this interpreter is."""
        return argv if self.root is None else pivot_root_command(self.root, argv)

    def run(self, script: Path | str, *args: str) -> list[str]:
        """The argv that runs ``script`` with ``args`` on this interpreter."""
        return self.command([self.python, str(script), *args])

    def __str__(self) -> str:  # pytest ids, error messages
        return self.name


# Every pyenv CPython 3.9-3.13, Debian's own 3.11 (non-PIE, symbols in the executable),
# and Debian sid's 3.14 and 3.15 (built with the JIT), in their own root.
INTERPRETERS = [f"py3.{m}" for m in MINORS] + ["debian"] + [f"py3.{m}" for m in SID_MINORS]


def interpreter(name: str) -> Path | None:
    """The base interpreter an ``INTERPRETERS`` name stands for, on the host (3.9-3.13)."""
    if name == "debian":
        return Path("/usr/bin/python3")
    return pyenv_python(int(name.removeprefix("py3.")))


def version_of(name: str) -> tuple[int, int]:
    return (3, 11) if name == "debian" else (3, int(name.removeprefix("py3.")))


def sid_python(name: str) -> TargetPython:
    """Debian sid's 3.14 or 3.15, in its root, with every package the test apps import."""
    minor = int(name.removeprefix("py3."))
    inside = sid_venv(minor)
    if inside is None:
        why = f"no CPython 3.{minor} root here: `bash {SID_SETUP}` (make test runs it) makes it"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    return TargetPython(name, inside, sid_root(), (3, minor))


def target_python(name: str, web: bool) -> TargetPython:
    if version_of(name)[1] in SID_MINORS:
        return sid_python(name)
    if web:
        venv = otel_venv(f"web-{name}", interpreter(name), WEB_APP_PACKAGES, WEB_APP_MODULES)
    else:
        venv = otel_venv(name, interpreter(name))
    return TargetPython(name, str(venv), version=version_of(name))


@pytest.fixture(scope="session", params=INTERPRETERS)
def otel_python(request: pytest.FixtureRequest) -> TargetPython:
    """Each interpreter with the OTel SDK."""
    return target_python(request.param, web=False)


@pytest.fixture(scope="session", params=INTERPRETERS)
def web_python(request: pytest.FixtureRequest) -> TargetPython:
    """Each interpreter with the OTel SDK, OTLP/HTTP, aiohttp + its OTel instrumentation, uvloop."""
    return target_python(request.param, web=True)


# Interpreters whose file name says no version, one per way the sidecar learns
# it from the file instead: Debian's 3.11 (Py_Version) copied as a venv made
# with --copies has it (Dockerfile.app), and pyenv's 3.9, 3.10 (their cache
# tag and extension suffix) and 3.13 linked statically, copied the same way;
# and sid's 3.14 and 3.15 (linked statically by Debian), copied into the root.
NAMELESS = ["debian", "py3.9", "py3.10", "py3.13", *(f"py3.{m}" for m in SID_MINORS)]


@pytest.fixture(params=NAMELESS)
def nameless_python(request: pytest.FixtureRequest, tmp_path: Path) -> TargetPython:
    """``bin/python3`` of a venv with the OTel SDK whose interpreter is a copy, no libpython.

    sid's copies run in its root, which shares the host's /tmp (``tmp_path``): the
    same path on both sides.
    """
    name: str = request.param
    if version_of(name)[1] in SID_MINORS:
        return sid_nameless_python(name, tmp_path / "app")
    packages = otel_venv(name, interpreter(name))
    try:
        if name == "debian":
            executable: Path | None = Path("/usr/bin/python3").resolve()
        else:
            executable = static_python(int(name.removeprefix("py3.")))
    except (OSError, subprocess.CalledProcessError) as error:
        executable = None
        if IN_CI:
            pytest.fail(f"failed to link {name} statically: {error}")
    if executable is None:
        pytest.skip(f"no statically linked {name} here")
    python = renamed_python(executable, packages, tmp_path / "app")
    return TargetPython(name, str(python), version=version_of(name))


def sid_nameless_python(name: str, dest: Path) -> TargetPython:
    """sid's interpreter copied to ``dest``/bin/python3, a venv like its own (``renamed_python``)
    whose site-packages link to the root's venv, resolved inside the root only."""
    venv_python = sid_python(name)
    root = venv_python.root
    assert root is not None
    assert root.base is not None
    venv = Path(venv_python.python).parent.parent  # as the app sees it
    minor = version_of(name)[1]
    python = dest / "bin" / "python3"
    python.parent.mkdir(parents=True)
    shutil.copy2(root.base / f"usr/bin/python3.{minor}", python)
    shutil.copy(root.base / venv.relative_to("/") / "pyvenv.cfg", dest / "pyvenv.cfg")
    site = Path(f"lib/python3.{minor}/site-packages")
    (dest / site).parent.mkdir(parents=True)
    (dest / site).symlink_to(venv / site)
    return replace(venv_python, python=str(python))
