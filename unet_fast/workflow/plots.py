"""Training curves (loss and Dice per epoch) and the demo's prediction grid, as PNG files.

Uses matplotlib's object API with the Agg canvas, never pyplot, so importing this module does not
change a user's matplotlib backend or open windows.
"""
import math
from typing import List, Sequence

import numpy as np

from unet_fast.workflow.atomic_write import atomic_write


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _nan(v):
    return float("nan") if v is None else v


def plot_curves(history: List[dict], class_names: Sequence[str], path) -> None:
    """Left: train and validation loss; right: validation Dice per class and the mean."""
    fig = _figure(10, 4)
    ax_loss, ax_dice = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    if any(h.get("val_loss") is not None for h in history):
        ax_loss.plot(epochs, [_nan(h.get("val_loss")) for h in history], "o-", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (cross-entropy + Dice)")
    ax_loss.set_title("Loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    if any(h.get("mean_dice") is not None for h in history):
        for name in class_names:
            ax_dice.plot(epochs, [_nan((h.get("dice") or {}).get(name)) for h in history],
                         "-", alpha=0.6, linewidth=1, label=name)
        ax_dice.plot(epochs, [_nan(h.get("mean_dice")) for h in history], "o-", color="black",
                     linewidth=2, label="mean")
        ax_dice.set_ylim(0, 1.02)
        ax_dice.legend(fontsize=8, loc="lower right")
    else:
        ax_dice.text(0.5, 0.5, "no validation split", ha="center", va="center")
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("Dice")
    ax_dice.set_title("Validation Dice")
    ax_dice.grid(alpha=0.3)
    for ax in (ax_loss, ax_dice):
        if epochs and max(epochs) <= 20:
            ax.set_xticks(epochs)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_predictions(rows: List[Sequence[np.ndarray]], titles: Sequence[str], path,
                     row_labels: Sequence[str] = ()) -> None:
    """A grid of RGB images: one row per sample, one column per title."""
    cols = len(titles)
    fig = _figure(2.6 * cols, 2.6 * len(rows))
    axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
            if c == 0 and r < len(row_labels):
                ax.set_ylabel(row_labels[r], fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))
