"""The fuzz properties of ``harness/fuzz/proc.py``: a small fixed budget, a seed corpus.

Each ``@example`` is an input that once found a bug (its comment says which) or
sits at a bound; ``bench/fuzz.py`` runs the same properties for minutes.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from harness.fuzz.proc import (
    app_environs,
    cgroup_texts,
    check_app_resource,
    check_cgroup,
    check_cpu_stat,
    check_environ,
    check_environ_bytes,
    check_maps,
    check_python_name,
    check_resource_attributes,
    check_resource_text,
    cpu_stats,
    maps_texts,
    mountinfo_texts,
    names,
    python_paths,
    resource_keys,
    values,
)


@given(st.dictionaries(names, values, max_size=6))
def test_an_environment_reads_back_as_written(env: dict[str, str]) -> None:
    check_environ(env)


@given(st.binary(max_size=200))
def test_any_environ_bytes_are_read_without_error(raw: bytes) -> None:
    check_environ_bytes(raw)


@given(st.dictionaries(resource_keys, values, max_size=5))
def test_resource_attributes_read_back_as_written(attributes: dict[str, str]) -> None:
    check_resource_attributes(attributes)


@given(st.text(max_size=60))
@example("=x,, =y,k = v ,%zz=%")
def test_any_resource_attributes_text_gives_clean_keys(text: str) -> None:
    check_resource_text(text)


@given(python_paths)
@example("/usr/lib/libpython\u0663.\u0661\u0661.so")  # Arabic-Indic digits read as 3.11
def test_a_python_version_is_read_from_ascii_digits_only(path: str) -> None:
    check_python_name(path)


@given(maps_texts)
@example("zz-10 r-xp 0 fd:01 1 /usr/lib/x.so")  # int("zz", 16): ValueError
@example("10 r-xp 0 fd:01 1 /usr/lib/x.so")  # one address, not two
def test_any_maps_text_gives_file_mappings_without_error(text: str) -> None:
    check_maps(text)


@given(cpu_stats)
@example("nr_throttled \u00b2")  # "²".isdigit() is True, int("²") raises
def test_any_cpu_stat_gives_non_negative_counters_or_none(text: str) -> None:
    check_cpu_stat(text)


@given(st.tuples(cgroup_texts, mountinfo_texts))
def test_a_cgroup_directory_never_leaves_its_mount(drawn: tuple[str, str]) -> None:
    check_cgroup(drawn)


@given(app_environs())
@example(b"OTEL_RESOURCE_ATTRIBUTES=process.pid=1,service.name=spoof\0")
def test_any_app_environment_gives_a_resource_that_encodes_with_its_real_pid(raw: bytes) -> None:
    check_app_resource(raw)
