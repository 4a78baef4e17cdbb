"""The ``/proc`` parsers, fuzzed: environ, maps, cgroup, mountinfo and cpu.stat.

Each parser is fed text built from the file's own shape with random
fields, and plain random text. None may raise; what they return keeps the
promises their callers rely on: an environment round-trips, a version is
read from ASCII digits only, a cgroup directory never climbs out of its
mount, throttling counters are non-negative integers.

The unit tests (``tests/unit/test_fuzz_*.py``) run these properties on a
small fixed budget with their seed corpus; ``bench/fuzz.py`` for minutes.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._internal import _encode_resource

from harness.fuzz import Target
from otel_blocksnoop.events import ProcessIdentity
from otel_blocksnoop.export.otel.resource import process_resource
from otel_blocksnoop.process import cgroup, elf, identity, pythons

# What a process's environment can hold: UTF-8 text without NUL (nor "=" in a name).
names = st.text(
    st.characters(exclude_characters="=\0", exclude_categories=["Cs"]), min_size=1, max_size=12
)
values = st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=24)


def check_environ(env: dict[str, str]) -> None:
    """/proc/PID/environ: the NAME=value pairs written are those read back."""
    raw = b"".join(f"{name}={value}".encode() + b"\0" for name, value in env.items())
    assert identity.parse_environ(raw) == env


def check_environ_bytes(raw: bytes) -> None:
    parsed = identity.parse_environ(raw)
    assert all("\0" not in name + value for name, value in parsed.items())


def check_resource_attributes(attributes: dict[str, str]) -> None:
    """OTEL_RESOURCE_ATTRIBUTES: percent-encoded values come back as they were."""
    text = ",".join(f"{key}={quote(value, safe='')}" for key, value in attributes.items())
    assert identity.parse_resource_attributes(text) == attributes


def check_resource_text(text: str) -> None:
    for key in identity.parse_resource_attributes(text):
        assert key
        assert key == key.strip()
        assert "," not in key


resource_keys = st.text(
    st.characters(exclude_characters=",=", exclude_categories=["Cs", "Zs", "Zl", "Zp", "Cc"]),
    min_size=1,
).filter(lambda key: key == key.strip())


def check_python_name(path: str) -> None:
    """A version is read from ASCII digits after "python", or not at all."""
    name = pythons.python_name(path)
    if name is None or name.version is None:
        return
    major, minor = name.version
    assert re.search(rf"python{major}\.{minor}", path.rpartition("/")[2])


python_paths = st.one_of(
    st.text(max_size=40),
    st.builds(
        "{}/{}python{}.{}{}".format,
        st.sampled_from(["/usr/lib", "/opt/py", ""]),
        st.sampled_from(["", "lib"]),
        st.text(max_size=3),
        st.text(max_size=3),
        st.sampled_from(["", "t", "d", ".so.1.0", "-config", " (deleted)"]),
    ),
)


def check_maps(text: str) -> None:
    """/proc/PID/maps: every file mapping is read, malformed lines are skipped."""
    for mapping in elf.parse_maps(text):
        assert mapping.path.startswith("/")
        assert mapping.start >= 0
        assert mapping.end >= 0
    list(pythons.mapped_libpythons(text))


hexes = st.integers(0, 2**64 - 1).map("{:x}".format)
maps_lines = st.one_of(
    st.builds(
        "{}-{} {} {} {} {} {}".format,
        hexes,
        hexes,
        st.sampled_from(["r-xp", "rw-p", "r--s"]),
        st.one_of(hexes, st.text(max_size=4)),
        st.sampled_from(["fd:01", "00:00"]),
        st.integers(0, 10**9),
        st.one_of(st.sampled_from(["/usr/lib/libpython3.11.so.1.0", "[heap]", ""]), values),
    ),
    st.text(max_size=60),
)
maps_texts = st.lists(maps_lines, max_size=6).map("\n".join)


def check_cpu_stat(text: str) -> None:
    stat = cgroup.parse_cpu_stat(text)
    for value in (stat.throttled_ns, stat.periods):
        assert value is None or (isinstance(value, int) and value >= 0)


cpu_stat_lines = st.one_of(
    st.builds(
        "{} {}".format,
        st.sampled_from(["throttled_usec", "throttled_time", "nr_throttled", "usage_usec"]),
        st.one_of(st.integers(-5, 2**64).map(str), st.text(max_size=6)),
    ),
    st.text(max_size=20),
)
cpu_stats = st.lists(cpu_stat_lines, max_size=6).map("\n".join)


def check_cgroup(drawn: tuple[str, str]) -> None:
    """/proc/PID/cgroup and mountinfo: the directory found stays inside its mount."""
    proc_cgroup, mountinfo = drawn
    mounts = cgroup.cgroup_mounts(mountinfo)
    found = cgroup.cpu_cgroup(proc_cgroup)
    if found is None:
        return
    v2, path = found
    directory = cgroup.cgroup_dir(path, mounts, v2=v2)
    if directory is None:
        return
    mount = next(m for m in mounts if m.v2 == v2 and str(directory).startswith(m.point))
    assert ".." not in directory.relative_to(Path(mount.point)).parts


cgroup_paths = st.one_of(
    st.sampled_from(["/", "/kubepods/pod1/c1", "/a/../..", "/a/..", "/..", "../x", "/a/./b"]),
    st.text(max_size=20),
)
cgroup_texts = st.lists(
    st.builds(
        "{}:{}:{}".format,
        st.sampled_from(["0", "3", "x"]),
        st.sampled_from(["", "cpu,cpuacct", "memory", "cpu"]),
        cgroup_paths,
    ),
    max_size=4,
).map("\n".join)
mountinfo_texts = st.lists(
    st.builds(
        "36 35 0:30 {} {} rw - {} cgroup {}".format,
        st.sampled_from(["/", "/kubepods", "/a/..", "/\\040x"]),
        st.sampled_from(["/sys/fs/cgroup", "/sys/fs/cgroup/cpu", "/mnt/c"]),
        st.sampled_from(["cgroup2", "cgroup", "tmpfs"]),
        st.sampled_from(["rw", "rw,cpu", "rw,cpu,cpuacct"]),
    ),
    max_size=3,
).map("\n".join)


@st.composite
def app_environs(draw: st.DrawFn) -> bytes:
    """An app's /proc/PID/environ: its OTel settings among other variables, any bytes."""
    anything = st.binary(max_size=40).map(lambda raw: raw.replace(b"\0", b""))
    attribute = st.one_of(
        st.sampled_from([b"process.pid=1", b"service.name=x", b"host.name=h", b"k=%ff%fe", b"="]),
        anything,
    )
    entries = [
        b"OTEL_RESOURCE_ATTRIBUTES=" + b",".join(draw(st.lists(attribute, max_size=5))),
        b"OTEL_SERVICE_NAME=" + draw(anything),
        *draw(st.lists(anything, max_size=3)),
    ]
    return b"\0".join(draw(st.permutations(entries))) + b"\0"


