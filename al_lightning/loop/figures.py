"""Figures the loop logs to TensorBoard once per cycle: the test confusion matrix and the classes a
cycle queried (or predicted).

Pure functions of arrays. They draw on matplotlib's Agg canvas directly, never through pyplot, so they
work on servers without a display and leave the user's matplotlib backend and open figures alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
MAX_READABLE_CLASSES = 30  # above it, per-cell numbers go and only every k-th class name is written


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _class_ticks(count: int, class_names: Sequence[str]) -> tuple[np.ndarray, list[str], int]:
    """Tick positions, their names and the rotation that keep class names from overlapping."""
    if len(class_names) != count:
        raise ValueError(f"{len(class_names)} class names for {count} classes")
    step = math.ceil(count / MAX_READABLE_CLASSES)
    positions = np.arange(0, count, step)
    names = [str(class_names[i]) for i in positions]
    upright = count <= 10 and max(map(len, names), default=0) <= 5
    return positions, names, 0 if upright else 90


def _as_class_ids(values: ArrayLike, what: str, count: int) -> np.ndarray:
    ids = np.asarray(values).reshape(-1)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{what} must be integer class ids, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= count):
        raise ValueError(f"{what} must lie in [0, {count}), got {ids.min()}..{ids.max()}")
    return ids.astype(np.int64)


def confusion_counts(targets: ArrayLike, predictions: ArrayLike, num_classes: int) -> np.ndarray:
    """``counts[t, p]``: how many samples of true class t were predicted as p."""
    truth = _as_class_ids(targets, "targets", num_classes)
    guess = _as_class_ids(predictions, "predictions", num_classes)
    if truth.shape != guess.shape:
        raise ValueError(f"{truth.size} targets but {guess.size} predictions")
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (truth, guess), 1)
    return counts


def confusion_matrix_figure(targets: ArrayLike, predictions: ArrayLike, class_names: Sequence[str]) -> Figure:
    """Counts per (true, predicted) class, coloured by the fraction of the true class, accuracy in the title."""
    count = len(class_names)
    counts = confusion_counts(targets, predictions, count)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("a confusion matrix needs at least one sample")
    correct = int(np.trace(counts))
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = float(np.clip(2.5 + 0.35 * count, 4.0, 12.0))
    figure = _new_figure(side + 1.0, side)
    axes = figure.add_subplot()
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class")
    positions, names, rotation = _class_ticks(count, class_names)
    axes.set_xticks(positions, names, rotation=rotation)
    axes.set_yticks(positions, names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if count <= MAX_READABLE_CLASSES:
        for (row, column), value in np.ndenumerate(counts):
            if value:
                axes.text(column, row, str(value), ha="center", va="center", fontsize="small",
                          color="white" if fractions[row, column] > 0.5 else "black")
    axes.set_title(f"accuracy {correct / total:.4f} ({correct}/{total})")
    return figure


def class_histogram_figure(counts: ArrayLike, class_names: Sequence[str], title: str) -> Figure:
    """One bar per class: how many samples a cycle queried (or predicted) of each."""
    heights = np.asarray(counts).reshape(-1)
    count = len(heights)
    figure = _new_figure(float(np.clip(3.0 + 0.25 * count, 5.0, 14.0)), 3.5)
    axes = figure.add_subplot()
    bars = axes.bar(np.arange(count), heights, color="tab:blue")
    if count <= MAX_READABLE_CLASSES:
        axes.bar_label(bars, fontsize="small")
    positions, names, rotation = _class_ticks(count, class_names)
    axes.set_xticks(positions, names, rotation=rotation)
    axes.set_xlim(-0.6, count - 0.4)
    axes.margins(y=0.1)  # room for the count above the tallest bar
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("class")
    axes.set_ylabel("samples")
    axes.set_title(title)
    axes.grid(True, axis="y", alpha=0.35)
    return figure


def figure_to_array(fig: Figure) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 array, for ``SummaryWriter.add_image(..., dataformats="HWC")``."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
