"""The summary's per-layer sensitivity (the sensitivity stage's records): a table of the most
sensitive layers of each INT8 configuration and a figure of what falling back each recovers."""

from pathlib import Path

from quantpipe.artifacts import read_json
from quantpipe.reporting.figures import GRAYS, add_footer, new_figure

SHOWN = 10  # layers per configuration in the table and the figure
HEADER = ["rank", "layer", "op", "MACs share", "score with it FP32", "recovery (points)"]


def configurations(paths: list[str]) -> list[dict]:
    """Each sensitivity record, labelled by its run and INT8 configuration."""
    records = []
    for path in paths:
        record = read_json(path)
        run = Path(path).parent.parent.name
        record["label"] = f"{run} {record['method']} {record['calibration_method']} " + (
            f"c{record['config']['calibration_size']}"
        )
        records.append(record)
    return records


def blocks(records: list[dict]) -> list[tuple]:
    """summary.md's section: per configuration, the drop of the fully quantized model and its
    most sensitive layers."""
    if not records:
        return []
    section = [
        ("h2", "Per-layer sensitivity"),
        ("p", "Each quantized layer left in FP32 alone, the rest INT8, scored on the first "
              "validation items (results/sensitivity/.../sensitivity.csv has every layer); "
              "recovery: points regained over the fully quantized model."),
    ]  # fmt: skip
    for record in records:
        items = record["validation_items"] or "all"
        section.append(
            ("p", f"{record['label']}: FP32 {record['score']} {record['score_fp32']:.4f}, every "
                  f"layer INT8 {record['score_int8']:.4f} ({record['drop_points']:+.2f} points "
                  f"lost) on {items} validation items; {len(record['layers'])} layers ranked in "
                  f"{record['seconds']:.0f} s.")
        )  # fmt: skip
        section.append(
            ("table", HEADER,
             [[row["rank"], row["layer"], row["op"], f"{row['macs_share']:.1%}",
               f"{row['score_layer_fp32']:.4f}", f"{row['recovery_points']:+.2f}"]
              for row in record["layers"][:SHOWN]])
        )  # fmt: skip
    return section


def figure(records: list[dict], footer: str):
    """One panel per configuration: the most sensitive layers' recovery, bars longest first."""
    fig = new_figure(8, 1.2 + 3.2 * len(records))
    axes = fig.subplots(len(records), 1, squeeze=False)[:, 0]
    for ax, record in zip(axes, records, strict=True):
        rows = record["layers"][:SHOWN][::-1]
        ax.barh(
            [f"{row['layer']} ({row['macs_share']:.0%} MACs)" for row in rows],
            [row["recovery_points"] for row in rows],
            color=GRAYS[1],
            edgecolor="black",
        )
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(
            f"{record['label']}: every layer INT8 loses {record['drop_points']:.2f} points",
            fontsize=9,
        )
        ax.set_xlabel(f"points of {record['score']} regained with the layer alone in FP32")
        ax.tick_params(axis="y", labelsize=7)
    add_footer(fig, footer)
    return fig
