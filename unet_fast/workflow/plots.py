"""Training curves (loss and Dice per epoch) and the demo's prediction grid, as PNG files.

The grid (predictions.png) shows per held-out sample: the image, the true and the predicted mask in
solid class colours, the predicted class outlines over the image, and the wrong pixels in red
over a grey copy of the image; a legend names each class beside its colour.

Uses matplotlib's object API with the Agg canvas, never pyplot, so importing this module does not
change a user's matplotlib backend or open windows.
"""
import math
from typing import List, Sequence, Tuple

import numpy as np

from unet_fast.workflow.atomic_write import atomic_write
from unet_fast.workflow.overlay import ERROR_COLOUR, error_image, overlay, palette, solid_mask


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


PREDICTION_COLUMNS = ("image", "true mask", "predicted mask", "predicted outlines", "errors")
WRONG_PIXEL_LABEL = "wrong pixel"


def prediction_panels(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray,
                      num_classes: int) -> List[np.ndarray]:
    """The RGB pictures of one grid row, in PREDICTION_COLUMNS order: the image, both masks in solid
    class colours (background black), the predicted outlines over the image, the wrong pixels."""
    return [np.asarray(image), solid_mask(truth, num_classes), solid_mask(prediction, num_classes),
            overlay(image, prediction, num_classes), error_image(image, truth, prediction)]


def prediction_figure(samples: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                      class_names: Sequence[str], title: str = ""):
    """The grid of `plot_predictions` as a matplotlib Figure (Agg canvas).

    One row per (image, true mask, predicted mask) sample, one column per PREDICTION_COLUMNS
    entry; under the grid a legend names each class beside its colour, then the error colour.
    """
    from matplotlib.patches import Patch

    rows = max(1, len(samples))
    cols = len(PREDICTION_COLUMNS)
    height, width = np.asarray(samples[0][1]).shape if samples else (1, 1)
    cell = 2.4  # inches per panel's longer side
    panel_w, panel_h = cell * min(1.0, width / height), cell * min(1.0, height / width)
    fig = _figure(cols * (panel_w + 0.2) + 0.4, rows * (panel_h + 0.45) + (1.0 if title else 0.7))
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for r, (image, truth, prediction) in enumerate(samples):
        truth, prediction = np.asarray(truth), np.asarray(prediction)
        for c, picture in enumerate(prediction_panels(image, truth, prediction, len(class_names))):
            axes[r, c].imshow(picture, interpolation="nearest")
        wrong = float(np.mean(truth != prediction)) if truth.size else 0.0
        axes[r, -1].set_xlabel(f"{100 * wrong:.1f}% of pixels wrong", fontsize=8)
        axes[r, 0].set_ylabel(f"sample {r}", fontsize=9)
    for c, name in enumerate(PREDICTION_COLUMNS):
        axes[0, c].set_title(name, fontsize=10)
    for ax in axes.reshape(-1):
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(facecolor=colour / 255, edgecolor="0.4", label=str(name))
               for name, colour in zip(class_names, palette(len(class_names)))]
    handles.append(Patch(facecolor=np.asarray(ERROR_COLOUR) / 255, edgecolor="0.4", label=WRONG_PIXEL_LABEL))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9,
               frameon=False, handlelength=1.2, handleheight=1.2)
    if title:
        fig.suptitle(title, fontsize=11)
    # Leave the bottom 0.4 inch to the legend.
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1))
    return fig


def plot_predictions(samples: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                     class_names: Sequence[str], path, title: str = "") -> None:
    """Write `prediction_figure` to `path` as a PNG."""
    fig = prediction_figure(samples, class_names, title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))
