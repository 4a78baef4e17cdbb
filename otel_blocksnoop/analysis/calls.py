"""Every call site that held the loop during one block, in time order, with its share.

A handler that makes several blocking calls in one callback (a query, a key
derivation, a log write) blocks one loop iteration with all of them; the
block's dominant stack (``attribution``) names only the longest. Here the
samples taken during the block are split instead:

- each sample stands for the time from halfway since the previous sample to
  halfway to the next (at most one sampling interval either side: a gap in
  the sampling is nobody's); samples of the loop idling stand for nobody;
- a sample's call site is its innermost frame of application code
  (``attribution.call_site``); samples in a row with the same callers and the
  same function are one stretch of that function;
- in a stretch, lines whose samples interleave are one call site (Python
  running a loop moves between its lines), unless each line held for several
  samples in a row (blocking calls made by turns); lines that follow one
  another are separate call sites (two blocking calls, one after the other);
- the same call site seen twice in the block is one, at its first place;
- a call site seen in fewer than ``MIN_SAMPLES`` samples is left out and
  counted: one sample may be a transition between two calls, never enough
  to name a call site or time it.

The sampler starts when the kernel says a block is under way (on demand), so
the block's first stretch is not sampled: that time, and any at the end no
sample stands for, is ``unsampled_ns``, never given to a call site.

The cause of each call site comes from the kernel's books of the block
(``Activity``: time on a CPU, time asleep per syscall), which carry no times:
a syscall's sleep is given to the one call site whose share matches it
(within ``tolerance_ns``) when no other call site and no other sleep comes
near (two tolerances), and the CPU time to the call sites left when their
shares add up to it and no sleep of note is left over. A block of one call
site spanning the block has the block's cause. Where the books fit more than
one way, where a gap in the sampling makes shares unsure, or where nothing
fits, the cause is ``unknown``: measured on a loaded machine, a looser match
gave a CPU-bound call the futex wait of the next one's thread start.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from statistics import median

from otel_blocksnoop.analysis import cause as causes
from otel_blocksnoop.analysis.attribution import is_idle, is_library
from otel_blocksnoop.events import NS_PER_MS, Activity, CallSite, Cause, Frame, StackSample

MIN_SAMPLES = 2
"""Samples a call site needs to be named."""
STEADY_RUN = 3
"""Samples in a row on one line that make it a call of its own when its function's lines
interleave: a Python loop stays on one line for one or two samples (seen at random)."""
MIN_TOLERANCE_NS = 2 * NS_PER_MS
TOLERANCE_SHARE = 0.1
"""A share matches a syscall's sleep within 2 ms or 10%, whichever is more."""
AMBIGUITY = 2
"""Tolerances within which another call site or another sleep makes a match unsure."""

ToUnix = Callable[[int], int]


@dataclass(frozen=True, slots=True)
class CallSites:
    """The call sites of one block, the ones left out, and the time nobody's samples stand for."""

    sites: tuple[CallSite, ...]
    left_out: int
    unsampled_ns: int


@dataclass(slots=True)
class _Group:
    """The samples of one call site, as indexes into the block's samples."""

    chain: tuple[Frame, ...]  # the callers, outermost first
    function: str
    file: str
    members: list[int]
    lines: list[int]