def check_app_resource(raw: bytes) -> None:
    """Whatever the app's environment says, its resource encodes and keeps its real PID."""
    service, attributes = identity.app_settings(raw)
    app = ProcessIdentity(
        pid=4242,
        service_name=service,
        resource_attributes=attributes,
        executable_path="/usr/bin/python3.11",
        runtime_version="3.11",
        instance_id="i",
    )
    resource = process_resource(app, 4242, None)
    _encode_resource(resource).SerializeToString()
    assert resource.attributes["process.pid"] == 4242
    assert resource.attributes["service.name"] == (service or "unknown_service:python")


TARGETS: dict[str, Target] = {
    "/proc environ": Target(st.dictionaries(names, values, max_size=6), check_environ),
    "/proc environ bytes": Target(st.binary(max_size=200), check_environ_bytes),
    "OTEL_RESOURCE_ATTRIBUTES": Target(
        st.dictionaries(resource_keys, values, max_size=5), check_resource_attributes
    ),
    "OTEL_RESOURCE_ATTRIBUTES text": Target(st.text(max_size=60), check_resource_text),
    "python names": Target(python_paths, check_python_name),
    "/proc maps": Target(maps_texts, check_maps),
    "cpu.stat": Target(cpu_stats, check_cpu_stat),
    "/proc cgroup + mountinfo": Target(st.tuples(cgroup_texts, mountinfo_texts), check_cgroup),
    "app environ -> OTel resource": Target(app_environs(), check_app_resource),
}
