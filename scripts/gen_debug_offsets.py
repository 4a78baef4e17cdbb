# ruff: noqa: INP001  (a script, not a package)
"""Generate otel_blocksnoop/process/frames/debug_shapes.py: the shape of ``_Py_DebugOffsets``.

The frame reader takes every struct offset from the target's own
``_Py_DebugOffsets`` at run time; what it cannot read there is where each of
its fields sits inside ``_Py_DebugOffsets`` (the struct grows from one minor
version to the next) and a few constants it does not carry: the frame owners
that are C-stack shims, the tag bits of ``f_executable`` (a ``_PyStackRef``
from 3.14), the bits of a str's ``state`` and where a non-ASCII str's text
starts. This compiles a small C
program against each version's own headers (``Py_BUILD_CORE``) and writes
what ``offsetof()`` and the enums say, for every version in ``VERSIONS``.

USAGE: python scripts/gen_debug_offsets.py [--pyenv-root DIR] [--sid-root DIR]
       [--headers 3.X=DIR ...] [--free-threaded-prefix DIR] [--check]

Headers are pyenv's ``versions/3.X.*/include/python3.X`` (3.13), Debian sid's
in the root scripts/sid-pythons.sh makes (3.14, 3.15: compiled with the flags
each was built with, as scripts/gen_cpython_offsets.py does), unless
``--headers`` names another directory for a version; a free-threaded build's
(``FREE_THREADED_VERSIONS``) are those installed by scripts/free-threaded-python.sh.
With --check, nothing is written: the exit
status is 1 when the committed module differs from what the headers give now.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from gen_cpython_offsets import sid_interpreter  # noqa: E402

from harness.interpreters import (  # noqa: E402
    FREE_THREADED_PREFIX,
    FREE_THREADED_VERSION,
    SID_MINORS,
    SID_ROOT,
)

OUT = ROOT / "otel_blocksnoop" / "process" / "frames" / "debug_shapes.py"

VERSIONS = ((3, 13), (3, 14), (3, 15))
"""The CPython versions whose _Py_DebugOffsets the frame reader knows: listed here only."""
FREE_THREADED_VERSIONS = ((3, 14),)
"""Those whose free-threaded build it knows too, from the headers of one built here
(scripts/free-threaded-python.sh installs it at ``FREE_THREADED_PREFIX``)."""

# The reader's name for each field -> its member in _Py_DebugOffsets.
FIELDS = {
    "version": "version",
    "free_threaded": "free_threaded",
    "runtime_size": "runtime_state.size",
    "runtime_interpreters_head": "runtime_state.interpreters_head",
    "interp_size": "interpreter_state.size",
    "interp_next": "interpreter_state.next",
    "interp_threads_head": "interpreter_state.threads_head",
    "tstate_size": "thread_state.size",
    "tstate_next": "thread_state.next",
    "tstate_interp": "thread_state.interp",
    "tstate_current_frame": "thread_state.current_frame",
    "tstate_thread_id": "thread_state.thread_id",
    "tstate_native_thread_id": "thread_state.native_thread_id",
    "frame_size": "interpreter_frame.size",
    "frame_previous": "interpreter_frame.previous",
    "frame_executable": "interpreter_frame.executable",
    "frame_instr_ptr": "interpreter_frame.instr_ptr",
    "frame_owner": "interpreter_frame.owner",
    "code_size": "code_object.size",
    "code_filename": "code_object.filename",
    "code_name": "code_object.name",
    "code_qualname": "code_object.qualname",
    "code_linetable": "code_object.linetable",
    "code_firstlineno": "code_object.firstlineno",
    "code_adaptive": "code_object.co_code_adaptive",
    "object_size": "pyobject.size",
    "object_type": "pyobject.ob_type",
    "bytes_size": "bytes_object.size",
    "bytes_ob_size": "bytes_object.ob_size",
    "bytes_sval": "bytes_object.ob_sval",
    "unicode_size": "unicode_object.size",
    "unicode_state": "unicode_object.state",
    "unicode_length": "unicode_object.length",
    "unicode_ascii_size": "unicode_object.asciiobject_size",
}

C_PROGRAM = r"""
#define Py_BUILD_CORE 1
#include <Python.h>
#include <internal/pycore_runtime.h>
#include <internal/pycore_frame.h>
#if PY_VERSION_HEX >= 0x030E0000
#include <internal/pycore_interpframe.h>
#include <internal/pycore_stackref.h>
#endif
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define FIELD(name, member) \
    printf("%s=%zu\n", name, offsetof(_Py_DebugOffsets, member) / 8);

static unsigned int state_word(PyASCIIObject *o) {
    unsigned int word;
    _Static_assert(sizeof(o->state) == sizeof(word), "str state is one 32-bit word");
    memcpy(&word, &o->state, sizeof(word));
    return word;
}

