"""What a submitter says: timestamped lines on stdout, which the rule's log file also gets."""

import time
from pathlib import Path


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def logger_to(path: Path):
    """A `log` that also appends each line to the file at `path` (a rule's log): where a waiting
    submitter's output went through a tee, a run that waits on many jobs writes each one's own."""

    def say(line: str) -> None:
        log(line)
        with open(path, "a") as stream:
            stream.write(f"[{time.strftime('%H:%M:%S')}] {line}\n")

    return say
