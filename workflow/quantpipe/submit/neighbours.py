"""Other Slurm jobs running on this job's node. A neighbour takes memory bandwidth, caches and
turbo headroom from the cores a timed job was given, so a benchmark row says which jobs it saw
(the profile asks for whole nodes, but a cluster may ignore or override that)."""

import os

from quantpipe.submit.watch import slurm_query


def other_jobs(squeue_output: str, own_job_id: str) -> list[str]:
    """The job ids in `squeue -h -o %A` output, this job's own left out, sorted."""
    ids = {line.strip() for line in squeue_output.splitlines() if line.strip()}
    return sorted(ids - {own_job_id})


def on_this_node() -> dict:
    """{"jobs": the ids of the other jobs running on this node, "reason": ""}; outside a Slurm
    job, or where squeue does not answer, {"jobs": None, "reason": why}."""
    node, job = os.environ.get("SLURMD_NODENAME"), os.environ.get("SLURM_JOB_ID")
    if not (node and job):
        return {"jobs": None, "reason": "not a Slurm job (no SLURMD_NODENAME, SLURM_JOB_ID)"}
    # %A: one id per job, an array's tasks included, as SLURM_JOB_ID names this job.
    answered, out = slurm_query(["squeue", "-h", "-t", "running", "-w", node, "-o", "%A"])
    if not answered:
        return {"jobs": None, "reason": f"squeue did not answer: {out}"}
    return {"jobs": other_jobs(out, job), "reason": ""}


def row_fields(start: dict, end: dict) -> dict:
    """A benchmark row's record of `on_this_node()` at the start and at the end of its
    measurement: counts (None where unknown), the jobs seen, and why they are unknown."""
    seen = sorted({*(start["jobs"] or ()), *(end["jobs"] or ())})
    return {
        "neighbours_at_start": None if start["jobs"] is None else len(start["jobs"]),
        "neighbours_at_end": None if end["jobs"] is None else len(end["jobs"]),
        "neighbour_jobs": " ".join(seen),
        "neighbours_reason": start["reason"] or end["reason"],
    }