def split(  # noqa: PLR0913 - one block's evidence, each piece named
    samples: Sequence[StackSample],
    start_ns: int,
    end_ns: int,
    *,
    activity: Activity | None,
    whole: tuple[Cause, str | None],
    to_unix: ToUnix,
    gil_possible: bool = True,
) -> CallSites:
    """The call sites of the block ``start_ns``-``end_ns`` from its samples, in time order.

    ``whole`` is the block's own cause and syscall (``cause.classify``);
    ``gil_possible`` as there (False: a free-threaded process).
    """
    inside = sorted(
        (sample for sample in samples if start_ns <= sample.time_ns <= end_ns),
        key=lambda sample: sample.time_ns,
    )
    slices = _slices([sample.time_ns for sample in inside], start_ns, end_ns)
    busy = [i for i, sample in enumerate(inside) if not is_idle(sample.frames)]
    groups = _groups(inside, busy)
    merged: dict[Frame, list[int]] = {}
    for group in groups:
        line = Counter(group.lines).most_common(1)[0][0]
        merged.setdefault(Frame(group.function, group.file, line), []).extend(group.members)
    sites: list[CallSite] = []
    left_out = 0
    for frame, members in merged.items():
        if len(members) < MIN_SAMPLES:
            left_out += 1
            continue
        first = slices[min(members)][0]
        sites.append(
            CallSite(
                frame=frame,
                start_ns=first,
                start_unix_ns=to_unix(first),
                share_ns=sum(slices[i][1] - slices[i][0] for i in members),
                samples=len(members),
            )
        )
    sites.sort(key=lambda site: site.start_ns)
    unsampled = max(0, end_ns - start_ns - sum(hi - lo for lo, hi in slices))
    head = slices[0][0] - start_ns if slices else end_ns - start_ns
    tail = end_ns - slices[-1][1] if slices else 0
    named = _caused(
        sites,
        activity,
        whole,
        head_ns=head,
        tail_ns=tail,
        gaps_ns=unsampled - head - tail,
        gil_possible=gil_possible,
    )
    return CallSites(tuple(named), left_out, unsampled)


def _slices(times: Sequence[int], start_ns: int, end_ns: int) -> list[tuple[int, int]]:
    """The time each sample stands for: halfway to its neighbours, one interval at most."""
    if not times:
        return []
    gaps = [b - a for a, b in pairwise(times)]
    interval = int(median(gaps)) if gaps else 0
    half = interval // 2
    out = []
    for i, at in enumerate(times):
        lo = (times[i - 1] + at) // 2 if i else at - half
        hi = (at + times[i + 1]) // 2 if i + 1 < len(times) else at + half
        lo = max(lo, at - interval, start_ns)
        hi = min(hi, at + interval, end_ns)
        out.append((lo, max(lo, hi)))
    return out


def _site(frames: Sequence[Frame]) -> int:
    """Index of the innermost frame of application code, else of the innermost frame."""
    for index in range(len(frames) - 1, -1, -1):
        if not is_library(frames[index]):
            return index
    return len(frames) - 1


def _groups(samples: Sequence[StackSample], busy: Sequence[int]) -> list[_Group]:
    """The busy samples in call sites, in time order: stretches of one function, split by line."""
    groups: list[_Group] = []
    stretch: list[tuple[int, int]] = []  # (sample index, line)
    key: tuple[tuple[Frame, ...], str, str] | None = None
    previous = -2
    for index in busy:
        frames = samples[index].frames
        at = _site(frames)
        site = frames[at]
        here = (frames[:at], site.function, site.file)
        if here != key or index != previous + 1:  # another function, or the loop idled between
            if key is not None:
                groups.extend(_by_lines(key, stretch))
            key, stretch = here, []
        stretch.append((index, site.line))
        previous = index
    if key is not None:
        groups.extend(_by_lines(key, stretch))
    return groups


def _by_lines(
    key: tuple[tuple[Frame, ...], str, str], stretch: Sequence[tuple[int, int]]
) -> list[_Group]:
    """One stretch of a function cut where its lines stop interleaving."""
    last = {line: position for position, (_, line) in enumerate(stretch)}
    groups: list[_Group] = []
    reach = -1
    for position, (index, line) in enumerate(stretch):
        if position > reach:
            groups.append(_Group(key[0], key[1], key[2], [], []))
        reach = max(reach, last[line])
        groups[-1].members.append(index)
        groups[-1].lines.append(line)
    return [part for group in groups for part in _steady(group)]


def _steady(group: _Group) -> list[_Group]:
    """A group whose lines each held for ``STEADY_RUN`` samples or more, cut at each change.

    Blocking calls made by turns (sleep, hash, sleep) stay on each line for
    the call's time; Python running a loop lands on its lines at random.
    """
    runs: list[_Group] = []
    for index, line in zip(group.members, group.lines, strict=True):
        if not runs or runs[-1].lines[-1] != line:
            runs.append(_Group(group.chain, group.function, group.file, [], []))
        runs[-1].members.append(index)
        runs[-1].lines.append(line)
    if len(runs) > 1 and all(len(run.members) >= STEADY_RUN for run in runs):
        return runs
    return [group]


def tolerance_ns(share_ns: int) -> int:
    """How far a share may be from the kernel's time for it and still match."""
    return max(MIN_TOLERANCE_NS, int(share_ns * TOLERANCE_SHARE))


