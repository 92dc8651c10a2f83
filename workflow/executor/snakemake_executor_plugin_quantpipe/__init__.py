"""Snakemake executor plugin `quantpipe`: one Snakemake process drives a whole Slurm sweep.

Each job is one submitit job with its rule's resources (quantpipe.submit.executor maps them), and
no process waits on the submit host per job: Snakemake's own status loop asks about all of the
run's jobs together (quantpipe.submit.sweep: one squeue per check, sacct for those that ended).

- A rule that runs a stage (params `stage`, as every rule of workflow/rules) is submitted as that
  stage's job directly: its `script:` (the submitter of the other profiles) does not run.
- A `shell:` rule runs its command in the job (workflow/scripts/scale_benchmark.py's rules).
- Anything else, and the segment stage (a job array driven from the submit host), is refused
  with the reason: run those with profiles/slurm.

Select it with `executor: quantpipe` in a profile (profiles/slurm-plugin).
"""

from collections.abc import AsyncGenerator
from pathlib import Path

import submitit
from quantpipe.submit import snakemake as bridge
from quantpipe.submit.executor import Refused, StageCall
from quantpipe.submit.sweep import Sweep
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import CommonSettings

# Snakemake calls check_active_jobs this often; the sweep asks Slurm only when it is time to
# (every 2 s while anything changes, then less often: quantpipe.submit.watch.QueueWatch).
CHECK_INTERVAL_S = 1

common_settings = CommonSettings(
    # Jobs run on the cluster, on a filesystem shared with this host (their files are the rule's).
    non_local_exec=True,
    implies_no_shared_fs=False,
    job_deploy_sources=False,
    # No Snakemake runs in the job, so there is nothing to pass on to one.
    pass_default_storage_provider_args=False,
    pass_default_resources_args=False,
    pass_envvar_declarations_to_cmd=False,
    auto_deploy_default_storage_provider=False,
)


class Executor(RemoteExecutor):
    def __post_init__(self) -> None:
        self.sweep = Sweep(say=self.logger.info)
        self.next_seconds_between_status_checks = CHECK_INTERVAL_S

    def run_job(self, job: JobExecutorInterface) -> None:
        if job.is_group():
            raise WorkflowError("executor quantpipe runs no group jobs: remove `group:` settings")
        work, stage, name, log_path = self.work_of(job)
        # What Snakemake does before it runs a job itself: output folders, stale outputs removed.
        self.workflow.async_run(job.prepare())
        log_path.parent.mkdir(parents=True, exist_ok=True)
        resources = dict(job.resources.items())
        folder = str(log_path.parent / "submitit")
        try:
            flight = self.sweep.submit(work, stage, resources, name, folder, log_path)
        except Refused as refusal:
            with open(log_path, "a") as stream:
                stream.write(f"{refusal}\n")
            self.report_job_error(SubmittedJobInfo(job), msg=str(refusal))
            return
        info = SubmittedJobInfo(job, external_jobid=flight.job.job_id, aux={"flight": flight})
        self.report_job_submission(info)

    def work_of(self, job: JobExecutorInterface):
        """(what the job runs, its stage or rule, its cluster name, its log file)."""
        params = job.params
        if "stage" in params.keys():
            stage = params.stage
            if stage == "segment":
                raise WorkflowError(
                    "executor quantpipe does not run the segment stage (one job array driven "
                    "from the submit host): run the EM task with profiles/slurm"
                )
            name = bridge.job_name(stage, job.wildcards)
            work = StageCall(stage, bridge.stage_kwargs(job.input, job.output, params))
        elif job.shellcmd:
            stage = job.rule.name
            name = bridge.job_name(stage, job.wildcards)
            work = submitit.helpers.CommandFunction(["bash", "-euo", "pipefail", "-c",
                                                     job.shellcmd])  # fmt: skip
        else:
            raise WorkflowError(
                f"executor quantpipe runs rules with params `stage` or a `shell:` command; rule "
                f"{job.rule.name} has neither"
            )
        log_path = Path(job.log[0]) if job.log else Path("logs") / stage / f"{name}.log"
        return work, stage, name, log_path

    async def check_active_jobs(
        self, active_jobs: list[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        self.sweep.check()
        for info in active_jobs:
            outcome = self.sweep.outcome(info.aux["flight"])
            if outcome is None:
                yield info
            elif outcome[0]:
                self.report_job_success(info)
            else:
                self.report_job_error(info, msg=outcome[1])

    def cancel_jobs(self, active_jobs: list[SubmittedJobInfo]) -> None:
        # Every job of the sweep, not only `active_jobs`: Snakemake leaves out those whose status
        # check is under way when it is stopped.
        cancelled = self.sweep.cancel()
        if cancelled:
            self.logger.info(f"cancelled {len(cancelled)} jobs of this run: {' '.join(cancelled)}")
