"""Plots for asset metadata: a PNG inlined in markdown, which the Dagster UI renders."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

# (title, y label, {series name: [(x, y), ...]})
Panel = tuple[str, str, dict[str, Sequence[tuple[float, float]]]]


def line_plots_markdown(panels: Sequence[Panel], width_in: float = 4.0, height_in: float = 2.8) -> str:
    """One row of line plots."""
    return _plots_markdown(panels, "line", width_in, height_in)


def bar_plots_markdown(panels: Sequence[Panel], width_in: float = 4.0, height_in: float = 2.8) -> str:
    """One row of bar charts (series side by side at each x)."""
    return _plots_markdown(panels, "bar", width_in, height_in)


def _plots_markdown(panels: Sequence[Panel], style: str, width_in: float, height_in: float) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in worker processes
    import matplotlib.pyplot as plt

    panels = [p for p in panels if any(p[2].values())]
    if not panels:
        return "(nothing to plot)"
    fig, axes = plt.subplots(1, len(panels), figsize=(width_in * len(panels), height_in), squeeze=False)
    for ax, (title, ylabel, series) in zip(axes[0], panels):
        drawn = [(name, points) for name, points in series.items() if points]
        for i, (name, points) in enumerate(drawn):
            xs, ys = zip(*points)
            if style == "bar":
                width = 0.8 / len(drawn)
                ax.bar([x + (i - (len(drawn) - 1) / 2) * width for x in xs], ys, width=width, label=name)
            else:
                ax.plot(xs, ys, label=name, marker="o" if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return f"![{' / '.join(p[0] for p in panels)}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def heatmaps_markdown(matrices: Sequence[tuple[str, Sequence[Sequence[float]]]], row_labels: Sequence[str],
                      col_labels: Sequence[str], size_in: float = 2.8) -> str:
    """One row of annotated matrices (confusion matrices): (title, rows of counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not matrices:
        return "(nothing to plot)"
    fig, axes = plt.subplots(1, len(matrices), figsize=(size_in * len(matrices) + 0.6, size_in), squeeze=False)
    for ax, (title, m) in zip(axes[0], matrices):
        ax.imshow(m, cmap="Blues")
        for i, row in enumerate(m):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:g}", ha="center", va="center")
        ax.set_xticks(range(len(col_labels)), col_labels, fontsize=8)
        ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return f"![confusion matrices](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"
