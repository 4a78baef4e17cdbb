"""A stop is bounded from the first signal: one deadline for all, escalation, a second signal."""

from __future__ import annotations

import os
import signal
import time
from typing import NoReturn

import pytest

from otel_blocksnoop import session as session_module
from otel_blocksnoop.errors import ExitCode
from otel_blocksnoop.events import Loss, ThreadKind
from otel_blocksnoop.losses import Losses
from otel_blocksnoop.session import (
    EXIT_MARGIN_S,
    KILL_AFTER,
    TERM_AFTER,
    Escalation,
    Session,
    SessionOptions,
)
from tests.unit.test_session import ExitsAfter, FixedKinds, ScriptedDetector, event

STOP_S = 5.0


class Child:
    """A launched command that never exits by itself; notes what its group is sent."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.dead = False

    def exited(self) -> bool:
        return self.dead

    def fileno(self) -> int:
        """No fd: the scripted detector never waits."""
        return -1

    def signal_group(self, signum: int) -> None:
        self.sent.append(signum)
        self.dead = signum == signal.SIGKILL

    def group_alive(self) -> bool:
        return not self.dead


class Pending:
    """A sink that still holds records it has not delivered."""

    def __init__(self, pending: dict[str, int]) -> None:
        self._pending = pending
        self.deadline: float | None = None

    def export(self, record: object) -> None:
        _ = record

    def pending(self) -> dict[str, int]:
        return self._pending

    def drain(self, deadline: float) -> None:
        self.deadline = deadline

    def shutdown(self, deadline: float | None = None) -> None:
        _ = deadline


def session_with(sink: Pending, detector: ScriptedDetector | None = None) -> Session:
    return Session(
        detector or ScriptedDetector([]),  # type: ignore[arg-type]
        [sink],
        FixedKinds({1: ThreadKind.LOOP}),  # type: ignore[arg-type]
        SessionOptions(threshold_ns=10**7, stop_timeout_s=STOP_S),
    )


def test_everything_after_a_stop_request_shares_one_deadline_from_the_request() -> None:
    # GIVEN a stop requested now
    sink = Pending({})
    session = session_with(sink)
    asked = time.monotonic()
    session.request_stop()
    # WHEN the session winds down
    session.run(ExitsAfter(100))
    # THEN the sinks are given the request's time plus the bound, less what exit needs
    assert sink.deadline is not None
    assert asked <= sink.deadline + EXIT_MARGIN_S - STOP_S <= time.monotonic()


def test_a_launched_command_that_outlives_its_grace_gets_sigterm_then_sigkill() -> None:
    child = Child()
    escalation = Escalation(child, STOP_S)  # type: ignore[arg-type]
    now = time.monotonic()
    # within the grace: nothing yet, look again when it ends
    assert escalation.step(now) == pytest.approx(now + STOP_S * TERM_AFTER)
    assert child.sent == []
    # past the grace: SIGTERM to its group, SIGKILL next
    asked = now - STOP_S * TERM_AFTER - 0.1
    assert escalation.step(asked) == pytest.approx(asked + STOP_S * KILL_AFTER)
    assert child.sent == [signal.SIGTERM]
    # still there later: SIGKILL, and nothing more to do
    assert escalation.step(now - STOP_S) is None
    assert child.sent == [signal.SIGTERM, signal.SIGKILL]


def test_a_command_that_exits_in_its_grace_is_not_signalled_again() -> None:
    child = Child()
    child.dead = True
    escalation = Escalation(child, STOP_S)  # type: ignore[arg-type]
    assert escalation.step(time.monotonic() - STOP_S) is None
    assert child.sent == []


def test_the_launched_session_runs_until_the_command_exits_and_escalates_meanwhile() -> None:
    # GIVEN a launched command asked to stop long ago, that ignored it
    child = Child()
    session = session_with(Pending({}))
    session.request_stop(until_target_exits=True)
    session._stop_asked_at = time.monotonic() - STOP_S  # noqa: SLF001 - the request's age is the point
    # WHEN the session runs
    session.run(child, Escalation(child, STOP_S))  # type: ignore[arg-type]
    # THEN it kept going until the SIGKILL ended the command
    assert child.sent == [signal.SIGTERM, signal.SIGKILL]


class ExitCalledError(Exception):
    """os._exit, caught."""


def test_a_second_signal_exits_at_once_saying_what_it_leaves_undelivered(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a session stopping with records still queued for the collector
    codes: list[int] = []

    def exit_now(code: int) -> NoReturn:
        codes.append(code)
        raise ExitCalledError

    monkeypatch.setattr(os, "_exit", exit_now)
    previous = {sig: signal.getsignal(sig) for sig in session_module.STOP_SIGNALS}
    session = session_with(
        Pending({"spans": 3, "hang records": 1}), ScriptedDetector([[event(1, 0, 20)]])
    )
    child = Child()
    try:
        handler = session_module._Signals(session, child)  # type: ignore[arg-type]  # noqa: SLF001
        # WHEN a first signal comes, then a second
        handler._handle(signal.SIGTERM, None)  # noqa: SLF001 - the handler is the unit
        assert child.sent == [signal.SIGTERM]
        with pytest.raises(ExitCalledError):
            handler._handle(signal.SIGTERM, None)  # noqa: SLF001
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)
    # THEN it exits with its own code, kills the command's group, and says what was dropped
    assert codes == [ExitCode.STOPPED_AT_ONCE]
    assert child.sent == [signal.SIGTERM, signal.SIGKILL]
    (line,) = capfd.readouterr().err.splitlines()
    assert line == (
        "otel-blocksnoop: stopped at once by a second signal: "
        "3 spans, 1 hang records left undelivered"
    )


class Undelivering(Pending):
    """A sink whose drain could not deliver two records."""

    def __init__(self, losses: Losses) -> None:
        super().__init__({})
        self._losses = losses

    def drain(self, deadline: float) -> None:
        super().drain(deadline)
        self._losses.add(Loss.EXPORT_UNDELIVERED, 2)


def test_the_summary_counts_what_the_sinks_could_not_deliver_by_the_deadline() -> None:
    losses = Losses()
    sink = Undelivering(losses)
    session = Session(
        ScriptedDetector([]),  # type: ignore[arg-type]
        [sink],
        FixedKinds({}),  # type: ignore[arg-type]
        SessionOptions(threshold_ns=10**7, stop_timeout_s=STOP_S),
        losses=losses,
    )
    summary = session.run(ExitsAfter(0))
    assert dict(summary.losses)[Loss.EXPORT_UNDELIVERED] == 2
