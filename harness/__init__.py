"""What the tests and the benchmarks both run against; development only, not in the wheel.

- ``targets/``: the apps the sidecar watches, which time their own blocks
  (``truth.py``) and signal readiness through a FIFO; run as scripts on
  CPython 3.9+, so they import only what is beside them;
- ``interpreters``: pyenv's CPython 3.9-3.13 and cached venvs of them;
- ``otlp``: a real OTLP receiver (gRPC and HTTP/protobuf) on 127.0.0.1;
- ``rotel``: a real OpenTelemetry collector in front of that receiver;
- ``mntns``: apps in a filesystem of their own (``unshare --mount`` +
  ``pivot_root``, or ``chroot``), with an interpreter at a path the host lacks.
- ``forged_heap``: a CPython heap forged by hand for each layout, read like a process;
- ``fuzz``: property checks of every parser of outside input (Hypothesis).

No pytest here: a wait that times out raises ``HarnessError``.
"""

from __future__ import annotations

from pathlib import Path

TARGETS = Path(__file__).resolve().parent / "targets"
"""The target apps, run as scripts."""


class HarnessError(AssertionError):
    """What the harness waited for did not happen (a test fails; a benchmark stops)."""
