"""Snakemake executor plugin `quantpipe`: one Snakemake process drives a whole Slurm sweep.

Each job is one submitit job with its rule's resources (quantpipe.submit.executor maps them), and
no process waits on the submit host per job: Snakemake's own status loop asks about all of the
run's jobs together (quantpipe.submit.sweep: one squeue per check, sacct for those that ended).

- A rule that runs a stage (params `stage`, as every rule of workflow/rules) is submitted as that
  stage's job directly: its `script:` (the submitter of the other profiles) does not run.
- The segment stage is ONE job array over the volume's blocks, tracked as one unit: its output
  is prepared here before submission and installed here once every task has succeeded
  (quantpipe.stages.segment.prepare_array / finish_array, which the waiting submitter of
  profiles/local runs too); a failed task cancels the rest and fails the rule with its log.
- A `shell:` rule runs its command in the job (workflow/scripts/scale_benchmark.py's rules).
- Anything else is refused with the reason.

profiles/slurm selects it (`executor: quantpipe`).
"""

import importlib
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import submitit
from quantpipe.submit import snakemake as bridge
from quantpipe.submit.console import logger_to
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


def segment_stage():
    """quantpipe.stages.segment, imported on first use: it imports torch, which no other job
    needs on the submit host."""
    return importlib.import_module("quantpipe.stages.segment")


class Executor(RemoteExecutor):
    def __post_init__(self) -> None:
        self.sweep = Sweep(say=self.logger.info)
        self.next_seconds_between_status_checks = CHECK_INTERVAL_S
        # A segment array's finish (install the output, sacct's memory figures: up to a minute)
        # runs here, so that it holds up no status check.
        self.finishing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="segment-finish")
        self.plans: dict[int, object] = {}  # segment arrays in flight: their staged outputs

    def run_job(self, job: JobExecutorInterface) -> None:
        if job.is_group():
            raise WorkflowError("executor quantpipe runs no group jobs: remove `group:` settings")
        work, stage, name, log_path = self.work_of(job)
        # What Snakemake does before it runs a job itself: output folders, stale outputs removed.
        self.workflow.async_run(job.prepare())
        log_path.parent.mkdir(parents=True, exist_ok=True)
        resources = dict(job.resources.items())
        folder = str(log_path.parent / "submitit")
        aux, plan = {}, None
        try:
            if stage == "segment":  # ONE job array over the volume's blocks
                segment, say = segment_stage(), logger_to(log_path)
                kwargs = dict(work.kwargs)
                metrics = kwargs.pop("metrics", None)
                plan = segment.prepare_array(**kwargs, tasks=job.params.tasks, log=say)
                flight = self.sweep.submit_array(stage, plan.calls, resources, name, folder,
                                                 log_path)  # fmt: skip
                aux = {"plan": plan, "metrics": metrics, "say": say}
                self.plans[job.jobid] = plan
                external = f"{flight.tasks[0].job.job_id.split('_')[0]}"
            else:
                flight = self.sweep.submit(work, stage, resources, name, folder, log_path)
                external = flight.job.job_id
        except Exception as error:  # refused by the cluster, or the array's output not made
            if plan is not None:
                segment_stage().discard_array(plan)
            said = str(error) if isinstance(error, Refused) else f"{stage}: {error!r}"
            with open(log_path, "a") as stream:
                stream.write(f"{said}\n")
            self.report_job_error(SubmittedJobInfo(job), msg=said)
            return
        info = SubmittedJobInfo(job, external_jobid=external, aux={"flight": flight, **aux})
        self.report_job_submission(info)

    def work_of(self, job: JobExecutorInterface):
        """(what the job runs, its stage or rule, its cluster name, its log file)."""
        params = job.params
        if "stage" in params.keys():
            stage = params.stage
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
        # Snakemake starts this loop before it calls __post_init__ (which makes the sweep), and
        # its first check can win that race: with no job submitted yet there is nothing to ask.
        if not active_jobs:
            return
        self.sweep.check()
        for info in active_jobs:
            if "finish" in info.aux:  # a segment array's output being installed
                if not self.report_finish(info):
                    yield info
                continue
            outcome = self.sweep.outcome(info.aux["flight"])
            if outcome is None:
                yield info
            elif not outcome[0]:
                self.drop_plan(info)
                self.report_job_error(info, msg=outcome[1])
            elif "plan" in info.aux:
                info.aux["finish"] = self.finishing.submit(
                    segment_stage().finish_array,
                    info.aux["plan"],
                    info.aux["flight"].results,
                    info.aux["metrics"],
                )
                yield info
            else:
                self.report_job_success(info)

    def report_finish(self, info: SubmittedJobInfo) -> bool:
        """Report a segment array whose finish is done (True); False while it is under way."""
        finish = info.aux["finish"]
        if not finish.done():
            return False
        self.plans.pop(info.job.jobid, None)
        try:
            record = finish.result()
        except Exception as error:
            info.aux["say"](f"segment: installing the array's output failed: {error!r}")
            self.report_job_error(info, msg=f"segment: installing the output failed: {error!r}")
            return True
        info.aux["say"](f"segment: {record['voxels']} voxels in {record['seconds']} s, output "
                        f"installed at {record['segmentation']}")  # fmt: skip
        self.report_job_success(info)
        return True

    def drop_plan(self, info: SubmittedJobInfo) -> None:
        plan = self.plans.pop(info.job.jobid, None)
        if plan is not None:
            segment_stage().discard_array(plan)

    def shutdown(self) -> None:
        super().shutdown()  # the status loop first: it is what hands work to `finishing`
        self.finishing.shutdown(wait=True)

    def cancel_jobs(self, active_jobs: list[SubmittedJobInfo]) -> None:
        # Every job of the sweep, not only `active_jobs`: Snakemake leaves out those whose status
        # check is under way when it is stopped.
        cancelled = self.sweep.cancel()
        if cancelled:
            self.logger.info(f"cancelled {len(cancelled)} jobs of this run: {' '.join(cancelled)}")
        # Segment arrays stopped before their output was installed: what they staged goes.
        for plan in list(self.plans.values()):
            segment_stage().discard_array(plan)
        self.plans.clear()
