"""What a sweep of N short jobs costs the submit host and the Slurm controller, per design.

Run on the local Slurm with a node that declares enough CPUs to run the jobs at once:

    QUANTPIPE_SLURM_CPUS=256 bash workflow/scripts/local_slurm.sh start
    eval "$(bash workflow/scripts/local_slurm.sh env)"
    .venv/bin/python workflow/scripts/scale_benchmark.py --jobs 100 500 1000

For each design and N it runs a generated workflow of N independent jobs (`sleep SECONDS`, one
CPU, 100 MB each) in a fresh folder under --workdir and prints:
- peak memory: the sum of the resident memory of Snakemake and every process it started on this
  host, sampled every 0.5 s (the jobs themselves run under slurmd, not below Snakemake);
- slurmctld calls by type (sdiag before and after), split into those a client on the submit host
  makes and those the jobs' own batch scripts and slurmd make;
- slurmdbd queries for jobs (sacctmgr show stats: DBD_GET_JOBS_COND, one per sacct);
- wall time, and overhead per job: (wall - the ideal makespan) / N, the ideal makespan being
  SECONDS times the waves of jobs that the node's CPUs allow;
- jobs failed: reported failed by Snakemake, with the job's own error; jobs lost: neither
  written nor reported failed; jobs submitted: what sacct recorded from the folder
  (more than N would mean a job submitted twice); the most jobs in flight at once (submitted,
  not yet ended; from sacct's Submit and End times, to the second).

With --hold, each job first waits for a file that the benchmark writes once all N jobs are in
flight (seen by `squeue --me` every 5 s; those calls are not counted against the design), so the
submit host is measured with all N in flight at once, the node's CPUs running some and the
queue holding the rest, as on a cluster busy with a sweep; overhead per job is then not given.
Give the node fewer CPUs for it (QUANTPIPE_SLURM_CPUS=64): on a 2-core machine 256 held jobs at
once leave it no time for anything else (slurmstepd samples each job's processes from /proc).

Designs: `plugin` (the executor plugin quantpipe: one Snakemake process watches every job),
`submitters` (the design profiles/slurm had before the plugin, and profiles/local still has:
each rule a local Snakemake job whose process submits one submitit job and waits on it) and
`slurm-plugin` (snakemake-executor-plugin-slurm 2.8.0 with its default settings: each job runs
Snakemake again on the node, and `srun` from there).
"""

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
DESIGNS = ("plugin", "submitters", "slurm-plugin")
# slurmctld message types a client on the submit host sends (sbatch, squeue, sinfo, scancel,
# sacct's federation lookup); the others come from the jobs' batch scripts (srun) and slurmd.
CLIENT_CALLS = {
    "REQUEST_SUBMIT_BATCH_JOB", "REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE", "REQUEST_FED_INFO",
    "REQUEST_PARTITION_INFO", "REQUEST_NODE_INFO", "REQUEST_NODE_INFO_SINGLE", "REQUEST_KILL_JOB",
    "REQUEST_CANCEL_JOB", "REQUEST_BUILD_INFO", "REQUEST_PING", "REQUEST_JOB_USER_INFO",
    "REQUEST_CONTROL_STATUS", "REQUEST_RESOURCE_ALLOCATION",
}  # fmt: skip
FAILED_JOB = "Error in rule sleep:"  # Snakemake's line for each failed job
RESOURCES = {"slurm_partition": "cpu", "mem_mb": 100, "runtime": 10, "cpus_per_task": 1}

# Today's design for a shell command: the rule's script submits one submitit job and waits on it,
# as workflow/scripts/submit_stage.py does for a stage (quantpipe.submit.executor.submit).
SUBMITTER = """\
import submitit
from quantpipe.submit.executor import start
from quantpipe.submit.watch import wait

command = ["bash", "-c", snakemake.params.script.format(output=snakemake.output[0])]
resources = dict(snakemake.resources.items())
name = f"sleep-{snakemake.wildcards.i}"
job, cluster, _ = start(submitit.helpers.CommandFunction(command), "sleep", resources, name,
                        "logs/sleep/submitit")
wait(job, "sleep", cluster, resources, name)
"""


def job_script(seconds: float, release: Path | None) -> str:
    """Each job's shell command ({output}: its file): wait for `release` if given, then sleep."""
    wait = f"until [ -e {release} ]; do sleep 2; done; " if release else ""
    return f"{wait}sleep {seconds}; hostname > {{output}}"


