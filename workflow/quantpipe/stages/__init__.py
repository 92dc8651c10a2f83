"""What Snakemake runs: one module per stage, each a `run` taking paths and plain config and
returning a plain dict; none names a task (quantpipe.tasks does the task's part)."""
