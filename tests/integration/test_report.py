"""The HTML report of a real run, opened in a real headless browser.

Debian's chromium (``make setup`` installs it), driven by Playwright with its
executable path: Playwright's own browser download is neither needed nor
possible here. With ``BLOCKSNOOP_SCREENSHOT=FILE`` the page's screenshot is
also written to FILE (``make screenshot`` writes the README's docs/report.png).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.helpers import BLOCKER, IN_CI, parse_json_lines, run_raw, truth

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("bpf_host")]

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 900}
CALL_SITE_OF_MOST = "busy"  # blocker.py's "uneven" scenario: 4 of its 8 blocks, on CPU


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        why = f"no {CHROMIUM}: `make setup` installs Debian's chromium"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root, where chromium's sandbox refuses to start.
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


class OpenedPage:
    """A report loaded in the browser, with every console error and outside request seen."""

    def __init__(self, browser: Browser, path: Path) -> None:
        self.page: Page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

        def outside(route: Any) -> None:
            self.requests.append(route.request.url)
            route.abort()

        self.page.route(lambda url: not url.startswith("file:"), outside)
        self.page.goto(path.as_uri())
        # Drawn: the histogram (or its "no blocks") is the last thing the page's script makes.
        self.page.wait_for_selector("#histogram > *", timeout=10_000)

    def frames(self) -> list[dict[str, Any]]:
        """Each drawn flame-graph frame: name, x, y (its row) and width in pixels."""
        return self.page.eval_on_selector_all(  # type: ignore[no-any-return]
            "#flamegraph g.frame",
            """els => els.map(e => {
                const at = e.getAttribute("transform");
                const m = /translate\\(([-\\d.e]+),([-\\d.e]+)\\)/.exec(at);
                return {name: e.getAttribute("name"), x: +m[1], y: +m[2],
                        width: +e.getAttribute("width")};
            })""",
        )


def self_widths(frames: list[dict[str, Any]]) -> dict[str, float]:
    """Per function, the drawn width no frame above covers: the flame graph's plateaus."""
    widths: dict[str, float] = {}
    for frame in frames:
        above = [
            other
            for other in frames
            if other["y"] < frame["y"]
            and abs(frame["y"] - other["y"] - 18) < 0.5  # the row right above (cell height 18)
            and frame["x"] - 0.5 <= other["x"] < frame["x"] + frame["width"]
        ]
        own = frame["width"] - sum(other["width"] for other in above)
        widths[frame["name"]] = widths.get(frame["name"], 0.0) + own
    return widths


BAR_RESOLUTION_MS = 2.0
"""A bar spans its block's start and end as JavaScript dates, each to the millisecond: a
block up to 2 ms shorter than the longest may draw as wide or wider."""


def tooltip_tells(page: Page, blocks: list[dict[str, Any]]) -> None:
    """Hovering the widest bar of the timeline tells its block's duration, cause and code."""
    bars = page.locator("#timeline rect.block")
    widths = [float(bars.nth(i).get_attribute("width") or 0) for i in range(bars.count())]
    bars.nth(widths.index(max(widths))).hover()
    tip = page.inner_text("#tip").splitlines()
    shown = re.fullmatch(r"([\d.]+) (ms|s) blocked", tip[0])
    assert shown, tip
    shown_ms = float(shown[1]) * (1000 if shown[2] == "s" else 1)
    # the bar is the longest block's, or one as long at the bars' resolution
    longest = max(b["duration_ms"] for b in blocks)
    tolerance = 0.05 if shown[2] == "ms" else 5
    fitting = [
        b
        for b in blocks
        if b["duration_ms"] >= longest - BAR_RESOLUTION_MS
        and b["duration_ms"] == pytest.approx(shown_ms, abs=tolerance)
    ]
    assert fitting, (tip, [b["duration_ms"] for b in blocks])
    # ... and the cause and call site of that block (two may show the same duration)
    assert all(b["call_site"] is not None for b in fitting), fitting
    assert tip[1:3] in [told(b) for b in fitting], (tip, fitting)
    assert tip[4].startswith("trace id: ")
    assert tip[5].startswith("who waited: ")


def told(block: dict[str, Any]) -> list[str]:
    """The tooltip's cause and call-site lines for ``block``."""
    syscall = block["syscall"]
    cause = f"{syscall}()" if block["cause"] == "syscall" and syscall else block["cause"]
    site = block["call_site"]
    return [f"cause: {cause}", f"call site: {site['function']} ({site['file']}:{site['line']})"]


