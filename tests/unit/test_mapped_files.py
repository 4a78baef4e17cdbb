"""Finding the files a target mapped, from the host: under its root, or through the mapping."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from otel_blocksnoop.process.elf import (
    ElfError,
    Mapping,
    mapped_file,
    parse_maps,
    program_interpreter,
)

LIBPYTHON = "/opt/app-python/lib/libpython3.11.so.1.0"
MAPS = (
    "7f0000000000-7f0000001000 r--p 00000000 fe:00 4242   " + LIBPYTHON + "\n"
    "7f0000001000-7f0000002000 rw-p 00000000 00:00 0 \n"
    "7ffd00000000-7ffd00001000 rw-p 00000000 00:00 0      [stack]\n"
    "7f0000003000-7f0000004000 r--p 00000000 fe:00 77     /usr/lib/libc.so.6 (deleted)\n"
)


def mapping_of(path: Path, start: int = 0x7F0000000000) -> Mapping:
    """A mapping of the file at ``path`` (its real inode)."""
    return Mapping(start, start + 0x1000, 0, LIBPYTHON, path.stat().st_ino)


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """/proc with process 123, whose root is a directory of its own."""
    proc = tmp_path / "proc"
    (proc / "123" / "map_files").mkdir(parents=True)
    (proc / "123" / "root").mkdir()
    return proc


def in_root(proc: Path, path: str, content: str = "ELF") -> Path:
    """A file at ``path`` under process 123's root."""
    file = proc / "123" / "root" / path.lstrip("/")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(content)
    return file


def test_maps_give_file_mappings_with_their_inodes() -> None:
    found = parse_maps(MAPS)
    assert [(m.path, m.inode) for m in found] == [
        (LIBPYTHON, 4242),
        ("/usr/lib/libc.so.6 (deleted)", 77),
    ]


def test_a_mapped_file_is_opened_under_the_targets_root(proc: Path) -> None:
    # GIVEN the mapped file at its path under the target's root
    file = in_root(proc, LIBPYTHON)
    # THEN that is where it is read, not at the same path on our side
    assert mapped_file(123, mapping_of(file), proc) == file


def test_another_file_at_the_path_under_the_root_is_not_taken_for_the_mapped_one(
    proc: Path,
) -> None:
    # GIVEN a chrooted target: its maps name our path, its root holds another file there
    in_root(proc, LIBPYTHON, "another build")
    mapped = proc.parent / "mapped"
    mapped.write_text("ELF")
    (proc / "123" / "map_files" / "7f0000000000-7f0000001000").symlink_to(mapped)
    # THEN the mapping itself is read, by the mapped inode
    assert mapped_file(123, mapping_of(mapped), proc) == (
        proc / "123" / "map_files" / "7f0000000000-7f0000001000"
    )


def test_a_deleted_file_is_read_through_its_mapping(proc: Path) -> None:
    mapped = proc.parent / "deleted-lib"
    mapped.write_text("ELF")
    (proc / "123" / "map_files" / "7f0000003000-7f0000004000").symlink_to(mapped)
    mapping = Mapping(0x7F0000003000, 0x7F0000004000, 0, "/usr/lib/libc.so.6 (deleted)", 0)
    assert mapped_file(123, mapping, proc).name == "7f0000003000-7f0000004000"


def test_a_file_reachable_neither_way_is_not_found(proc: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not reachable"):
        mapped_file(123, Mapping(0x1000, 0x2000, 0, LIBPYTHON, 99), proc)


def test_a_dynamic_executable_names_its_loader() -> None:
    true = shutil.which("true")
    assert true is not None
    loader = program_interpreter(true)
    assert loader is not None
    assert Path(loader).name.startswith("ld-")
    assert Path(loader).is_absolute()


def test_a_file_that_is_not_elf_has_no_loader(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(ElfError):
        program_interpreter(script)
