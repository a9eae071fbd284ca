"""Loss (cross-entropy + soft Dice) and validation metrics (Dice and IoU per class).

Metrics come from a confusion matrix summed over the whole validation split (and over ranks),
not from per-batch averages, so they do not depend on the batch size or the number of processes.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from unet_fast.errors import InputError


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of the soft Dice between softmax(logits) and one-hot(target).

    Sums run over the batch and the pixels, so a class absent from one image does not produce a
    0/0; `eps` keeps a class absent from the whole batch (and predicted absent) near Dice 1.
    """
    probs = logits.float().softmax(1)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * intersection + eps) / (total + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice: CE gives well-behaved per-pixel gradients from the start;
    Dice weights small classes as much as the background, which CE alone under-serves."""
    return F.cross_entropy(logits.float(), target.long()) + soft_dice_loss(logits, target)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 [C, C]: entry [t, p] counts pixels of true class t predicted as p."""
    index = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes).cpu()


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def scores(confusion: torch.Tensor, class_names: Sequence[str]) -> Dict[str, object]:
    """Dice and IoU per class and their means from a confusion matrix.

    A class that is neither present nor predicted anywhere has no score (NaN, JSON null) and is
    left out of the means. `mean_dice` averages all classes, background included;
    `foreground_dice` leaves class 0 out.
    """
    c = confusion.double()
    tp = c.diag()
    fp = c.sum(0) - tp
    fn = c.sum(1) - tp
    dice, iou = {}, {}
    for k, name in enumerate(class_names):
        denom = (2 * tp[k] + fp[k] + fn[k]).item()
        dice[name] = 2 * tp[k].item() / denom if denom else float("nan")
        union = (tp[k] + fp[k] + fn[k]).item()
        iou[name] = tp[k].item() / union if union else float("nan")
    names = list(class_names)
    return {
        "dice": dice,
        "iou": iou,
        "mean_dice": _nanmean([dice[n] for n in names]),
        "mean_iou": _nanmean([iou[n] for n in names]),
        "foreground_dice": _nanmean([dice[n] for n in names[1:]]),
        "pixel_accuracy": (tp.sum() / c.sum()).item() if c.sum() > 0 else float("nan"),
    }


def format_scores(s: Dict[str, object], class_names: List[str]) -> str:
    per_class = ", ".join(f"{n} {_fmt(s['dice'][n])}" for n in class_names)
    return f"dice {_fmt(s['mean_dice'])} ({per_class})  iou {_fmt(s['mean_iou'])}"


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"


def check_class_names(names, count: int, where: str) -> List[str]:
    """`names` as a list, or InputError (naming `where`) unless it is a list of `count` distinct,
    non-empty strings. Scores are keyed by name: two classes called alike would merge into one."""
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise InputError(f"{where}: class names must be a list of strings, got {type(names).__name__} "
                         f"{names!r:.60}")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where}: class names must be non-empty strings, got {name!r}")
    if len(names) != count:
        raise InputError(f"{where}: {len(names)} class names ({', '.join(names)}) for {count} classes")
    seen = set()
    for name in names:
        if name in seen:
            raise InputError(f"{where}: the class name {name!r} is given twice; each class needs "
                             "its own name (scores are reported per name)")
        seen.add(name)
    return list(names)