def busy_ms(blocks: list[dict[str, Any]]) -> float:
    """The blocked time busy() stands for: its call sites' shares, or the whole of a block
    that lists none and whose call site it is."""
    total = 0.0
    for block in blocks:
        if block.get("call_sites"):
            total += sum(s["share_ms"] for s in block["call_sites"] if s["function"] == "busy")
        elif (block["call_site"] or {}).get("function") == "busy":
            total += block["duration_ms"]
    return total


def test_the_report_of_a_real_run_shows_every_block_and_the_costliest_code_widest(
    tmp_path: Path, browser: Browser
) -> None:
    # GIVEN a launched app that blocks its loop 8 times, 4 of them in busy() (on CPU)
    true_path = tmp_path / "truth.jsonl"
    live = tmp_path / "live.html"
    target = [sys.executable, str(BLOCKER), "uneven", "--out", str(true_path)]
    run = run_raw("--json", "-q", "-t", "20", "--report", str(live), "--", *target)
    assert run.returncode == 0, run.stderr
    recording = tmp_path / "run.jsonl"
    recording.write_text(run.stdout)
    records = parse_json_lines(run.stdout)
    blocks = [r for r in records if r["type"] == "block"]
    true_blocks = truth(true_path)
    assert len(true_blocks) == 8
    # (the sidecar may also see a block of the app's start-up, before the first true one)
    assert len(blocks) >= len(true_blocks)

    # WHEN the report command makes a page of the recording, and it is opened
    page_path = tmp_path / "report.html"
    made = run_raw("report", str(recording), "-o", str(page_path))
    assert made.returncode == 0, made.stderr
    opened = OpenedPage(browser, page_path)

    # THEN it loads alone and cleanly, and shows every block of the recording
    assert opened.errors == []
    assert opened.requests == []
    assert opened.page.inner_text("#block-count") == str(len(blocks))
    assert opened.page.locator("#timeline rect.block").count() == len(blocks)

    # ... the widest plateau of the flame graph is busy(), as wide as its share of blocked time
    frames = opened.frames()
    (root,) = [f for f in frames if f["name"] == "all blocks"]
    plateaus = self_widths(frames)
    widest = max(plateaus, key=lambda name: plateaus[name])
    assert widest == f"{CALL_SITE_OF_MOST} (blocker.py)", plateaus
    share = busy_ms(blocks) / sum(b["duration_ms"] for b in blocks)
    assert plateaus[widest] / root["width"] == pytest.approx(share, abs=0.01)

    # ... the table puts it first, and hovering a bar tells that block's story
    first_row = opened.page.inner_text("#call-sites tbody tr:first-child td:first-child")
    assert first_row.startswith(CALL_SITE_OF_MOST)
    tooltip_tells(opened.page, blocks)

    screenshot = tmp_path / "report.png"
    opened.page.mouse.move(0, 0)
    opened.page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 20_000
    if target_file := os.environ.get("BLOCKSNOOP_SCREENSHOT"):
        shutil.copyfile(screenshot, target_file)

    # ... and the page --report wrote at the end of the same run shows the same blocks
    live_page = OpenedPage(browser, live)
    assert live_page.errors == []
    assert live_page.page.inner_text("#block-count") == str(len(blocks))
    data = live.read_text().split('type="application/json">')[1].split("</script>")[0]
    assert len(json.loads(data)["timeline"]) == len(blocks)


def test_a_run_without_blocks_gives_a_page_that_says_so(tmp_path: Path, browser: Browser) -> None:
    # GIVEN a launched app whose loop only awaits, watched with --report
    page_path = tmp_path / "idle.html"
    target = [sys.executable, str(BLOCKER), "idle"]
    run = run_raw("-q", "-t", "100", "--report", str(page_path), "--", *target)
    assert run.returncode == 0, run.stderr
    # WHEN its page is opened
    opened = OpenedPage(browser, page_path)
    # THEN it loads cleanly, counts no block and says so where each picture would be
    assert opened.errors == []
    assert opened.page.inner_text("#block-count") == "0"
    assert opened.page.locator("#timeline rect.block").count() == 0
    assert opened.page.locator("#flamegraph g.frame").count() == 0
    assert opened.page.locator(".empty").count() == 4
