from __future__ import annotations

from otel_blocksnoop.analysis.attribution import (
    attribute,
    call_site,
    is_idle,
    is_library,
)
from otel_blocksnoop.events import Frame

LIB = "/root/.pyenv/versions/3.11.7/lib/python3.11"
SITE = f"{LIB}/site-packages"
RUN = (
    Frame("<module>", "/srv/app.py", 40),
    Frame("run", f"{LIB}/asyncio/runners.py", 190),
    Frame("BaseEventLoop.run_forever", f"{LIB}/asyncio/base_events.py", 607),
    Frame("BaseEventLoop._run_once", f"{LIB}/asyncio/base_events.py", 1922),
)
IDLE = (*RUN, Frame("EpollSelector.select", f"{LIB}/selectors.py", 468))
HANDLER = (
    *RUN,
    Frame("Handle._run", f"{LIB}/asyncio/events.py", 80),
    Frame("handler", "/srv/app.py", 12),
)
IN_SUBPROCESS = (
    *HANDLER,
    Frame("run", f"{LIB}/subprocess.py", 550),
    Frame("Popen.communicate", f"{LIB}/subprocess.py", 1199),
)
UVLOOP_IDLE = (
    Frame("<module>", "/srv/app.py", 40),
    Frame("run", f"{SITE}/uvloop/__init__.py", 105),
)


def test_idle_samples_are_the_poller_or_a_c_loop_with_no_callback() -> None:
    assert is_idle(IDLE)
    assert is_idle(UVLOOP_IDLE)
    assert not is_idle(HANDLER)
    assert is_idle(())


def test_stdlib_and_loop_frames_are_library_but_site_packages_apps_are_not() -> None:
    assert is_library(Frame("run", f"{LIB}/subprocess.py", 1))
    assert is_library(Frame("_call_with_frames_removed", "<frozen importlib._bootstrap>", 1))
    assert is_library(Frame("run", f"{SITE}/uvloop/__init__.py", 1))
    assert not is_library(Frame("view", f"{SITE}/myservice/views.py", 1))
    assert not is_library(Frame("handler", "/srv/app.py", 12))


def test_call_site_is_the_innermost_application_frame() -> None:
    assert call_site(IN_SUBPROCESS) == Frame("handler", "/srv/app.py", 12)
    assert call_site(HANDLER) == Frame("handler", "/srv/app.py", 12)


def test_the_most_frequent_busy_stack_wins_and_idle_samples_do_not_vote() -> None:
    # GIVEN a window with more idle samples than busy ones
    result = attribute([IDLE, IDLE, IDLE, IN_SUBPROCESS, IN_SUBPROCESS, HANDLER])
    # THEN the dominant busy stack is reported with its support
    assert result is not None
    assert result.stack == IN_SUBPROCESS
    assert result.supporting == 2
    assert result.busy_samples == 3
    assert result.call_site == Frame("handler", "/srv/app.py", 12)


def test_no_samples_no_attribution() -> None:
    assert attribute([]) is None
