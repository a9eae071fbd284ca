"""Train a UNet for segmentation on the built-in synthetic set or a folder of images/ and masks/.

Loss: cross-entropy + Dice. After every epoch: Dice and IoU per class on the validation split,
one log line, OUT/last.pt (everything needed to resume), OUT/best.pt (best mean Dice),
OUT/metrics.json and OUT/curves.png. All files are written atomically; an OUT that holds an
earlier run is refused unless --resume continues it or --overwrite replaces it.

  unet-fast train --epochs 10 --out runs/shapes                  # built-in synthetic shapes
  unet-fast train --data DIR --num-classes 2 --image-size 256 --out runs/cars
  unet-fast train ... --resume                                   # continue OUT/last.pt
  torchrun --nproc_per_node=2 -m unet_fast train ...             # DistributedDataParallel
"""
import argparse
import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Tuple

import torch

from unet_fast.workflow import checkpoint, distributed
from unet_fast.workflow.atomic_write import FolderLock, atomic_write_text, prepare_output_dir, refuse_to_overwrite
from unet_fast.workflow.data import (SYNTHETIC_CLASSES, Augmented, FolderSegmentation, SyntheticSegmentation,
                                     parse_size,
                   split_indices, to_model_input)
from unet_fast.errors import InputError, Interrupted
from unet_fast.workflow.metrics import (check_class_names, confusion_matrix, format_scores, scores,
                                       segmentation_loss)
from unet_fast.models.unet import UNet
from unet_fast.ops.up_concat_op import env_flag
from unet_fast.workflow.plots import plot_curves
from unet_fast.workflow.progress import progress as progress_bar

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Options that shape the data stream or the optimisation: a resumed run that changes one of
# them can no longer match an unbroken run, so resuming with a different value is reported.
_RESUME_MUST_MATCH = ("data", "samples", "batch_size", "lr", "weight_decay", "val_split",
                      "image_size", "crop", "flip", "seed", "amp")
RUN_FILES = {"last": "last.pt", "best": "best.pt", "metrics": "metrics.json", "curves": "curves.png"}


@dataclass
class TrainOptions:
    data: str = "builtin"            # "builtin" or a folder with images/ and masks/
    samples: int = 512               # size of the built-in set
    num_classes: int = 2             # folder data only (the built-in set has 4)
    class_names: Optional[List[str]] = None
    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_split: float = 0.2
    image_size: Optional[Tuple[int, int]] = None   # resize to (H, W); built-in default 64x64
    crop: Optional[Tuple[int, int]] = None         # random (H, W) crop for training
    flip: bool = True
    base_channels: int = 16
    up_relu: bool = True
    amp: Optional[str] = None
    channels_last: bool = False
    device: Optional[str] = None
    out: str = "runs/train"
    resume: Optional[str] = None     # a checkpoint path, or "last" for OUT/last.pt
    overwrite: bool = False          # replace an earlier run's files in `out` (else InputError)
    seed: int = 0
    workers: int = 0
    progress: Optional[bool] = None  # tqdm bars; None: when stderr is a terminal, else plain lines
    log: Callable[[str], None] = field(default=print, repr=False)

    def record(self) -> dict:
        """The options as plain values (saved in checkpoints and metrics.json)."""
        d = asdict(self)
        d.pop("log")
        for k in ("image_size", "crop"):
            d[k] = list(d[k]) if d[k] else None
        return d


