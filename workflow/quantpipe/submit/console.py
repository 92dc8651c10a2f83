"""What a submitter says: timestamped lines on stdout, which the rule's log file also gets."""

import time


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
