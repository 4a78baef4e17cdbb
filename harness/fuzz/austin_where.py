"""Austin's ``-w`` dump, fuzzed: the stacks read are the stacks written, thread by thread.

Dumps are rendered as Austin 4 prints them (a header per thread with its
native id, then one line per frame, with or without colours) from random
threads whose frames have any function and file names the target may
have: a file name is the app's own choice, and may spell a thread header.
Reading a dump must give back exactly the threads and frames written: a
frame line is never taken for another thread's header.

The unit tests (``tests/unit/test_fuzz_austin_where.py``) run this property
on a small fixed budget with its seed corpus; ``bench/fuzz.py`` for minutes.
"""

from __future__ import annotations

from hypothesis import strategies as st

from harness.fuzz import Target
from otel_blocksnoop.events import Frame
from otel_blocksnoop.stacks.austin import parse_where

Stacks = dict[int, tuple[Frame, ...]]

_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
"""What str.splitlines() splits on: Austin prints a name on one line."""


def colour(code: str, text: str, coloured: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if coloured else text


def render(pid: int, stacks: Stacks, coloured: bool) -> str:
    """A dump as ``austin -w`` prints it."""
    out = []
    for tid, frames in stacks.items():
        pid_text, tid_text = (
            colour("1;35", str(pid), coloured),
            colour("1;34", f"0:{tid}", coloured),
        )
        out.append(f"\n\n\U0001f4a4 Process {pid_text} \U0001f9f5 Thread {tid_text}\n\n")
        for frame in frames:
            function = colour("1;33", frame.function, coloured)
            file = colour("1;36", frame.file, coloured)
            out.append(f"    {function} ({file}:{colour('1;32', str(frame.line), coloured)})\n")
    return "".join(out)


functions = st.one_of(
    st.from_regex(r"[A-Za-z_<][A-Za-z0-9_.<>]{0,20}", fullmatch=True),
    st.sampled_from(["<module>", "Thread._bootstrap", "BaseEventLoop.run_forever"]),
)
files = st.one_of(
    st.text(st.characters(exclude_characters=_LINE_BREAKS + "\x1b"), min_size=1, max_size=30),
    st.sampled_from(
        ["/app/main.py", "/app/copy (2).py", "/app/Process 1 Thread 0:4242.py", "<frozen os>"]
    ),
)
frames = st.builds(Frame, functions, files, st.integers(0, 2**31 - 1))
dumps = st.tuples(
    st.integers(1, 4_194_304),
    st.dictionaries(st.integers(1, 4_194_304), st.lists(frames, max_size=6).map(tuple), max_size=4),
    st.booleans(),
)


def check_where(drawn: tuple[int, Stacks, bool]) -> None:
    pid, stacks, coloured = drawn
    assert parse_where(render(pid, stacks, coloured)) == stacks


TARGETS: dict[str, Target] = {
    "austin -w dump": Target(dumps, check_where),
}