def learning_rate(step: int, total: int, base: float) -> float:
    """Linear warm-up over the first 5% of steps (at most 100), then cosine decay to 2% of base."""
    warmup = max(1, min(100, total // 20))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def init_weights(model: torch.nn.Module) -> None:
    """He (Kaiming) initialisation for the ReLU convolutions, zero biases.

    The lesson's U-Net has no normalisation layers; with PyTorch's default init (variance 1/3 of
    He's) the signal shrinks by about 2.5x per layer over its 18 layers and training stalls for
    many epochs. He init keeps the activations' scale through the depth.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            last = m.out_channels == getattr(model, "out_channels", -1) and m.kernel_size == (1, 1)
            gain = "linear" if last else "relu"
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity=gain)
        elif isinstance(m, torch.nn.ConvTranspose2d):
            # 2x2 stride 2: each output pixel sees one tap of each input channel, so fan-in is C_in.
            torch.nn.init.normal_(m.weight, std=math.sqrt(2.0 / m.in_channels))
        else:
            continue
        if m.bias is not None:
            torch.nn.init.zeros_(m.bias)


def build_dataset(opts: TrainOptions, progress):
    if opts.data == "builtin":
        return SyntheticSegmentation(opts.samples, opts.image_size or (64, 64), seed=opts.seed)
    return FolderSegmentation(opts.data, opts.num_classes, opts.class_names, opts.image_size,
                              progress=progress)


def _check_options(opts: TrainOptions) -> None:
    for name in ("epochs", "batch_size", "base_channels", "samples", "num_classes"):
        if getattr(opts, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(opts, name)}")
    # Each must be a finite number: --lr inf trains to NaN weights, and NaN passes no `<` test.
    if not (math.isfinite(opts.lr) and opts.lr > 0):
        raise InputError(f"--lr must be a positive finite number, got {opts.lr}")
    if not (math.isfinite(opts.weight_decay) and opts.weight_decay >= 0):
        raise InputError(f"--weight-decay must be a finite number >= 0, got {opts.weight_decay}")
    if opts.amp not in (None, *AMP_DTYPES):
        raise InputError(f"--amp must be bf16 or fp16, got {opts.amp!r}")
    if opts.workers < 0:
        raise InputError(f"--workers must be >= 0, got {opts.workers}")
    check_seed(opts.seed)
    try:  # read at the first forward: a bad value would stop the run after --out was made
        env_flag("UNET_FAST_DISABLE_TRITON")
    except ValueError as e:
        raise InputError(str(e)) from None
    if opts.class_names is not None:
        check_class_names(opts.class_names, opts.num_classes, "--class-names")


# The seeds numpy, torch and Python all take (numpy refuses negative ones, torch those past 2**64).
MAX_SEED = 2**32 - 1


def check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"--seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")


def training_bytes(batch_size: int, height: int, width: int, base_channels: int, classes: int,
                   amp: bool = False) -> int:
    """A lower bound on the memory one training step needs, to refuse sizes no device can train
    (not a budget: the real need is larger). Autograd keeps every convolution's output (the ReLUs
    work in place on it) and each decoder concatenation: per pixel of the padded image
    2 x (1 + 2/4 + 4/16 + 8/64) base channels in the encoder, (2 + 1 + 1) x (1 + 1/2 + 1/4) in
    the decoder, and the logits; 2 bytes each under autocast, else 4. The weights count four
    times in float32: themselves, their gradients and AdamW's two moments."""
    pixels = (-(-height // 8) * 8) * (-(-width // 8) * 8)
    b = base_channels
    activations = batch_size * pixels * (10.75 * b + classes) * (2 if amp else 4)
    # 3x3 convolutions of the blocks (in x out channel products, over b**2) and the 2x2 upconvs.
    weights = b * b * (9 * (1 + 2 + 4 + 8 + 16 + 32 + 64 + 32 + 16 + 8 + 4 + 2 + 1) + 4 * (32 + 8 + 2))
    return int(activations + 16 * weights)


def _check_memory(opts: "TrainOptions", device: torch.device, num_classes: int, size) -> None:
    """InputError before anything is allocated when one training step cannot fit the device."""
    have = distributed.available_memory(device)
    if have is None or size is None:
        return
    height, width = opts.crop or size
    need = training_bytes(opts.batch_size, height, width, opts.base_channels, num_classes,
                          amp=opts.amp is not None)
    if need > have:
        raise InputError(f"training {height}x{width} images in batches of {opts.batch_size} with "
                         f"--base-channels {opts.base_channels} needs at least {need / 2**30:.1f} GiB, "
                         f"more than the {have / 2**30:.1f} GiB {device} has; lower --image-size, "
                         "--crop, --batch-size or --base-channels")


def _loaders(opts, dataset, ctx, train_idx, val_idx):
    sizes = dataset.sizes()
    if not opts.crop and len({sizes[i] for i in train_idx}) > 1:
        raise InputError(f"the images in {opts.data} differ in size; give --image-size or --crop "
                       "so training batches can be stacked")
    if opts.crop:
        # Checked here, not when the sample is drawn: in a DataLoader worker the error would
        # surface mid-epoch wrapped in a traceback, after the output folder was made.
        ch, cw = opts.crop
        for i in train_idx:
            h, w = sizes[i]
            if ch > h or cw > w:
                resized = " after --image-size" if opts.image_size else ""
                raise InputError(f"--crop {ch}x{cw} is larger than {dataset.names[i]} ({h}x{w}{resized})")
    train_set = Augmented(dataset, train_idx, crop=opts.crop, flip=opts.flip, seed=opts.seed)
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank,
                                                  shuffle=True, seed=opts.seed)
    common = dict(num_workers=opts.workers, pin_memory=ctx.device.type == "cuda")
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=opts.batch_size, sampler=sampler, **common)
    # Validation: each rank takes every world_size-th sample (no padding duplicates, so the
    # summed confusion matrix counts each pixel once); full images, batched when sizes agree.
    val_set = Augmented(dataset, val_idx[ctx.rank::ctx.world_size])
    same_size = len({sizes[i] for i in val_idx}) <= 1
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=opts.batch_size if same_size else 1,
                                             shuffle=False, **common)
    return train_set, sampler, train_loader, val_loader


