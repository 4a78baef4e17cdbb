"""Under CI a skip is a failure, unless the test does not apply to this kind of machine."""

from __future__ import annotations

import pytest

from tests.helpers import ROOT

CASES = """
import pytest
from tests.helpers import not_applicable

def test_lacking_an_interpreter():
    pytest.skip("no CPython 3.13 here")

def test_for_the_other_cgroup_version():
    not_applicable("no cgroup v2 hierarchy here: the machine runs v1")

@pytest.mark.xfail(reason="known", strict=True)
def test_a_known_failure():
    assert False

def test_a_pass():
    pass
"""


@pytest.mark.parametrize(
    ("ci", "outcomes"),
    [
        ("true", {"passed": 1, "failed": 1, "skipped": 1, "xfailed": 1}),
        ("", {"passed": 1, "failed": 0, "skipped": 2, "xfailed": 1}),
    ],
)
def test_a_skip_for_something_missing_fails_only_under_ci(
    ci: str, outcomes: dict[str, int], pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN tests that skip for a missing interpreter, or as not applicable here
    pytester.makepyfile(test_cases=CASES)
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))

    # WHEN they run with the project's test configuration (its conftest), CI set or not
    result = pytester.runpytest_subprocess("-p", "tests.conftest", "-p", "no:cacheprovider")

    # THEN under CI only the skip for something missing fails, and says it was a skip
    result.assert_outcomes(**outcomes)
    if ci:
        result.stdout.fnmatch_lines(["*skipped under CI=true*no CPython 3.13 here*"])


def test_ci_runs_the_test_command_the_readme_gives() -> None:
    # GIVEN the README's word on how CI runs the tests, and the script CI runs
    readme = (ROOT / "README.md").read_text()
    script = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    # THEN the script runs that command, and that command runs every test under pytest
    assert "`.ci/run` is `make test`" in readme
    assert script[-1] == "make test"
    makefile = (ROOT / "Makefile").read_text()
    test_target = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "$(PY) -m pytest\n" in test_target + "\n"


def test_every_test_runs_under_a_timeout(pytestconfig: pytest.Config) -> None:
    # pytest-timeout reads it: a test stuck on a wait fails instead of holding CI up
    assert float(pytestconfig.getini("timeout")) >= 60
    assert pytestconfig.getini("timeout_func_only")  # builds in session fixtures take their time
