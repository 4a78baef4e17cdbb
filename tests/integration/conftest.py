"""Fixtures shared by integration tests: target interpreters with OpenTelemetry."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import IN_CI

MINORS = (9, 10, 11, 12, 13)
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "otel-blocksnoop"


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


def otel_venv(name: str, base: Path | None) -> Path:
    """A venv of ``base`` with opentelemetry-sdk, made once and kept in the cache."""
    if base is None or not base.exists():
        pytest.skip(f"no {name} interpreter here")
    venv = CACHE / "targets" / name
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import opentelemetry.sdk.trace"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    try:
        subprocess.run([str(base), "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "opentelemetry-sdk"], check=True
        )
    except subprocess.CalledProcessError as error:
        if IN_CI:
            pytest.fail(f"failed to install opentelemetry-sdk for {name}: {error}")
        pytest.skip(f"cannot install opentelemetry-sdk for {name}: {error}")
    return python


# Every pyenv CPython 3.9-3.13, and Debian's own 3.11 (non-PIE, symbols in the executable).
INTERPRETERS = [f"py3.{m}" for m in MINORS] + ["debian"]


@pytest.fixture(scope="session", params=INTERPRETERS)
def otel_python(request: pytest.FixtureRequest) -> Path:
    name: str = request.param
    if name == "debian":
        return otel_venv(name, Path("/usr/bin/python3"))
    return otel_venv(name, pyenv_python(int(name.removeprefix("py3."))))