def _bar(iterable, enabled, **kwargs):
    return progress_bar(iterable, enabled=enabled, leave=False, dynamic_ncols=True, **kwargs)


def _batch(opts, ctx, images, masks):
    x = to_model_input(images.to(ctx.device, non_blocking=True))
    if opts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, masks.to(ctx.device, non_blocking=True).long()


def _autocast(opts, ctx):
    return torch.autocast(ctx.device.type, dtype=AMP_DTYPES.get(opts.amp, torch.float32),
                          enabled=opts.amp is not None)


def evaluate(model, loader, opts, ctx, num_classes: int, progress=None):
    """(sum of batch losses x batch size, sample count, confusion matrix) on this rank's share."""
    model.eval()
    loss_sum, count = 0.0, 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    with torch.no_grad():
        for images, masks in _bar(loader, progress, desc="validation", unit="batch"):
            x, y = _batch(opts, ctx, images, masks)
            with _autocast(opts, ctx):
                logits = model(x)
            loss_sum += segmentation_loss(logits, y).item() * len(y)
            count += len(y)
            confusion += confusion_matrix(logits.argmax(1), y, num_classes)
    return loss_sum, count, confusion


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _warn_changed_options(opts, train_state: dict, world_size: int, log) -> None:
    saved, now = train_state["args"], opts.record()
    changed = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in _RESUME_MUST_MATCH if saved.get(k) != now[k]]
    # The processes split each batch between them, so their number shapes the data stream too.
    if train_state.get("world_size", 1) != world_size:
        changed.append(f"processes {train_state.get('world_size', 1)} -> {world_size}")
    if changed:
        log("note: resuming with changed options (the run will not match an unbroken one): "
            + ", ".join(changed))
    if saved.get("epochs") != now["epochs"]:
        # Extending a run is a normal use of --resume, but the cosine schedule spans all epochs.
        log(f"note: --epochs {saved.get('epochs')} -> {now['epochs']}: the learning-rate schedule "
            f"is recomputed for {now['epochs']} epochs")


def fit(opts: TrainOptions) -> dict:
    """Train as `opts` says; returns the history, the best scores, the paths and the model.

    Bad options or data raise InputError before anything is written; so does an --out folder that
    holds another run, unless opts.overwrite. Ctrl-C raises Interrupted (a KeyboardInterrupt)
    saying where to resume; a non-finite loss or weights stop training with InputError, keeping
    the last good checkpoint.
    """
    _check_options(opts)
    ctx = distributed.setup(opts.device)
    held = []  # the lock on --out, taken by rank 0 once the inputs are checked
    try:
        return _fit(opts, ctx, held)
    finally:
        for lock in held:
            lock.release()
        distributed.teardown(ctx)


def run_paths(out: str) -> dict:
    """The files a run writes into its --out folder."""
    return {key: os.path.join(out, name) for key, name in RUN_FILES.items()}


