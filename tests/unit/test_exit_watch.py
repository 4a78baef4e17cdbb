"""The watched process's exit wakes the session: its fd becomes readable."""

from __future__ import annotations

import select
import subprocess

from otel_blocksnoop.process.target import ExitWatch


def test_the_watch_fd_becomes_readable_when_a_watched_process_exits() -> None:
    # GIVEN two processes watched, both running
    first = subprocess.Popen(["sleep", "60"])
    second = subprocess.Popen(["sleep", "60"])
    watch = ExitWatch([first.pid, second.pid])
    try:
        assert select.select([watch], [], [], 0)[0] == []
        # WHEN one exits
        first.kill()
        first.wait()
        # THEN the fd is readable, until the exit is seen; all have exited only at the end
        assert select.select([watch], [], [], 5.0)[0] == [watch]
        assert not watch.exited()
        assert select.select([watch], [], [], 0)[0] == []
        second.kill()
        second.wait()
        assert select.select([watch], [], [], 5.0)[0] == [watch]
        assert watch.exited()
    finally:
        for process in (first, second):
            process.kill()
            process.wait()
        watch.close()


def test_processes_added_later_are_told_once_each_as_they_exit() -> None:
    # GIVEN an empty watch, then two processes added while it runs
    watch = ExitWatch([])
    first = subprocess.Popen(["sleep", "60"])
    second = subprocess.Popen(["sleep", "60"])
    try:
        assert watch.add(first.pid)
        assert watch.add(second.pid)
        assert len(watch) == 2
        # WHEN one exits
        first.kill()
        first.wait()
        assert select.select([watch], [], [], 5.0)[0] == [watch]
        # THEN it is told once, and the other is still watched
        assert watch.take_exited() == [first.pid]
        assert watch.take_exited() == []
        assert len(watch) == 1
        # AND a process already gone cannot be added
        assert not watch.add(first.pid)
    finally:
        for process in (first, second):
            process.kill()
            process.wait()
        watch.close()
