"""Plots as embedded PNGs (base64), so the HTML report is one self-contained file."""

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower x is better, higher y is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        ):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto_plot(
    names: list[str], xs: list[float], ys: list[float], xlabel: str, ylabel: str
) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter(xs, ys, color="#4477aa", zorder=3)
    front = pareto_front(list(zip(xs, ys, strict=True)))
    ax.plot(
        [xs[i] for i in front],
        [ys[i] for i in front],
        color="#ee6677",
        zorder=2,
        label="Pareto front",
    )
    for name, x, y in zip(names, xs, ys, strict=True):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def curve_plot(series: dict[str, tuple[list[float], list[float]]], xlabel: str, ylabel: str) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
