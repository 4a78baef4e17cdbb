# ruff: noqa: INP001  (a script, not a package)
"""Generate otel_blocksnoop/process/cpython/v3_X.py: the CPython layouts the readers need.

For each supported minor version, compile a small C program against that
interpreter's own headers (pyenv's ``versions/3.X.*/include/python3.X`` for
3.9-3.13; for 3.14 and 3.15, which this machine's Debian lacks, Debian sid's
in the root scripts/sid-pythons.sh makes, with the ``-D_Py*`` flags that
interpreter was built with: Debian builds them with the JIT, which changes
struct sizes), with ``Py_BUILD_CORE`` for the internal ones, run it, and write
what ``offsetof()`` and ``sizeof()`` printed as one frozen ``CPythonLayout``:
the context reader's fields for every version, and for 3.11 and 3.12 (which
publish no ``_Py_DebugOffsets``) the frame reader's too.
Nothing here is typed
by hand except three structs that CPython does not install, mirrored below from
its sources: the 3.9/3.10 dict keys (Objects/dict-common.h), the 3.9 module
object, and the HAMT nodes (Python/hamt.c, unchanged from 3.9 to 3.15 in
release builds; 3.13+'s header has the bitmap node, and the program checks the
mirror against it). asyncio's C Task is in no header at all: each interpreter
is run once to say where its own tasks keep their coroutine, name and context.

USAGE: python scripts/gen_cpython_offsets.py [--pyenv-root DIR] [--sid-root DIR] [--check]

With --check, nothing is written: the exit status is 1 when a committed module
differs from what the headers give now.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.interpreters import SID_MINORS, SID_ROOT  # noqa: E402
from otel_blocksnoop.process.cpython import SUPPORTED_VERSIONS, CPythonLayout  # noqa: E402

OUT_DIR = ROOT / "otel_blocksnoop" / "process" / "cpython"

# Objects/dict-common.h of CPython 3.9 and 3.10 (identical in both): not installed.
DICT_COMMON_39 = """
typedef struct {
    Py_hash_t me_hash;
    PyObject *me_key;
    PyObject *me_value;
} PyDictKeyEntry;
typedef Py_ssize_t (*dict_lookup_func)(PyDictObject *, PyObject *, Py_hash_t, PyObject **);
struct _dictkeysobject {
    Py_ssize_t dk_refcnt;
    Py_ssize_t dk_size;
    dict_lookup_func dk_lookup;
    Py_ssize_t dk_usable;
    Py_ssize_t dk_nentries;
    char dk_indices[];
};
"""

# Objects/moduleobject.c of CPython 3.9 (3.10+ install it as pycore_moduleobject.h).
MODULE_39 = """
typedef struct {
    PyObject_HEAD
    PyObject *md_dict;
} PyModuleObject;
"""

# asyncio's C Task (Modules/_asynciomodule.c) is not in any header, and it changes
# between versions: the interpreter itself says where a running task keeps its
# coroutine, name and context, by the addresses of those objects inside it.
TASK_PROBE = r"""
import asyncio, contextvars, ctypes, gc, json, sys
import _asyncio

marker = contextvars.ContextVar("marker")

async def layout_probe():
    marker.set(1)  # in the context the task runs in, not in its callbacks' ones
    task = asyncio.current_task()
    assert type(task) is _asyncio.Task, type(task)
    size = _asyncio.Task.__basicsize__
    raw = ctypes.string_at(id(task), size)
    words = [int.from_bytes(raw[i : i + 8], sys.byteorder) for i in range(0, size, 8)]
    context = [o for o in gc.get_referents(task) if type(o) is contextvars.Context and marker in o]
    assert len(context) == 1, context
    found = {"task_basicsize": size}
    for field, obj in (("task_coro", task.get_coro()), ("task_name", task.get_name()),
                       ("task_context", context[0])):
        at = [i * 8 for i, word in enumerate(words) if word == id(obj)]
        assert len(at) == 1, (field, at)
        found[field] = at[0]
    print(json.dumps(found))

