"""Task isbi2012_em's implementation (quantpipe.tasks.base.Task)."""

from quantpipe.tasks.base import Task
from quantpipe.tasks.isbi2012_em.summary import document, render_figures, summarize


class Isbi2012Em(Task):
    # The summary (quantpipe.stages.summary): the cost per cubic millimetre; report.csv's rows
    # hold all it needs.

    def summary_table(self, report, config_digest, benchmark_metrics, predictions, data, config):
        return summarize(report, config_digest), None

    def summary_document(self, table, facts, figures):
        return document(table, facts, figures)

    def summary_figures(self, table, extra, footer):
        return render_figures(table, footer)
