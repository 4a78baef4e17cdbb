"""Node mode on the command line: --all, --match, --container, --max-processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from otel_blocksnoop.cli import parse_arguments
from otel_blocksnoop.errors import ExitCode


def test_all_watches_every_python_process_with_the_default_cap() -> None:
    config = parse_arguments(["--all", "-t", "10"])
    assert config.select is not None
    assert config.select.pattern is None
    assert config.select.container is None
    assert config.pids == ()
    assert config.max_processes == 256


def test_match_and_container_narrow_each_other() -> None:
    config = parse_arguments(
        ["--match", "uvicorn|gunicorn", "--container", "docker://3F2A9C1B7D4E", "--json"]
    )
    assert config.select is not None
    assert config.select.wants_command("python -m uvicorn app:app")
    assert not config.select.wants_command("python worker.py")
    assert config.select.container == "3f2a9c1b7d4e"
    assert config.select.wants_container("3f2a9c1b7d4e" + "0" * 52)
    assert not config.select.wants_container("aa" * 32)
    assert not config.select.wants_container(None)
    assert config.json


def test_without_a_selector_no_node_mode() -> None:
    assert parse_arguments(["1234"]).select is None


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--match", "app[.py"], "not a regular expression: 'app[.py'"),
        (["--container", "not-hex!"], "not a container id"),
        (["--all", "1234"], "one of them"),
        (["--match", "x", "--", "python3", "app.py"], "one of them"),
        (["--all", "--tid", "5"], "--tid needs a PID"),
        (["--all", "--max-processes", "0"], "must be positive"),
    ],
)
def test_bad_node_arguments_are_one_line_and_the_usage_code(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # WHEN the command line is wrong in one way
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(argv)
    # THEN one line says which, and the exit code is the usage one
    err = capsys.readouterr().err
    assert exit_info.value.code == ExitCode.USAGE
    assert err.count("\n") == 1, err
    assert said in err
    assert err.startswith("otel-blocksnoop: error: ")


def test_a_bad_regex_exits_2_with_one_line_from_the_command() -> None:
    # WHEN the sidecar itself is run with a pattern that does not compile
    result = subprocess.run(
        [sys.executable, "-m", "otel_blocksnoop", "--match", "(unclosed"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # THEN it exits 2 with one line on stderr and no traceback
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.count("\n") == 1, result.stderr
    assert "not a regular expression: '(unclosed'" in result.stderr
    assert "Traceback" not in result.stderr
