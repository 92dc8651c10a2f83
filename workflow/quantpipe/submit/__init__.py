"""The one package that talks to submitit: every stage's work runs as a submitit job.

- executor: a rule's resources as submitit parameters; submit() and submit_array() run a stage
  (StageCall) as a job or job array and wait for it.
- watch: waits for a job, following a Slurm one in squeue and sacct; names why it failed; peak
  memory from accounting.
- progress: while it waits, a line now and then with the job's state and its latest output.
- signals: a stopped submitter cancels its jobs; a stopped Snakemake stops its submitters.
- sweep: a run's jobs (and job arrays) in flight together, none waited on by a process of its
  own: what the executor plugin quantpipe (workflow/executor, profiles/slurm) drives.
- snakemake: the bridge from a rule (workflow/scripts/submit_stage.py, profiles/local and hand
  runs) to submit(); its rule-to-kwargs helpers serve the plugin too.
- console: the submitter's timestamped log lines.
"""

from quantpipe.submit.console import log
from quantpipe.submit.executor import STAGES, submit, submit_array
from quantpipe.submit.signals import cancel_jobs_on_sigterm
from quantpipe.submit.snakemake import from_snakemake
from quantpipe.submit.watch import max_rss_mb

__all__ = [
    "STAGES", "cancel_jobs_on_sigterm", "from_snakemake", "log", "max_rss_mb", "submit",
    "submit_array",
]  # fmt: skip
