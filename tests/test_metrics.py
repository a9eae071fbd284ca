"""The loss (cross-entropy + soft Dice) and the validation scores, against values worked by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from unet_fast.workflow.metrics import confusion_matrix, scores, segmentation_loss


def test_confusion_matrix_counts_true_class_by_predicted_class():
    target = torch.tensor([[0, 0, 1], [1, 2, 2]])
    pred = torch.tensor([[0, 1, 1], [0, 2, 2]])
    assert confusion_matrix(pred, target, 3).tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 2]]


def test_scores_per_class_and_means():
    # Rows: true class, columns: predicted. Class 2 is neither present nor predicted.
    confusion = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    s = scores(confusion, ["bg", "a", "b"])
    # bg: tp 5, fp 2, fn 1; a: tp 3, fp 1, fn 2.
    assert s["dice"]["bg"] == pytest.approx(10 / 13) and s["iou"]["bg"] == pytest.approx(5 / 8)
    assert s["dice"]["a"] == pytest.approx(6 / 9) and s["iou"]["a"] == pytest.approx(3 / 6)
    assert math.isnan(s["dice"]["b"]) and math.isnan(s["iou"]["b"])  # no score, left out of the means
    assert s["mean_dice"] == pytest.approx((10 / 13 + 6 / 9) / 2)
    assert s["mean_iou"] == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert s["foreground_dice"] == pytest.approx(6 / 9)
    assert s["pixel_accuracy"] == pytest.approx(8 / 11)


def test_loss_is_cross_entropy_plus_dice():
    # Uniform logits over K classes: cross-entropy log K; each class's soft Dice (eps 1) is
    # (2 n_k / K + 1) / (P / K + n_k + 1) for n_k pixels of class k out of P.
    k = 3
    target = torch.tensor([[[0, 0, 0, 1], [1, 0, 0, 0]]])  # P = 8: n = 6, 2, 0
    loss = segmentation_loss(torch.zeros(1, k, 2, 4), target)
    dice = [(2 * n / k + 1) / (8 / k + n + 1) for n in (6, 2, 0)]
    assert loss.item() == pytest.approx(math.log(k) + 1 - sum(dice) / k, rel=1e-6)
    # A confident, correct prediction costs almost nothing; a confident, wrong one a lot.
    right = 20 * F.one_hot(target, k).permute(0, 3, 1, 2).float()
    assert segmentation_loss(right, target).item() < 1e-3
    assert segmentation_loss(right, (target + 1) % k).item() > 10