def _resume_path(opts: TrainOptions) -> Optional[str]:
    if not opts.resume:
        return None
    return run_paths(opts.out)["last"] if opts.resume == "last" else opts.resume


def _check_no_other_run(opts: TrainOptions) -> None:
    """InputError naming a file of an earlier run in --out that this run would replace, unless
    --overwrite, or --resume continues that very run (its checkpoint is in --out)."""
    resume = _resume_path(opts)
    if opts.overwrite or (resume and os.path.realpath(os.path.dirname(os.path.abspath(resume)))
                          == os.path.realpath(opts.out)):
        return
    refuse_to_overwrite(run_paths(opts.out).values(),
                        "--out holds an earlier run: pass --resume to continue it or --overwrite "
                        "to replace it, or choose another --out")


def _on_main_rank(ctx: distributed.Context, check: Callable[[], None]) -> None:
    """Run a check of the output folder on rank 0 (the rank that writes) and raise its InputError
    on every rank, so that no rank is left waiting for the others."""
    problem = None
    if ctx.is_main:
        try:
            check()
        except InputError as e:
            problem = str(e)
    distributed.agree_on_error(ctx, problem)


def _first_non_finite(model: torch.nn.Module) -> Optional[str]:
    """The name of the first parameter holding NaN or Inf, or None."""
    return next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)


def _last_good(last_path: str, saved_epoch: int) -> str:
    """Where the run can go on from, for the messages that stop it (saved_epoch: the epoch this
    run's last.pt holds, 0 if it has none: a last.pt of a replaced run does not count)."""
    if saved_epoch:
        return f"{last_path} keeps epoch {saved_epoch}, the last good one"
    return "no checkpoint was saved yet"


def _train_epoch(net, loader, optimizer, scaler, opts, ctx, epoch: int, step: int, total_steps: int,
                 last_good: str, progress) -> Tuple[float, int, int, float]:
    """One pass over the training data: (sum of losses x batch size, sample count, step, last lr).

    A NaN or Inf loss (on any rank) stops it with InputError before that step's update is applied,
    so the weights in memory and on disk stay those of the last good step and epoch."""
    loss_sum, count, lr = 0.0, 0, opts.lr
    bar = _bar(loader, progress, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="batch")
    try:
        for batch, (images, masks) in enumerate(bar):
            x, y = _batch(opts, ctx, images, masks)
            lr = learning_rate(step, total_steps, opts.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with _autocast(opts, ctx):
                logits = net(x)
            loss = segmentation_loss(logits, y)
            value = loss.item()
            if distributed.any_rank(ctx, not math.isfinite(value)):
                what = (f"the loss is {value}" if not math.isfinite(value)
                        else "another process's loss is not finite")
                raise InputError(f"training diverged at epoch {epoch + 1}, step {step + 1} (batch {batch + 1} "
                               f"of {len(loader)}): {what}, so training stopped before applying it; "
                               f"{last_good}; try a lower --lr (now {opts.lr:g})")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += value * len(y)
            count += len(y)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
    finally:
        bar.close()
    return loss_sum, count, step, lr


def _claim_output(opts: TrainOptions, held: list) -> None:
    """Make --out, lock it for this run's lifetime and check again, under the lock, that it
    holds no other run: two runs started into one folder at once cannot both pass the check
    made before the lock (the second is refused, naming the process that holds the folder)."""
    prepare_output_dir(opts.out)
    lock = FolderLock(opts.out, "another `unet-fast train` writing its run there")
    held.append(lock)
    _check_no_other_run(opts)


def _build_training(opts: TrainOptions, ctx: distributed.Context, num_classes: int):
    """(model, optimizer, scaler) freshly initialized, on the run's device and memory format."""
    torch.manual_seed(opts.seed)
    model = UNet(in_channels=3, out_channels=num_classes, base_channels=opts.base_channels,
                 up_relu=opts.up_relu)
    init_weights(model)
    model = model.to(ctx.device)
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=opts.amp == "fp16")
    return model, optimizer, scaler


