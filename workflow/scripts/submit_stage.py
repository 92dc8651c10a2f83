# Every rule runs this: it hands the rule's files, params and resources to the submit layer.
from quantpipe.submit import from_snakemake

from_snakemake(snakemake)  # noqa: F821 (Snakemake injects `snakemake`)