@dataclass(frozen=True, slots=True)
class _Shares:
    """The call sites of a block and the unsampled time at its ends."""

    sites: Sequence[CallSite]
    head_ns: int
    tail_ns: int

    def span(self, i: int, margin: int) -> tuple[int, int]:
        """The kernel times call site ``i`` may stand for, ``margin`` tolerances wide."""
        share = self.sites[i].share_ns
        room = margin * tolerance_ns(share)
        ends = (self.head_ns if i == 0 else 0) + (self.tail_ns if i == len(self.sites) - 1 else 0)
        return share - room, share + room + ends

    def near(self, i: int, kernel_ns: int, margin: int) -> bool:
        low, high = self.span(i, margin)
        return low <= kernel_ns <= high

    def cut(self) -> set[int]:
        """Call sites whose share an unsampled end may have cut short."""
        cut = {0} if self.head_ns > MIN_TOLERANCE_NS else set()
        if self.tail_ns > MIN_TOLERANCE_NS:
            cut.add(len(self.sites) - 1)
        return cut


def _sleepers(
    shares: _Shares, activity: Activity, *, gil_possible: bool
) -> tuple[dict[int, tuple[Cause, str | None]], bool]:
    """Who each syscall's sleep goes to (a call site alone near it); whether one went unplaced."""
    # A sleep shorter than the tolerance would match any short call site.
    sleeps = [
        sleep
        for sleep in activity.sleeps
        if sleep.syscall is not None and sleep.ns >= MIN_TOLERANCE_NS
    ]
    count = range(len(shares.sites))
    cut = shares.cut()
    found: dict[int, tuple[Cause, str | None]] = {}
    untold = False
    for sleep in sleeps:
        fitting = [i for i in count if i not in cut and shares.near(i, sleep.ns, 1)]
        close = [i for i in count if shares.near(i, sleep.ns, AMBIGUITY)]
        i = fitting[0] if len(fitting) == 1 and close == fitting else None
        if i is None or any(
            shares.near(i, other.ns, AMBIGUITY) for other in sleeps if other is not sleep
        ):
            untold = True  # no call site, or one close to another syscall's sleep as well
            continue
        gil = causes.looks_like_gil(activity, sleep, gil_possible=gil_possible)
        found[i] = (Cause.GIL, None) if gil else (Cause.SYSCALL, sleep.syscall)
    return found, untold


def _caused(  # noqa: PLR0913 - the books, and how well the samples cover the block
    sites: Sequence[CallSite],
    activity: Activity | None,
    whole: tuple[Cause, str | None],
    *,
    head_ns: int,
    tail_ns: int,
    gaps_ns: int,
    gil_possible: bool,
) -> list[CallSite]:
    """Each call site with the cause the kernel's books give it alone (else ``unknown``).

    Shares are only as good as the samples: with a gap inside the block no
    share is trusted; the first and last call sites may have lasted longer
    than their samples say (the unsampled head and tail), so they take no
    sleep by their share, and they and every other call site must be clear
    of any sleep given by ``AMBIGUITY`` tolerances.
    """
    covered = sum(site.share_ns for site in sites)
    if len(sites) == 1 and head_ns + tail_ns + gaps_ns <= tolerance_ns(covered):
        # The block's books are this call site's alone only when its samples span the block.
        return [replace(sites[0], cause=whole[0], syscall=whole[1])]
    if not sites or activity is None or gaps_ns > MIN_TOLERANCE_NS:
        return list(sites)
    shares = _Shares(sites, head_ns, tail_ns)
    found, untold = _sleepers(shares, activity, gil_possible=gil_possible)
    rest = [i for i in range(len(sites)) if i not in found]
    if rest and not untold:  # a sleep no call site took may be in any of the rest
        cpu_ns = activity.on_cpu_ns + activity.runq_ns
        low = sum(shares.span(i, 1)[0] for i in rest)
        high = sum(shares.span(i, 1)[1] for i in rest)
        if low <= cpu_ns <= high:
            found.update(dict.fromkeys(rest, (Cause.CPU, None)))
    return [
        replace(site, cause=found[i][0], syscall=found[i][1]) if i in found else site
        for i, site in enumerate(sites)
    ]