int main(void) {
    _Static_assert(offsetof(_Py_DebugOffsets, version) == 8, "the cookie is 8 bytes");
    FIELDS
#if PY_VERSION_HEX >= 0x030F0000
    /* 3.15 has no C-stack owner: its shim frames are the interpreter's */
    printf("owner_cstack=%d\n", FRAME_OWNED_BY_INTERPRETER);
#else
    printf("owner_cstack=%d\n", FRAME_OWNED_BY_CSTACK);
#endif
#if PY_VERSION_HEX >= 0x030E0000
    printf("owner_interpreter=%d\n", FRAME_OWNED_BY_INTERPRETER);
#endif
    _PyInterpreterFrame *frame = NULL;
    int tagged = _Generic(frame->f_executable, PyObject *: 0, default: 1);
#ifdef Py_TAG_BITS
    printf("executable_tag_mask=%lu\n", tagged ? (unsigned long)Py_TAG_BITS : 0UL);
#else
    if (tagged) { fprintf(stderr, "f_executable is tagged, but no Py_TAG_BITS\n"); return 1; }
    printf("executable_tag_mask=0\n");
#endif
    PyASCIIObject o;
    memset(&o, 0, sizeof(o));
    o.state.compact = 1;
    printf("unicode_compact_bit=%u\n", state_word(&o));
    memset(&o, 0, sizeof(o));
    o.state.ascii = 1;
    printf("unicode_ascii_bit=%u\n", state_word(&o));
    memset(&o, 0, sizeof(o));
    o.state.kind = 1;
    printf("unicode_kind_shift=%d\n", __builtin_ctz(state_word(&o)));
    printf("unicode_compact_extra=%zu\n", sizeof(PyCompactUnicodeObject) - sizeof(PyASCIIObject));
#ifdef Py_GIL_DISABLED
    /* A thread's frames may run its own copy of the bytecode (3.14+: co_tlbc) */
    FIELD("frame_tlbc_index", interpreter_frame.tlbc_index)
    FIELD("code_tlbc", code_object.co_tlbc)
    _Static_assert(sizeof(frame->tlbc_index) == 4, "tlbc_index is 32 bits");
#endif
    return 0;
}
"""


def pyenv_headers(pyenv_root: Path, minor: int) -> Path:
    """The newest pyenv 3.<minor>.* headers."""
    found = sorted(pyenv_root.glob(f"versions/3.{minor}.*/include/python3.{minor}"))
    if not found:
        raise SystemExit(f"failed to find headers for 3.{minor} under {pyenv_root}/versions")
    return found[-1]


def measure(headers: Path, work: Path, cflags: tuple[str, ...] = ()) -> dict[str, int]:
    """Compile and run the program against one version's headers (built with ``cflags``)."""
    fields = "\n    ".join(f'FIELD("{name}", {member})' for name, member in FIELDS.items())
    source = work / "shape.c"
    source.write_text(C_PROGRAM.replace("FIELDS", fields))
    binary = work / "shape"
    includes = ["-I", str(headers), "-I", str(headers / "internal")]
    subprocess.run(
        ["cc", "-DNDEBUG", "-Werror", *cflags, *includes, "-o", str(binary), str(source)],
        check=True,
    )
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, _, value in (line.partition("=") for line in out.split())}


Shapes = dict[tuple[int, int], tuple[str, dict[str, int]]]


def render(shapes: Shapes, free_threaded: Shapes) -> str:
    lines = [
        '"""Where the frame reader\'s fields sit in each version\'s ``_Py_DebugOffsets``.',
        "",
        "Word indexes (8 bytes each, the cookie is word 0), and the constants the",
        "struct does not carry, from each version's own headers:",
    ]
    lines.extend(f"{major}.{minor}: {headers}" for (major, minor), (headers, _) in shapes.items())
    lines += ["", "and of each free-threaded build (``FREE_THREADED_SHAPES``):"]
    lines.extend(
        f"{major}.{minor}t: {headers}" for (major, minor), (headers, _) in free_threaded.items()
    )
    lines += ["", "Generated by scripts/gen_debug_offsets.py, do not edit.", '"""', ""]
    for name, table in (("SHAPES", shapes), ("FREE_THREADED_SHAPES", free_threaded)):
        lines.append(f"{name}: dict[tuple[int, int], dict[str, int]] = {{")
        for (major, minor), (_, values) in table.items():
            lines.append(f"    ({major}, {minor}): {{")
            lines.extend(f'        "{field}": {value},' for field, value in values.items())
            lines.append("    },")
        lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyenv-root", type=Path)
    parser.add_argument("--headers", nargs="*", default=[], help="3.X=DIR: that version's headers")
    parser.add_argument("--sid-root", type=Path, default=SID_ROOT, help="3.14+ (sid-pythons.sh)")
    parser.add_argument(
        "--free-threaded-prefix",
        type=Path,
        default=FREE_THREADED_PREFIX,
        help="where the free-threaded build is installed (scripts/free-threaded-python.sh)",
    )
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args()
    given = {}
    for item in args.headers:
        version, _, directory = item.partition("=")
        major, _, minor = version.partition(".")
        given[(int(major), int(minor))] = Path(directory)
    pyenv_root = args.pyenv_root or Path(
        subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
    )
    shapes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for major, minor in VERSIONS:
            headers = given.get((major, minor))
            # pyenv's are named by their release (3.13.0), others by their directory.
            label, cflags = str(headers), ()
            if headers is None and minor in SID_MINORS:
                sid = sid_interpreter(args.sid_root, minor)  # with the flags it was built with
                headers, label, cflags = sid.headers, sid.label, sid.cflags
            elif headers is None:
                headers = pyenv_headers(pyenv_root, minor)
                label = f"CPython {headers.parent.parent.name} (pyenv)"
            shapes[(major, minor)] = (label, measure(headers, Path(tmp), cflags))
        free_threaded = {}
        for major, minor in FREE_THREADED_VERSIONS:
            headers = args.free_threaded_prefix / "include" / f"python{major}.{minor}t"
            if not headers.is_dir():
                raise SystemExit(f"failed to find {headers}: `make pythons` builds it")
            label = f"CPython {FREE_THREADED_VERSION} --disable-gil (built here)"
            free_threaded[(major, minor)] = (label, measure(headers, Path(tmp)))
    text = render(shapes, free_threaded)
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"out of date: {OUT.name}", file=sys.stderr)  # noqa: T201
            raise SystemExit(1)
        return
    OUT.write_text(text)
    print(f"wrote {OUT.name}")  # noqa: T201


if __name__ == "__main__":
    main()
