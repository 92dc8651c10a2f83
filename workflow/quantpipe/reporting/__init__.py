"""What every task's summary shares, with no knowledge of any task: `stats` (intervals, paired
tests, Pareto front, config hash), `rows` (benchmark metrics files as report.csv's and
batch_sizes.csv's rows), `aggregate` (report.csv's rows over seeds), `document` (cells,
provenance, blocks as markdown and HTML), `figures` (figure layout, axes, footer, saving),
`node_classes` (the GPU rows' class, and which class a row compares with)."""