def write_workflow(folder: Path, jobs: int, script: str, design: str) -> None:
    """A Snakefile of `jobs` independent jobs running `script` in `folder`, run the way `design`
    runs it."""
    folder.mkdir(parents=True, exist_ok=True)
    # snakemake-executor-plugin-slurm runs Snakemake itself in each job (over 100 MB)
    memory = {"mem_mb": 500} if design == "slurm-plugin" else {}
    resources = ", ".join(f"{key}={value!r}" for key, value in {**RESOURCES, **memory}.items())
    if design == "slurm-plugin":
        # Its job step (snakemake-executor-plugin-slurm-jobstep) removes every SLURM_* variable
        # but the job's identity before its nested srun, SLURM_CONF among them: a cluster whose
        # slurm.conf is at Slurm's default path does not notice; the local Slurm's is not there,
        # so this srun, first on the jobs' PATH (sbatch --export=ALL), puts it back.
        (folder / "bin").mkdir()
        srun = folder / "bin" / "srun"
        srun.write_text(f'#!/bin/sh\nexport SLURM_CONF={os.environ["SLURM_CONF"]}\n'
                        f'exec {shutil.which("srun")} "$@"\n')  # fmt: skip
        srun.chmod(0o755)
    if design == "submitters":
        (folder / "submit_sleep.py").write_text(SUBMITTER)
        action = 'script: "submit_sleep.py"'
    else:
        action = f"shell: {script!r}"
    (folder / "Snakefile").write_text(
        f'rule all:\n    input: expand("out/{{i}}.txt", i=range({jobs}))\n\n'
        f'rule sleep:\n    output: "out/{{i}}.txt"\n'
        f"    params: script=lambda wildcards: {script!r}\n"
        f"    resources: {resources}\n    {action}\n"
    )


def command(design: str, jobs: int) -> list[str]:
    # --keep-going: a failed job does not stop the others' submission, so each job is counted
    if design == "plugin":
        return [SNAKEMAKE, "--keep-going", "--executor", "quantpipe", "--jobs", str(jobs)]
    if design == "slurm-plugin":
        return [SNAKEMAKE, "--keep-going", "--executor", "slurm", "--jobs", str(jobs)]
    # each waiting submitter holds one of Snakemake's cores
    return [SNAKEMAKE, "--keep-going", "--cores", str(jobs)]