loop = asyncio.new_event_loop()
loop.run_until_complete(loop.create_task(layout_probe(), name="layout-probe-name"))
"""

# Python/hamt.c of CPython 3.9-3.13, release builds: not installed.
HAMT_NODES = """
typedef struct {
    PyObject_HEAD
    PyObject *a_array[32];
    Py_ssize_t a_count;
} MirrorHamtArray;
typedef struct {
    PyObject_VAR_HEAD
    uint32_t b_bitmap;
    PyObject *b_array[1];
} MirrorHamtBitmap;
typedef struct {
    PyObject_VAR_HEAD
    int32_t c_hash;
    PyObject *c_array[1];
} MirrorHamtCollision;
"""

C_PROGRAM = r"""
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stdio.h>
#include <string.h>
#include <stddef.h>
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_hamt.h"
#include "internal/pycore_context.h"
#if PY_MINOR_VERSION >= 11
#include "internal/pycore_dict.h"
#include "internal/pycore_object.h"
#else
DICT_COMMON
#endif
#if PY_MINOR_VERSION >= 12
#include "internal/pycore_long.h"
#endif
#if PY_MINOR_VERSION == 11 || PY_MINOR_VERSION == 12
#include "internal/pycore_frame.h"
#endif
#if PY_MINOR_VERSION >= 10
#include "internal/pycore_moduleobject.h"
#else
MODULE_39
#endif
HAMT_NODES
#if PY_MINOR_VERSION >= 13
_Static_assert(offsetof(PyHamtNode_Bitmap, b_array) == offsetof(MirrorHamtBitmap, b_array),
               "hamt.c mirror");
#endif

#define P(name, value) printf("%s=%lld\n", name, (long long)(value))
#define NONE(name) printf("%s=None\n", name)

static long long state_mask(void (*set)(PyASCIIObject *)) {
    PyASCIIObject o;
    unsigned int word;
    memset(&o, 0, sizeof o);
    set(&o);
    memcpy(&word, (char *)&o + offsetof(PyASCIIObject, state), sizeof word);
    return word;
}
static void set_ascii(PyASCIIObject *o) { o->state.ascii = 1; }
static void set_compact(PyASCIIObject *o) { o->state.compact = 1; }
static void set_kind_1(PyASCIIObject *o) { o->state.kind = 1; }

int main(void) {
    PyObject fake;
    P("runtime_size", sizeof(_PyRuntimeState));
    P("interp_size", sizeof(PyInterpreterState));
    P("tstate_size", sizeof(PyThreadState));
#if PY_MINOR_VERSION >= 13
    /* Where _Py_DebugOffsets keeps its own value of a field of ours (debug_checks). */
#define D(name, member) printf("debug_checks.%s=%lld\n", name, \
                               (long long)offsetof(_Py_DebugOffsets, member))
    D("runtime_size", runtime_state.size);
    D("runtime_interpreters_head", runtime_state.interpreters_head);
    D("interp_size", interpreter_state.size);
    D("interp_next", interpreter_state.next);
    D("interp_threads_head", interpreter_state.threads_head);
    D("tstate_size", thread_state.size);
    D("tstate_next", thread_state.next);
    D("tstate_interp", thread_state.interp);
    D("tstate_thread_id", thread_state.thread_id);
    D("tstate_native_thread_id", thread_state.native_thread_id);
    D("object_type", pyobject.ob_type);
    D("type_name", type_object.tp_name);
    D("tuple_items", tuple_object.ob_item);
    D("unicode_state", unicode_object.state);
    D("unicode_length", unicode_object.length);
    D("unicode_ascii_data", unicode_object.asciiobject_size);
#endif
#if PY_MINOR_VERSION >= 14
    D("long_digits", long_object.ob_digit);
    D("dict_keys", dict_object.ma_keys);
    D("dict_values", dict_object.ma_values);
    D("set_used", set_object.used);
    D("set_table", set_object.table);
    D("set_mask", set_object.mask);