def _restore(resume_path, opts, ctx, config, model, optimizer, scaler, log):
    """Load last.pt into model, optimizer and scaler: (checkpoint, (epoch, step, history, best))."""
    ckpt = checkpoint.read(resume_path)  # CPU; load_state_dict moves it
    checkpoint.check_config(ckpt, config, resume_path)
    if "train" not in ckpt:
        raise InputError(f"checkpoint {resume_path} has no training state to resume from "
                         "(best.pt holds weights only; resume from last.pt)")
    # Every field is checked before anything is restored: a damaged or foreign last.pt is
    # one line naming the field, never a half-restored model or a traceback.
    checkpoint.check_resumable(ckpt, resume_path, model)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["train"]["optimizer"])
    if ckpt["train"]["scaler"] and scaler.is_enabled():
        scaler.load_state_dict(ckpt["train"]["scaler"])
    # else: a run without --amp fp16 resumed with it starts a fresh scaler (and the reverse
    # needs none): both are legitimate changes of precision.
    _warn_changed_options(opts, ckpt["train"], ctx.world_size, log)
    return ckpt, (ckpt["epoch"], ckpt["train"]["step"], list(ckpt["history"]), ckpt.get("best"))


def _epoch_record(model, val_loader, opts, ctx, class_names, progress, loss_sum, count, epoch, step, lr, t0):
    """One epoch's entry of metrics.json: losses summed over every rank, validation scores."""
    val_loss_sum, val_count, confusion = evaluate(model, val_loader, opts, ctx, len(class_names), progress)
    sums = distributed.all_reduce_sum(
        ctx, torch.tensor([loss_sum, count, val_loss_sum, val_count], dtype=torch.float64))
    confusion = distributed.all_reduce_sum(ctx, confusion)
    record = {"epoch": epoch + 1, "step": step, "lr": lr,
              "train_loss": (sums[0] / sums[1]).item(), "seconds": time.perf_counter() - t0}
    if sums[3] > 0:
        record["val_loss"] = (sums[2] / sums[3]).item()
        record.update(scores(confusion, class_names))
        # Column sums of the [true, predicted] matrix: the pixels predicted as each class.
        record["never_predicted"] = [name for name, n in zip(class_names, confusion.sum(0).tolist()) if n == 0]
    return record


# Below this many optimizer steps, a class the model never predicts is most likely undertrained.
FEW_STEPS = 1000


def untrained_class_hint(history: list, step: int, num_classes: int) -> Optional[str]:
    """A hint when the last validation never predicted some class after few optimizer steps."""
    missing = history[-1].get("never_predicted") if history else None
    if not missing or step >= FEW_STEPS:
        return None
    return (f"hint: after {step} optimizer steps the model never predicts {', '.join(missing)} on the "
            "validation images; train longer (--epochs), give it more data (--samples or more "
            f"images), or check that the masks hold the class indices 0..{num_classes - 1}")


