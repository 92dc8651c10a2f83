"""A waiting submitter's progress lines: the tail of the job's stdout, how often, a real job."""

import re
from types import SimpleNamespace

import pytest
from quantpipe.submit import executor, progress, submit


def test_last_line_reads_the_tail(tmp_path):
    out = tmp_path / "job.out"
    assert progress.last_line(out) == ""  # a pending job has written nothing yet
    out.write_text("".join(f"[10:00:00] train: epoch 1/6 step {i}/352\n" for i in range(2000)))
    assert progress.last_line(out) == "[10:00:00] train: epoch 1/6 step 1999/352"
    with open(out, "a") as stream:  # a carriage-return progress bar, blank lines, submitit's
        stream.write("calibrate  10%\rcalibrate  50%\r\n\n  \n")
        stream.write("submitit INFO (2025-01-01 10:00:00,000) - Job completed successfully\n")
    assert progress.last_line(out) == "calibrate  50%"
    out.write_text("x" * 5000 + "\n")
    assert progress.last_line(out) == "x" * (progress.MAX_LINE - 3) + "..."
    out.write_bytes(b"benchmark: \xff half a character\n")
    assert progress.last_line(out).endswith("half a character")


def test_the_line_names_job_state_time_and_output():
    assert progress.duration(45) == "45s"
    assert progress.duration(185) == "3m05s"
    assert progress.duration(7620) == "2h07m"
    line = "[10:01:02] train: epoch 2/6 step 100/352 loss 1.2 ETA 95 s"
    assert progress.progress_line("train-resnet18-16-0", "42", "RUNNING", 185, line) == (
        f"train-resnet18-16-0 job 42: RUNNING for 3m05s: {line}"
    )
    assert progress.progress_line("train", "42", "PENDING", 5, "") == (
        "train job 42: PENDING for 5s, no output yet"
    )


@pytest.mark.parametrize("value,seconds", [(None, 30.0), ("", 30.0), ("0", 0.0), ("2.5", 2.5)])
def test_the_interval_comes_from_the_environment(monkeypatch, value, seconds):
    if value is None:
        monkeypatch.delenv(progress.INTERVAL_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(progress.INTERVAL_VARIABLE, value)
    assert progress.interval_s() == seconds


@pytest.mark.parametrize("value", ["often", "-1", "nan"])
def test_a_bad_interval_is_named_and_the_default_used(monkeypatch, capsys, value):
    monkeypatch.setenv(progress.INTERVAL_VARIABLE, value)
    assert progress.interval_s() == progress.DEFAULT_INTERVAL_S
    assert f"QUANTPIPE_PROGRESS_S={value!r} is not a number of seconds" in capsys.readouterr().out


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def strftime(self, _format: str) -> str:
        return f"t={self.now:.0f}s"


def test_lines_come_at_most_once_an_interval_and_only_on_a_change(tmp_path, monkeypatch, capsys):
    clock = _Clock()
    monkeypatch.setattr(progress, "time", clock)
    out = tmp_path / "job.out"
    job = SimpleNamespace(job_id="7", paths=SimpleNamespace(stdout=out))
    watching = progress.Progress(job, "train-x", interval=30)

    def said_after(seconds: float, state: str, line: str | None = None) -> list[str]:
        if line is not None:
            out.write_text(line + "\n")
        for _ in range(int(seconds)):
            clock.now += 1
            watching.report(state)
        return [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines()]

    assert said_after(29, "PENDING") == []  # no line before the first interval
    # (the time in a state counts from the first report of it, a second after the start)
    assert said_after(1, "PENDING") == ["train-x job 7: PENDING for 29s, no output yet"]
    assert said_after(60, "PENDING") == []  # nothing changed
    # Running now, and the job prints every second: one line an interval, the latest.
    said = []
    for step in range(1, 61):
        said += said_after(1, "RUNNING", f"train: step {step}")
    assert said == [
        "train-x job 7: RUNNING for 29s: train: step 30",
        "train-x job 7: RUNNING for 59s: train: step 60",
    ]
    # An unchanged line is said again only after ten silent intervals.
    assert len(said_after(10 * 30, "RUNNING")) == 1
    silent = progress.Progress(job, "off", interval=0)
    for _ in range(100):
        clock.now += 60
        silent.report("RUNNING")
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_a_waiting_submitter_shows_its_local_jobs_progress(tmp_path, monkeypatch, capsys):
    """A real local submitit job that prints progress lines for a few seconds: the submitter's
    output carries its state and its latest progress line while it runs."""

    def stage():
        import time

        for step in range(1, 9):
            print(f"train: epoch 1/1 step {step}/8 ETA {8 - step} s", flush=True)
            time.sleep(0.5)
        return {"stage": "train"}

    monkeypatch.setattr(executor, "StageCall", lambda name, kwargs: stage)
    monkeypatch.setenv(progress.INTERVAL_VARIABLE, "1")
    assert submit("train", {}, {}, "train-fake-1", str(tmp_path)) == {"stage": "train"}
    said = capsys.readouterr().out
    print(said)
    shown = re.findall(
        r"train-fake-1 job \d+: RUNNING for \d+s: train: epoch 1/1 step (\d)/8", said
    )
    assert shown, said
    assert len(said.splitlines()) < 30  # one line a second at most, and the submitter's own