#endif
    P("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
#if PY_MINOR_VERSION >= 13
    P("runtime_debug_offsets", offsetof(_PyRuntimeState, debug_offsets));
    P("debug_offsets_version", offsetof(_Py_DebugOffsets, version));
    P("debug_offsets_free_threaded", offsetof(_Py_DebugOffsets, free_threaded));
#else
    NONE("runtime_debug_offsets");
    NONE("debug_offsets_version");
    NONE("debug_offsets_free_threaded");
#endif
    P("interp_next", offsetof(PyInterpreterState, next));
#if PY_MINOR_VERSION >= 11
    P("interp_threads_head", offsetof(PyInterpreterState, threads.head));
#else
    P("interp_threads_head", offsetof(PyInterpreterState, tstate_head));
#endif
    P("tstate_next", offsetof(PyThreadState, next));
    P("tstate_interp", offsetof(PyThreadState, interp));
    P("tstate_thread_id", offsetof(PyThreadState, thread_id));
#if PY_MINOR_VERSION >= 11
    P("tstate_native_thread_id", offsetof(PyThreadState, native_thread_id));
#else
    NONE("tstate_native_thread_id");
#endif
    P("tstate_context", offsetof(PyThreadState, context));
#if PY_MINOR_VERSION >= 12
    P("interp_modules", offsetof(PyInterpreterState, imports.modules));
#else
    P("interp_modules", offsetof(PyInterpreterState, modules));
#endif
    P("module_dict", offsetof(PyModuleObject, md_dict));
    P("coro_qualname", offsetof(PyCoroObject, cr_qualname));

    P("object_type", offsetof(PyObject, ob_type));
    P("var_size", offsetof(PyVarObject, ob_size));
    P("type_name", offsetof(PyTypeObject, tp_name));
    P("type_flags", offsetof(PyTypeObject, tp_flags));
    P("type_base", offsetof(PyTypeObject, tp_base));
    P("type_basicsize", offsetof(PyTypeObject, tp_basicsize));
    P("type_dictoffset", offsetof(PyTypeObject, tp_dictoffset));
    P("heaptype_cached_keys", offsetof(PyHeapTypeObject, ht_cached_keys));

#if PY_MINOR_VERSION == 12
    P("tpflags_managed_dict", Py_TPFLAGS_MANAGED_DICT);
    P("managed_dict_offset", (char *)_PyObject_DictOrValuesPointer(&fake) - (char *)&fake);
#elif PY_MINOR_VERSION >= 11
    P("tpflags_managed_dict", Py_TPFLAGS_MANAGED_DICT);
    P("managed_dict_offset", (char *)_PyObject_ManagedDictPointer(&fake) - (char *)&fake);
#else
    P("tpflags_managed_dict", 0);
    NONE("managed_dict_offset");
#endif
#if PY_MINOR_VERSION == 11
    P("managed_values_offset", (char *)_PyObject_ValuesPointer(&fake) - (char *)&fake);
#else
    NONE("managed_values_offset");
#endif
#if PY_MINOR_VERSION == 12
    P("managed_values_tagged", 1);
#else
    P("managed_values_tagged", 0);
#endif
#if PY_MINOR_VERSION >= 13
    P("tpflags_inline_values", Py_TPFLAGS_INLINE_VALUES);
    P("values_valid", offsetof(PyDictValues, valid));
#else
    P("tpflags_inline_values", 0);
    NONE("values_valid");
#endif
#if PY_MINOR_VERSION >= 11
    P("values_items", offsetof(PyDictValues, values));
#else
    P("values_items", 0);
#endif

    P("unicode_length", offsetof(PyASCIIObject, length));
    P("unicode_state", offsetof(PyASCIIObject, state));
    P("unicode_ascii_data", sizeof(PyASCIIObject));
    P("unicode_ascii_mask", state_mask(set_ascii));
    P("unicode_compact_mask", state_mask(set_compact));

    P("tuple_items", offsetof(PyTupleObject, ob_item));

#if PY_MINOR_VERSION >= 12
    P("long_size", offsetof(PyLongObject, long_value.lv_tag));
    P("long_digits", offsetof(PyLongObject, long_value.ob_digit));
    P("long_lv_tag", 1);
    P("long_non_size_bits", _PyLong_NON_SIZE_BITS);
#else
    P("long_size", offsetof(PyVarObject, ob_size));
    P("long_digits", offsetof(PyLongObject, ob_digit));
    P("long_lv_tag", 0);
    P("long_non_size_bits", 0);
#endif
    P("long_digit_bits", PyLong_SHIFT);
    P("long_digit_size", sizeof(digit));

    P("dict_used", offsetof(PyDictObject, ma_used));
    P("dict_keys", offsetof(PyDictObject, ma_keys));
    P("dict_values", offsetof(PyDictObject, ma_values));
#if PY_MINOR_VERSION >= 11
    NONE("keys_size");
    P("keys_log2_size", offsetof(PyDictKeysObject, dk_log2_size));
    P("keys_log2_index_bytes", offsetof(PyDictKeysObject, dk_log2_index_bytes));
    P("keys_kind", offsetof(PyDictKeysObject, dk_kind));
    P("keys_kind_general", DICT_KEYS_GENERAL);
    P("unicode_entry_size", sizeof(PyDictUnicodeEntry));
    P("unicode_entry_key", offsetof(PyDictUnicodeEntry, me_key));
    P("unicode_entry_value", offsetof(PyDictUnicodeEntry, me_value));
#else
    P("keys_size", offsetof(PyDictKeysObject, dk_size));
    NONE("keys_log2_size");
    NONE("keys_log2_index_bytes");
    NONE("keys_kind");
    NONE("keys_kind_general");
    NONE("unicode_entry_size");
    NONE("unicode_entry_key");
    NONE("unicode_entry_value");
#endif
    P("keys_nentries", offsetof(PyDictKeysObject, dk_nentries));
    P("keys_indices", offsetof(PyDictKeysObject, dk_indices));
    P("entry_size", sizeof(PyDictKeyEntry));
    P("entry_key", offsetof(PyDictKeyEntry, me_key));
    P("entry_value", offsetof(PyDictKeyEntry, me_value));

    P("set_used", offsetof(PySetObject, used));
    P("set_mask", offsetof(PySetObject, mask));
    P("set_table", offsetof(PySetObject, table));
    P("set_entry_size", sizeof(setentry));
    P("set_entry_key", offsetof(setentry, key));

    P("context_vars", offsetof(PyContext, ctx_vars));
    P("contextvar_name", offsetof(PyContextVar, var_name));
    P("contextvar_hash", offsetof(PyContextVar, var_hash));
    P("hamt_root", offsetof(PyHamtObject, h_root));
    P("bitmap_bitmap", offsetof(MirrorHamtBitmap, b_bitmap));
    P("bitmap_array", offsetof(MirrorHamtBitmap, b_array));
    P("array_array", offsetof(MirrorHamtArray, a_array));
    P("array_count", offsetof(MirrorHamtArray, a_count));
    P("collision_array", offsetof(MirrorHamtCollision, c_array));

#if PY_MINOR_VERSION == 11 || PY_MINOR_VERSION == 12
    P("tstate_cframe", offsetof(PyThreadState, cframe));
    P("cframe_current_frame", offsetof(_PyCFrame, current_frame));
    P("frame_size", sizeof(_PyInterpreterFrame));
    P("frame_previous", offsetof(_PyInterpreterFrame, previous));
    P("frame_code", offsetof(_PyInterpreterFrame, f_code));
    P("frame_prev_instr", offsetof(_PyInterpreterFrame, prev_instr));
    P("frame_owner", offsetof(_PyInterpreterFrame, owner));
#if PY_MINOR_VERSION == 12
    P("frame_owner_cstack", FRAME_OWNED_BY_CSTACK);
#else
    NONE("frame_owner_cstack");
#endif
    P("code_size", sizeof(PyCodeObject));
    P("code_filename", offsetof(PyCodeObject, co_filename));
    P("code_name", offsetof(PyCodeObject, co_name));
    P("code_qualname", offsetof(PyCodeObject, co_qualname));
    P("code_linetable", offsetof(PyCodeObject, co_linetable));
    P("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
    P("code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
    P("code_unit_size", sizeof(_Py_CODEUNIT));
    P("bytes_ob_size", offsetof(PyBytesObject, ob_base.ob_size));
    P("bytes_sval", offsetof(PyBytesObject, ob_sval));
    P("unicode_compact_size", sizeof(PyCompactUnicodeObject));
    P("unicode_object_size", sizeof(PyUnicodeObject));
    P("unicode_kind_shift", __builtin_ctzll(state_mask(set_kind_1)));
#else
    NONE("tstate_cframe");
    NONE("cframe_current_frame");
    NONE("frame_size");
    NONE("frame_previous");
    NONE("frame_code");
    NONE("frame_prev_instr");
    NONE("frame_owner");
    NONE("frame_owner_cstack");
    NONE("code_size");
    NONE("code_filename");
    NONE("code_name");
    NONE("code_qualname");
    NONE("code_linetable");
    NONE("code_firstlineno");
    NONE("code_adaptive");
    NONE("code_unit_size");
    NONE("bytes_ob_size");
    NONE("bytes_sval");
    NONE("unicode_compact_size");
    NONE("unicode_object_size");
    NONE("unicode_kind_shift");
#endif
    return 0;
}
"""


@dataclass(frozen=True)
class Interpreter:
    """Where one version's headers are, how to run it, and the flags it was built with."""

    label: str  # e.g. "3.13.0", or "Debian sid's 3.15.2 (-D_Py_TIER2=3 -D_Py_JIT)"
    headers: Path
    run: tuple[str, ...]  # the argv that runs it
    cflags: tuple[str, ...] = ()


def pyenv_interpreter(pyenv_root: Path, minor: int) -> Interpreter:
    """The newest pyenv 3.<minor>.*."""
    found = sorted(pyenv_root.glob(f"versions/3.{minor}.*/include/python3.{minor}"))
    if not found:
        raise SystemExit(f"failed to find headers for 3.{minor} under {pyenv_root}/versions")
    headers = found[-1]
    python = headers.parent.parent / "bin" / f"python3.{minor}"
    return Interpreter(headers.parent.parent.name, headers, (str(python),))


# What the interpreter says of itself: its release and the -D flags its core was built with.
SELF_REPORT = r"""
import json, platform, sysconfig
flags = (sysconfig.get_config_var("PY_CORE_CFLAGS") or "").split()
print(json.dumps({"release": platform.python_version(), "defines": [
    f for f in flags if f.startswith(("-D_Py", "-DPy_")) and f != "-DPy_BUILD_CORE"]}))
"""


def sid_interpreter(sid_root: Path, minor: int) -> Interpreter:
    """Debian sid's python3.<minor>, in ``sid_root`` (run there with chroot)."""
    headers = sid_root / "usr" / "include" / f"python3.{minor}"
    if not headers.is_dir():
        raise SystemExit(f"failed to find {headers}: run scripts/sid-pythons.sh first")
    run = ("chroot", str(sid_root), f"/usr/bin/python3.{minor}")
    said = json.loads(
        subprocess.run([*run, "-I", "-c", SELF_REPORT], check=True, capture_output=True).stdout
    )
    defines = tuple(said["defines"])
    label = f"Debian sid's {said['release']}" + (f" ({' '.join(defines)})" if defines else "")
    # Debian's pyconfig.h includes <x86_64-linux-gnu/python3.X/pyconfig.h>: searched after ours.
    return Interpreter(label, headers, run, (*defines, "-idirafter", str(headers.parent)))


def measure(interpreter: Interpreter, work: Path) -> dict[str, object]:
    """Compile and run the offsetof() program against one version's headers."""
    headers = interpreter.headers
    source = work / "layout.c"
    source.write_text(
        C_PROGRAM.replace("DICT_COMMON", DICT_COMMON_39)
        .replace("HAMT_NODES", HAMT_NODES)
        .replace("MODULE_39", MODULE_39)
    )
    binary = work / "layout"
    subprocess.run(
        [
            "cc",
            "-DNDEBUG",
            "-Werror",
            *interpreter.cflags,
            "-I",
            str(headers),
            "-I",
            str(headers / "internal"),
            "-o",
            str(binary),
            str(source),
        ],
        check=True,
    )
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    values: dict[str, object] = {}
    checks = []
    for line in out.splitlines():
        name, _, value = line.partition("=")
        if name.startswith("debug_checks."):
            checks.append((name.removeprefix("debug_checks."), int(value)))
        else:
            values[name] = None if value == "None" else int(value)
    values["debug_checks"] = tuple(checks)
    return values


def probe_task(interpreter: Interpreter) -> dict[str, int]:
    """Where this interpreter's C Task keeps its coroutine, name and context."""
    out = subprocess.run(
        [*interpreter.run, "-I", "-c", TASK_PROBE], check=True, capture_output=True, text=True
    ).stdout
    found: dict[str, int] = json.loads(out)
    return found


def render(minor: int, label: str, values: dict[str, object]) -> str:
    fields = {f.name for f in dataclasses.fields(CPythonLayout)} - {"version"}
    if set(values) != fields:
        raise SystemExit(f"3.{minor}: fields differ: {sorted(set(values) ^ fields)}")
    lines = [
        f'"""CPython 3.{minor} layouts (from {label} headers).',
        "",
        "Generated by scripts/gen_cpython_offsets.py, do not edit.",
        '"""',
        "",
        "from otel_blocksnoop.process.cpython import CPythonLayout",
        "",
        "LAYOUT = CPythonLayout(",
        f"    version=(3, {minor}),",
    ]
    for field in dataclasses.fields(CPythonLayout):
        if field.name == "version":
            continue
        value = values[field.name]
        if isinstance(value, tuple) and value:  # (name, offset) pairs, one a line as ruff has them
            lines.append(f"    {field.name}=(")
            lines.extend(f'        ("{name}", {at}),' for name, at in value)
            lines.append("    ),")
        else:
            lines.append(f"    {field.name}={value},")
    lines.append(")")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = subprocess.run(
        ["pyenv", "root"], capture_output=True, text=True, check=True
    ).stdout.strip()
    parser.add_argument("--pyenv-root", type=Path, default=Path(default_root))
    parser.add_argument("--sid-root", type=Path, default=SID_ROOT, help="3.14+ (sid-pythons.sh)")
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed modules, write nothing"
    )
    args = parser.parse_args()
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for _, minor in SUPPORTED_VERSIONS:
            interpreter = (
                sid_interpreter(args.sid_root, minor)
                if minor in SID_MINORS
                else pyenv_interpreter(args.pyenv_root, minor)
            )
            values = measure(interpreter, Path(tmp))
            values.update(probe_task(interpreter))
            module = OUT_DIR / f"v3_{minor}.py"
            text = render(minor, interpreter.label, values)
            if args.check:
                if not module.exists() or module.read_text() != text:
                    stale.append(module.name)
                continue
            module.write_text(text)
            print(f"wrote {module.name} from {interpreter.label} headers")  # noqa: T201
    if stale:
        print(f"out of date: {', '.join(stale)}", file=sys.stderr)  # noqa: T201
        raise SystemExit(1)


if __name__ == "__main__":
    main()