def _fit(opts: TrainOptions, ctx: distributed.Context, held: list) -> dict:
    log = opts.log if ctx.is_main else (lambda *_: None)
    progress = opts.progress if ctx.is_main else False
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # Everything that can fail on the user's input is checked before the output folder is touched.
    _on_main_rank(ctx, lambda: _check_no_other_run(opts))
    if opts.data == "builtin" or opts.image_size:  # the size is known before any image is made
        _check_memory(opts, ctx.device, len(SYNTHETIC_CLASSES) if opts.data == "builtin" else opts.num_classes,
                      opts.image_size or (64, 64))
    dataset = build_dataset(opts, progress)
    class_names = dataset.class_names
    num_classes = len(class_names)
    train_idx, val_idx = split_indices(len(dataset), opts.val_split, opts.seed)
    train_set, sampler, train_loader, val_loader = _loaders(opts, dataset, ctx, train_idx, val_idx)
    sizes = dataset.sizes()
    _check_memory(opts, ctx.device, num_classes, max(sizes, key=lambda s: s[0] * s[1]) if sizes else None)

    model, optimizer, scaler = _build_training(opts, ctx, num_classes)
    config = checkpoint.model_config(model, class_names)
    resume_path = _resume_path(opts)
    ckpt, (start_epoch, step, history, best) = None, (0, 0, [], None)
    if resume_path:
        ckpt, (start_epoch, step, history, best) = _restore(resume_path, opts, ctx, config, model, optimizer,
                                                            scaler, log)

    _on_main_rank(ctx, lambda: _claim_output(opts, held))
    if resume_path:
        checkpoint.set_rng_state(ckpt["train"]["rng"])
        log(f"resuming {resume_path} after epoch {start_epoch} (step {step})")

    net = model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)

    total_steps = opts.epochs * len(train_loader)
    paths = run_paths(opts.out)
    if start_epoch == 0:
        where = f"{ctx.world_size} processes, " if ctx.distributed else ""
        log(f"training UNet(base_channels={opts.base_channels}, up_relu={opts.up_relu}) for "
            f"{opts.epochs} epochs on {len(train_idx)} images, validating on {len(val_idx)} "
            f"({where}{ctx.device}{', amp ' + opts.amp if opts.amp else ''}); classes: {', '.join(class_names)}")

    epoch = start_epoch
    # The epoch this run's OUT/last.pt holds, for the messages that stop the run (0: none yet).
    resumed_here = bool(resume_path) and os.path.realpath(resume_path) == os.path.realpath(paths["last"])
    saved_epoch = start_epoch if resumed_here else 0
    try:
        for epoch in range(start_epoch, opts.epochs):
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            net.train()
            loss_sum, count, step, lr = _train_epoch(net, train_loader, optimizer, scaler, opts, ctx,
                                                     epoch, step, total_steps,
                                                     _last_good(paths["last"], saved_epoch), progress)

            record = _epoch_record(model, val_loader, opts, ctx, class_names, progress, loss_sum, count,
                                   epoch, step, lr, t0)
            history.append(record)
            # Without a validation split the latest epoch counts as the best.
            improved = ("mean_dice" not in record or best is None or best.get("mean_dice") is None
                        or not record["mean_dice"] <= best["mean_dice"])
            if improved:
                best = {k: record[k] for k in ("epoch", "mean_dice", "mean_iou") if k in record}

            line = f"epoch {epoch + 1}/{opts.epochs}  train loss {record['train_loss']:.4f}"
            if "val_loss" in record:
                line += f"  val loss {record['val_loss']:.4f}  " + format_scores(record, class_names)
            log(line + f"  lr {lr:.2e}  {record['seconds']:.1f}s")

            # The ranks' weights are equal (DDP), so they all take this decision alike.
            broken = _first_non_finite(model)
            if broken:
                raise InputError(f"training diverged in epoch {epoch + 1}: weight {broken} is not finite, "
                               f"so this epoch was not saved; {_last_good(paths['last'], saved_epoch)}; "
                               f"try a lower --lr (now {opts.lr:g})")
            if ctx.is_main:
                _save_checkpoints(paths, model, optimizer, scaler, opts, ctx, config, epoch, step,
                                  history, best, improved)
            saved_epoch = epoch + 1  # before the slow plot: an interrupt there can resume this epoch
            if ctx.is_main:
                _save_records(paths, config, opts, history, best, class_names)
    except KeyboardInterrupt:
        resume = "resume with --resume" if saved_epoch else "no checkpoint was saved yet"
        raise Interrupted(f"interrupted at epoch {epoch + 1}; {resume}", epoch=epoch + 1) from None

    if start_epoch >= opts.epochs:
        log(f"{resume_path} already trained for {start_epoch} epochs (--epochs {opts.epochs}): nothing to do")
    else:
        hint = untrained_class_hint(history, step, num_classes)
        if hint:
            log(hint)
    return {"history": history, "best": best, "paths": paths, "model": model, "class_names": class_names,
            "dataset": dataset, "val_indices": val_idx, "context": ctx,
            "epochs_run": max(0, opts.epochs - start_epoch)}


def _save_checkpoints(paths, model, optimizer, scaler, opts, ctx, config, epoch, step, history, best,
                      improved) -> None:
    """best.pt (if the epoch improved), then last.pt, each atomically."""
    payload = {"config": config, "model": model.state_dict(), "epoch": epoch + 1,
               "history": history, "best": best}
    if improved:
        checkpoint.save(paths["best"], payload)
    payload["train"] = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                        "step": step, "rng": checkpoint.rng_state(), "args": _options_record(opts, config),
                        "world_size": ctx.world_size}
    checkpoint.save(paths["last"], payload)


