"""Task cifar10's implementation (quantpipe.tasks.base.Task)."""

from quantpipe.tasks.base import Task
from quantpipe.tasks.cifar10.data import load_splits
from quantpipe.tasks.classification.figures import render_figures
from quantpipe.tasks.classification.summary import document, paired_measurements, summarize


class Cifar10(Task):
    # The summary (quantpipe.stages.summary): quantpipe.tasks.classification's, paired on the
    # test split's labels.

    def summary_table(self, report, config_digest, benchmark_metrics, predictions, data, config):
        labels = load_splits(data, config["val_size"])["test"][1]
        measurements = paired_measurements(benchmark_metrics, predictions, labels)
        return summarize(report, measurements, config_digest), measurements

    def summary_document(self, table, facts, figures):
        return document(table, facts, figures)

    def summary_figures(self, table, extra, footer):
        return render_figures(table, extra, footer)
