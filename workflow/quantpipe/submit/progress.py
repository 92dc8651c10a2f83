"""What a waiting submitter shows: one line now and then with its job's state and latest output.

A stage prints its progress (`train: epoch 2/6 step 100/352 ... ETA 95 s`) into the job's
submitit stdout file, not into Snakemake's output. While the submitter waits it reads the tail of
that file and prints one line: job name and id, state, time in that state, the job's last line.
It prints at most once per interval (QUANTPIPE_PROGRESS_S seconds, 30 by default, 0 for never),
and only when the state or the line changed, or after ten silent intervals: a sweep of many
pending jobs does not flood the terminal. Changes of a Slurm job's state are logged as they
happen by the squeue watch (quantpipe.submit.watch).
"""

import os
import re
import time
from pathlib import Path

from quantpipe.submit.console import log

INTERVAL_VARIABLE = "QUANTPIPE_PROGRESS_S"
DEFAULT_INTERVAL_S = 30.0
QUIET_INTERVALS = 10  # an unchanged line is said again after this many intervals
TAIL_BYTES = 8192
MAX_LINE = 200
# submitit's own log lines in the job's stdout ("submitit INFO (2025-...) - Loading pickle...").
SUBMITIT = re.compile(r"submitit [A-Z]+ \(")


def interval_s() -> float:
    """The interval from the environment; 0 turns the lines off. A value that is no number of
    seconds is named and the default used: it must not fail a job that is already submitted."""
    value = os.environ.get(INTERVAL_VARIABLE, "").strip()
    try:
        seconds = float(value) if value else DEFAULT_INTERVAL_S
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        log(f"{INTERVAL_VARIABLE}={value!r} is not a number of seconds: using "
            f"{DEFAULT_INTERVAL_S:g}")  # fmt: skip
        return DEFAULT_INTERVAL_S
    return seconds


def last_line(path: Path) -> str:
    """The last non-blank line of a job's stdout file that the job printed ('' if none yet),
    read from its tail; a carriage-return progress bar counts by its last state, a long line is
    shortened."""
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, stream.seek(0, os.SEEK_END) - TAIL_BYTES))
            tail = stream.read().decode("utf-8", errors="replace")
    except OSError:  # not written yet (a pending job), or gone
        return ""
    lines = [line.strip() for line in tail.replace("\r", "\n").split("\n")]
    line = next((line for line in reversed(lines) if line and not SUBMITIT.match(line)), "")
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


def duration(seconds: float) -> str:
    """45s, 3m05s, 2h07m."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(name: str, job_id: str, state: str, seconds: float, line: str) -> str:
    said = f"{name} job {job_id}: {state} for {duration(seconds)}"
    return f"{said}: {line}" if line else f"{said}, no output yet"


class Progress:
    """Call `report(state)` as often as you like while waiting on `job`: it logs (through `say`)
    as described above. `name` is the job's name (the stage and the rule's wildcards)."""

    def __init__(self, job, name: str, interval: float | None = None, say=log) -> None:
        self.job, self.name, self.say = job, name, say
        self.interval = interval_s() if interval is None else interval
        self.state, self.since = "", time.monotonic()
        self.next_at = self.since + self.interval
        self.said, self.said_at = ("", ""), self.since

    def report(self, state: str) -> None:
        now = time.monotonic()
        if state != self.state:
            self.state, self.since = state, now
        if not self.interval or now < self.next_at:
            return
        self.next_at = now + self.interval
        shown = (state, last_line(self.job.paths.stdout))
        if shown == self.said and now - self.said_at < QUIET_INTERVALS * self.interval:
            return
        self.say(progress_line(self.name, self.job.job_id, state, now - self.since, shown[1]))
        self.said, self.said_at = shown, now
