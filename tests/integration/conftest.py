"""Fixtures shared by integration tests: target interpreters with OpenTelemetry."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.interpreters import (
    MINORS,
    WEB_APP_MODULES,
    WEB_APP_PACKAGES,
    cached_venv,
    pyenv_python,
)
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


# Every pyenv CPython 3.9-3.13, and Debian's own 3.11 (non-PIE, symbols in the executable).
INTERPRETERS = [f"py3.{m}" for m in MINORS] + ["debian"]


def interpreter(name: str) -> Path | None:
    """The base interpreter an ``INTERPRETERS`` name stands for."""
    if name == "debian":
        return Path("/usr/bin/python3")
    return pyenv_python(int(name.removeprefix("py3.")))


@pytest.fixture(scope="session", params=INTERPRETERS)
def otel_python(request: pytest.FixtureRequest) -> Path:
    name: str = request.param
    return otel_venv(name, interpreter(name))


@pytest.fixture(scope="session", params=INTERPRETERS)
def web_python(request: pytest.FixtureRequest) -> Path:
    """Each interpreter with the OTel SDK, OTLP/HTTP, aiohttp + its OTel instrumentation, uvloop."""
    name: str = request.param
    return otel_venv(f"web-{name}", interpreter(name), WEB_APP_PACKAGES, WEB_APP_MODULES)
