"""Source lines of the watched app's files, read through /proc/PID/root.

The target may live in another mount namespace (a container), so its paths
are resolved under its own root. Files are treated as untrusted: large ones
are not read, and a failed read gives no line rather than an error.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

MAX_FILE_BYTES = 4 << 20
MAX_LINE = 300


@lru_cache(maxsize=256)
def _lines(pid: int, path: str) -> tuple[str, ...]:
    if not path.startswith("/"):
        return ()
    target = Path(f"/proc/{pid}/root") / path.lstrip("/")
    try:
        if target.stat().st_size > MAX_FILE_BYTES:
            return ()
        text = target.read_text(errors="replace")
    except OSError:
        return ()
    return tuple(text.splitlines())


def source_line(pid: int, path: str, line: int) -> str | None:
    """Line ``line`` (1-based) of ``path`` as the process ``pid`` sees it, stripped."""
    lines = _lines(pid, path)
    if not 1 <= line <= len(lines):
        return None
    text = lines[line - 1].strip()
    return text[:MAX_LINE] if text else None