def _options_record(opts: TrainOptions, config: dict) -> dict:
    """opts.record() with the class count the run trained (the built-in set has its own 4;
    opts.num_classes describes a --data folder and stays at its default otherwise)."""
    return dict(opts.record(), num_classes=len(config["class_names"]))


def _save_records(paths, config, opts, history, best, class_names) -> None:
    """metrics.json and curves.png, each atomically."""
    metrics = {"config": config, "options": _options_record(opts, config), "epochs": history, "best": best}
    atomic_write_text(paths["metrics"], json.dumps(_json_safe(metrics), indent=2) + "\n")
    plot_curves(history, class_names, paths["curves"])


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def _class_list(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"class names must be comma-separated, got {text!r}")
    return names  # duplicates are refused with the other options, in _check_options


def add_arguments(parser) -> None:
    d = TrainOptions()
    g = parser.add_argument_group("data")
    g.add_argument("--data", default="builtin", metavar="builtin|DIR",
                   help="'builtin' (synthetic shapes, no download) or a folder with images/ and masks/")
    g.add_argument("--samples", type=int, default=d.samples, help="size of the built-in set (default %(default)s)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="classes in the folder's masks, background included "
                        "(default 2, or the number of --class-names)")
    g.add_argument("--class-names", type=_class_list, default=None, metavar="A,B,...",
                   help="names for the folder's classes 0, 1, ...")
    g.add_argument("--val-split", type=float, default=d.val_split, help="validation fraction (default %(default)s)")
    g.add_argument("--image-size", type=parse_size, default=None, metavar="N|HxW",
                   help="resize every sample (built-in default 64)")
    g.add_argument("--crop", type=parse_size, default=None, metavar="N|HxW", help="random training crop")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips (default on)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    g = parser.add_argument_group("model and optimisation")
    g.add_argument("--base-channels", type=int, default=d.base_channels, help="(default %(default)s)")
    g.add_argument("--up-relu", action=argparse.BooleanOptionalAction, default=True,
                   help="ReLU after each skip concatenation (default on)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="(default %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (default %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="AdamW weight decay (default %(default)s)")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds the split, the weights, the augmentation and the shuffling (default 0)")
    g = parser.add_argument_group("hardware and output")
    g.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None, help="mixed precision")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--out", default=d.out, help="output folder (default %(default)s)")
    g.add_argument("--resume", nargs="?", const="last", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default OUT/last.pt) exactly where it stopped")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its checkpoints, metrics and curves)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm progress bars (default: when stderr is a terminal; elsewhere a plain line "
                        "every 30 s)")


def options_from_args(args) -> TrainOptions:
    if args.data == "builtin" and (args.num_classes is not None or args.class_names):
        raise InputError("--num-classes and --class-names describe a --data folder; the built-in "
                       f"set has its own classes ({', '.join(SYNTHETIC_CLASSES)})")
    num_classes = args.num_classes or (len(args.class_names) if args.class_names else 2)
    return TrainOptions(
        data=args.data, samples=args.samples, num_classes=num_classes, class_names=args.class_names,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        val_split=args.val_split, image_size=args.image_size, crop=args.crop, flip=args.flip,
        base_channels=args.base_channels, up_relu=args.up_relu, amp=args.amp,
        channels_last=args.channels_last, device=args.device, out=args.out, resume=args.resume,
        overwrite=args.overwrite, seed=args.seed, workers=args.workers, progress=args.progress,
        log=lambda s: print(s, flush=True))


@contextlib.contextmanager
def flush_denormals():
    """Subnormal floats make CPU convolutions and AdamW many times slower as weights and
    gradients shrink; flushing them to zero does not change what the model learns. Scoped, as
    the setting is process-wide (torch's default, restored afterwards, is off)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def run(args) -> int:
    with flush_denormals():
        result = fit(options_from_args(args))
    if result["context"].is_main:
        best = result["best"] or {}
        if best.get("mean_dice") is not None:
            print(f"best validation mean Dice {best['mean_dice']:.4f} (epoch {best['epoch']})")
        if result["epochs_run"]:
            print(f"wrote {result['paths']['last']}, {result['paths']['best']}, "
                  f"{result['paths']['metrics']}, {result['paths']['curves']}")
    return 0
