"""Train a small UNet on built-in synthetic shapes, report Dice, draw its predictions (~2 min on a CPU).

No download: the data (discs, squares and triangles of random colours over textured, noisy
backgrounds) is generated from --seed. The demo trains with `unet-fast train`'s loop on 512
images of 64x64 pixels (height x width; 410 for training, 102 for validation), reports the
validation Dice per class, then scores 32 freshly generated held-out images of 96x128 pixels
(height x width: larger than the training images, the model takes any size), or --samples of
them if that is more, and writes into --out:

  best.pt, last.pt       checkpoints (use with `unet-fast predict` and `unet-fast export`)
  metrics.json           per-epoch loss, Dice and IoU
  curves.png             loss and Dice curves
  predictions.png        the first --samples (default 6) held-out images, one row each: the image,
                         its true and predicted masks in solid class colours, the predicted class
                         outlines over the image and the wrong pixels in red, under a legend
                         naming each class beside its colour
  samples/               the same --samples images: sample_K.png (the image), sample_K_mask.png
                         (predicted class indices as a palette PNG) and sample_K_overlay.png (the
                         predicted outlines over the image, a legend strip below it)

An --out that already holds these is refused unless --overwrite.
"""
import argparse
import os
import time

import torch
from PIL import Image

from unet_fast.workflow.atomic_write import prepare_output_dir, refuse_to_overwrite
from unet_fast.workflow.data import SYNTHETIC_CLASSES, synthetic_sample
from unet_fast.errors import InputError, Interrupted
from unet_fast.workflow.metrics import confusion_matrix, format_scores, scores
from unet_fast.workflow.overlay import save_mask_and_overlay, save_png
from unet_fast.workflow.plots import plot_predictions
from unet_fast.workflow.predict import predict
from unet_fast.workflow.train import RUN_FILES, TrainOptions, fit, flush_denormals

# Tuned so that 2 CPU cores finish in well under 3 minutes with a validation mean Dice >= 0.9.
DEMO_TRAINING = dict(samples=512, image_size=(64, 64), base_channels=16, batch_size=8, lr=3e-3,
                     epochs=16, val_split=0.2)
HELD_OUT_SIZE = (96, 128)     # (height, width): larger than the training images, to show any-size prediction
HELD_OUT_SCORED = 32          # held-out images scored (at least; more if --samples asks for more)
HELD_OUT_INDEX = 1_000_000    # far from the training indices of the same seed: never seen
TARGET_DICE = 0.9
DEMO_FILES = tuple(RUN_FILES.values()) + ("predictions.png", "samples")


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="data and initialisation seed")
    parser.add_argument("--epochs", type=int, default=DEMO_TRAINING["epochs"],
                        help="training epochs (default %(default)s)")
    parser.add_argument("--samples", type=int, default=6,
                        help="held-out images drawn into predictions.png and samples/ (default "
                             "%(default)s); the held-out Dice is scored on max(--samples, "
                             f"{HELD_OUT_SCORED}) held-out images")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: bars when stderr is a terminal, plain lines otherwise)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier demo's files in --out")


def _size_text(size) -> str:
    """(height, width) as the demo prints it: "96x128 (height x width)"."""
    return f"{size[0]}x{size[1]} (height x width)"


def _held_out(model, seed: int, count: int):
    """Fresh samples at HELD_OUT_SIZE: (image, truth, prediction) triples and their confusion."""
    confusion = torch.zeros(len(SYNTHETIC_CLASSES), len(SYNTHETIC_CLASSES), dtype=torch.int64)
    triples = []
    for k in range(count):
        image, truth = synthetic_sample(seed, *HELD_OUT_SIZE, index=HELD_OUT_INDEX + k, shapes=(2, 6))
        pred = predict(model, image)
        confusion += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(truth), len(SYNTHETIC_CLASSES))
        triples.append((image, truth, pred))
    return triples, confusion


def run(args) -> int:
    with flush_denormals():
        return _run(args)


def _run(args) -> int:
    start = time.perf_counter()
    say = lambda s: print(s, flush=True)  # noqa: E731
    # Checked before anything runs: a negative count would slice the held-out list from its end.
    if args.samples < 0:
        raise InputError(f"--samples is the number of held-out images to draw and must be >= 0, "
                         f"got {args.samples}")
    if args.epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {args.epochs}")
    opts = TrainOptions(**dict(DEMO_TRAINING, epochs=args.epochs), out=args.out, device=args.device,
                        seed=args.seed, progress=args.progress, overwrite=args.overwrite, log=say)
    if not args.overwrite:
        refuse_to_overwrite([os.path.join(args.out, name) for name in DEMO_FILES],
                            "--out holds an earlier demo: pass --overwrite to replace it, or "
                            "choose another --out")
    try:
        result = fit(opts)
    except Interrupted as e:  # the demo has no --resume: say where it stopped, not how to resume
        raise Interrupted(f"interrupted at epoch {e.epoch}", epoch=e.epoch) from None
    model = result["model"].eval()
    class_names = result["class_names"]
    final = result["history"][-1]
    train_seconds = time.perf_counter() - start

    triples, confusion = _held_out(model, args.seed, max(args.samples, HELD_OUT_SCORED))
    held_out = scores(confusion, class_names)
    samples_dir = prepare_output_dir(os.path.join(args.out, "samples"))
    for k, (image, truth, pred) in enumerate(triples[:args.samples]):
        stem = os.path.join(samples_dir, f"sample_{k}")
        save_png(stem + ".png", Image.fromarray(image))
        save_mask_and_overlay(stem + "_mask.png", stem + "_overlay.png", image, pred, class_names)
    grid = os.path.join(args.out, "predictions.png")
    plot_predictions(triples[:args.samples], class_names, grid,
                     title=f"held-out images, {_size_text(HELD_OUT_SIZE)}")

    say("")
    say(f"validation, {len(result['val_indices'])} images of {_size_text(DEMO_TRAINING['image_size'])}: "
        + format_scores(final, class_names))
    say(f"held-out, {len(triples)} new images of {_size_text(HELD_OUT_SIZE)}: "
        + format_scores(held_out, class_names))
    verdict = "meets" if final["mean_dice"] >= TARGET_DICE else "is BELOW"
    say(f"validation mean Dice {final['mean_dice']:.3f} {verdict} the {TARGET_DICE} target "
        f"(training took {train_seconds:.0f}s, total {time.perf_counter() - start:.0f}s)")
    say(f"wrote to {args.out}/: best.pt, last.pt, metrics.json, curves.png, predictions.png "
        f"({args.samples} held-out images), samples/ ({args.samples} images sample_K.png with "
        "sample_K_mask.png and sample_K_overlay.png)")
    say(f"next: unet-fast predict {os.path.join(args.out, 'best.pt')} IMAGE... --out predictions")
    return 0
