"""What every summary figure shares: its size and layout, readable log axes, grayscale-safe
styles, the provenance footer, and saving it reproducibly."""

import textwrap
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from quantpipe.artifacts import atomic_path

DPI = 150
# Grayscale-safe styles: series differ by marker, fill, line and hatch, not only by colour.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LINES = ("-", "--", ":", "-.")
GRAYS = ("black", "0.45", "0.25", "0.6")


def new_figure(width: float, height: float) -> Figure:
    """A figure of `width` x `height` inches (no pyplot: no global state, no display)."""
    # Leave the bottom strip free for the provenance footer.
    return Figure(
        figsize=(width, height), dpi=DPI, layout=ConstrainedLayoutEngine(rect=(0, 0.08, 1, 0.92))
    )


def plain_log_axis(axis) -> None:
    """A log axis labelled 1, 2, 5, 10, 20, ... rather than 2x10^1: readable at a glance."""
    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.10g}"))
    axis.set_minor_formatter(NullFormatter())


def add_footer(figure: Figure, footer: str) -> None:
    """`footer` (the provenance) in small type along the bottom strip, wrapped to fit."""
    # About 20 characters of 6-point text per inch of figure width.
    lines = textwrap.fill(footer, int(figure.get_figwidth() * 20))
    figure.text(0.01, 0.01, lines, fontsize=6, color="0.3", va="bottom")


def save_figure(figure: Figure, path: str) -> None:
    """`figure` as the format `path`'s suffix names (png, svg), written atomically."""
    kind = Path(path).suffix.removeprefix(".")
    # No creation date in the SVG: the same numbers give the same file.
    metadata = {"Date": None} if kind == "svg" else None
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=kind, metadata=metadata)