def tree_rss_mb(root: int) -> float:
    """Resident memory (MB) of `root` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, frontier = 0, [root]
    while frontier:
        pid = frontier.pop()
        total += rss.get(pid, 0)
        frontier += children.get(pid, [])
    return total / 2**20


def rpc_counts(args: list[str]) -> dict[str, int]:
    """{message type: count} from the `by message type` section of sdiag or sacctmgr stats."""
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    section = out.split("by message type", 1)[1].split("by user", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^\s+(\w+)\s+\(\s*\d+\)\s+count:(\d+)", section,
                                                  re.M)}  # fmt: skip


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {
        key: after[key] - before.get(key, 0)
        for key in sorted(after, key=lambda k: -(after[k] - before.get(k, 0)))
        if after[key] > before.get(key, 0)
    }


def node_cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-p", "cpu", "-o", "%c"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return int(out.split()[0])


def accounted(folder: Path, since: str) -> tuple[int, int]:
    """(jobs sacct recorded from `folder` since `since`, the most of them in flight at once:
    submitted and not yet ended)."""
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-S", since, "-o", "Submit,End,WorkDir"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    rows = [line.split("|") for line in out.splitlines() if line.endswith(f"|{folder}")]
    events = sorted([(submit, 1) for submit, _, _ in rows] + [(end, -1) for _, end, _ in rows])
    in_flight = most = 0
    for _, change in events:  # at equal times an end sorts before a submit
        in_flight += change
        most = max(most, in_flight)
    return len(rows), most


def jobs_queued(folder: Path) -> int:
    """Jobs in the queue (pending or running) whose working directory is `folder` (0 when
    squeue fails: the caller asks again)."""
    done = subprocess.run(["squeue", "--me", "-h", "-o", "%Z"], capture_output=True, text=True)
    return done.stdout.split().count(str(folder)) if done.returncode == 0 else 0


def queue_call_types() -> dict[str, int]:
    """The slurmctld calls of one `jobs_queued`, to leave the benchmark's own out of a design's."""
    before = rpc_counts(["sdiag"])
    jobs_queued(Path("/"))
    calls = difference(rpc_counts(["sdiag"]), before)
    calls.pop("REQUEST_STATS_INFO", None)
    return calls


def release_when_all_in_flight(process, folder: Path, jobs: int, release: Path, seen: dict) -> None:
    """Write `release` once all `jobs` are queued or failed (a job refused at submission would
    otherwise hold the rest forever); `seen` gets the time and the squeue calls."""
    started = time.monotonic()
    while process.poll() is None:
        time.sleep(5)
        seen["calls"] += 1
        failed = (folder / "snakemake.log").read_text().count(FAILED_JOB)
        if jobs_queued(folder) + failed >= jobs:
            seen["all_in_flight_s"] = round(time.monotonic() - started, 1)
            release.touch()
            return


def measure(design: str, jobs: int, seconds: float, workdir: Path, cpus: int, hold: bool) -> dict:
    folder = workdir / f"{design}-{jobs}"
    if folder.exists():
        raise SystemExit(f"{folder} exists: give another --workdir or remove it")
    release = folder / "release" if hold else None
    write_workflow(folder, jobs, job_script(seconds, release), design)
    own_call = queue_call_types() if hold else {}
    seen = {"calls": 0, "all_in_flight_s": None}
    ctld, dbd = rpc_counts(["sdiag"]), rpc_counts(["sacctmgr", "show", "stats"])
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    started = time.monotonic()
    with open(folder / "snakemake.log", "w") as log:
        env = {**os.environ, "PATH": f"{folder / 'bin'}:{os.environ['PATH']}"}
        process = subprocess.Popen(command(design, jobs), cwd=folder, stdout=log,
                                   stderr=subprocess.STDOUT, env=env)  # fmt: skip
        peak = {"tree": 0.0}

        def sample() -> None:
            while process.poll() is None:
                peak["tree"] = max(peak["tree"], tree_rss_mb(process.pid))
                time.sleep(0.5)

        threads = [threading.Thread(target=sample, daemon=True)]
        if hold:
            arguments = (process, folder, jobs, release, seen)
            threads.append(threading.Thread(target=release_when_all_in_flight, args=arguments))
        for thread in threads:
            thread.start()
        process.wait()
        for thread in threads:
            thread.join()
    wall = time.monotonic() - started
    calls = difference(rpc_counts(["sdiag"]), ctld)
    calls.pop("REQUEST_STATS_INFO", None)  # our own sdiag
    for key, count in own_call.items():  # our own squeue calls (--hold)
        calls[key] -= count * seen["calls"]
    client = {key: count for key, count in calls.items() if key in CLIENT_CALLS}
    written = len(list((folder / "out").glob("*.txt"))) if (folder / "out").exists() else 0
    failed = (folder / "snakemake.log").read_text().count(FAILED_JOB)
    time.sleep(5)  # accounting records a job's end a little after it
    submitted, most_in_flight = accounted(folder, since)
    ideal = seconds * math.ceil(jobs / cpus)
    return {
        "design": design, "jobs": jobs, "exit": process.returncode, "wall_s": round(wall, 1),
        "overhead_per_job_s": None if hold else round((wall - ideal) / jobs, 3),
        "all_in_flight_after_s": seen["all_in_flight_s"], "peak_mb": round(peak["tree"]),
        "client_calls": sum(client.values()),
        "client_calls_per_job": round(sum(client.values()) / jobs, 2), "client": client,
        "job_side": {key: count for key, count in calls.items() if key not in CLIENT_CALLS},
        "dbd_job_queries": difference(rpc_counts(["sacctmgr", "show", "stats"]), dbd).get(
            "DBD_GET_JOBS_COND", 0), "failed": failed, "lost": jobs - written - failed,
        "submitted": submitted, "most_in_flight": most_in_flight,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--seconds", type=float, default=3.0, help="each job's sleep")
    parser.add_argument("--designs", nargs="+", choices=DESIGNS, default=["plugin"])
    parser.add_argument(
        "--hold", action="store_true", help="hold every job until all N are in flight at once"
    )
    parser.add_argument("--workdir", type=Path, default=REPO / ".scale_benchmark")
    args = parser.parse_args()
    if not os.environ.get("SLURM_CONF"):
        raise SystemExit(
            'SLURM_CONF is not set: eval "$(bash workflow/scripts/local_slurm.sh env)" first'
        )
    cpus = node_cpus()
    print(f"node of partition cpu: {cpus} CPUs; jobs sleep {args.seconds:g} s", flush=True)
    for design in args.designs:
        for jobs in args.jobs:
            row = measure(design, jobs, args.seconds, args.workdir.resolve(), cpus, args.hold)
            held = (f"all {jobs} in flight after {row['all_in_flight_after_s']} s"
                    if args.hold else f"overhead {row['overhead_per_job_s']} s/job")  # fmt: skip
            print(
                f"{design} N={jobs}: exit {row['exit']}, wall {row['wall_s']} s, {held}, "
                f"peak submit-host memory {row['peak_mb']} MB, "
                f"slurmctld client calls {row['client_calls']} ({row['client_calls_per_job']}/job) "
                f"{row['client']}, job-side calls {row['job_side']}, slurmdbd job queries "
                f"{row['dbd_job_queries']}, jobs failed {row['failed']}, lost {row['lost']}, "
                f"submitted {row['submitted']}, most in flight at once {row['most_in_flight']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
