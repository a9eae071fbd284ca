"""Predict segmentation masks with a trained checkpoint; writes mask and overlay PNGs per image.

For each IMAGE, OUT/NAME_mask.png (palette PNG holding the class indices) and
OUT/NAME_overlay.png (each class's outline drawn over the image at its own size, as displayed:
EXIF orientation applied, with a legend strip naming the classes below it). Files already in
OUT are never replaced without --overwrite.

  unet-fast predict runs/demo/best.pt a.png b.jpg --out predictions
  unet-fast predict CHECKPOINT huge.tif --tile 512 --overlap 128 --out predictions

--tile runs overlapping TILExTILE windows and blends their logits, for images too large for one
pass. With --overlap of at least 2 * 51 + 8 = 110 pixels (the model's receptive-field radius is
51), the result equals a single pass over the whole image up to float rounding.
"""
import os
import sys
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from unet_fast.workflow import checkpoint
from unet_fast.workflow.atomic_write import prepare_output_dir, refuse_to_overwrite
from unet_fast.workflow.data import read_image, to_8_bit
from unet_fast.workflow.distributed import available_memory, resolve_device
from unet_fast.errors import InputError
from unet_fast.workflow.overlay import save_mask_and_overlay

# How far (in pixels) an output pixel of the 3-pooling U-Net sees: measured as the largest
# extent of d(output pixel)/d(input) over all 8 pooling phases. A tile's logits are exact
# wherever the tile extends at least this far on every side that is not the image's border.
CONTEXT = 51
# Tile origins stay on multiples of 8, the pooling grid, so a tile sees the same grid as the
# whole image (the model is shift-equivariant only for shifts by multiples of 8).
ALIGN = 8
MIN_RAMP = 8
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def image_tensor(image, in_channels: int = 3) -> torch.Tensor:
    """A float32 [C, H, W] tensor in [0, 1] from any image form `predict` accepts."""
    mode = "RGB" if in_channels == 3 else "L"
    if in_channels not in (1, 3):
        raise ValueError(f"predict handles models with 1 or 3 input channels, not {in_channels}")
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image, mode)
    if isinstance(image, Image.Image):
        image = np.asarray(to_8_bit(image, "the image").convert(mode))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"a numpy image must be uint8 [H, W, {in_channels}], got dtype {image.dtype}")
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[2] != in_channels:
            raise ValueError(f"a numpy image must be uint8 [H, W, {in_channels}], got shape {image.shape}")
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255)  # a writable copy
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != in_channels:
            raise ValueError(f"a tensor image must be [{in_channels}, H, W], got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float().div_(255)
        if not image.is_floating_point():
            raise TypeError(f"a tensor image must be float in [0, 1] or uint8, got {image.dtype}")
        return image.float()
    raise TypeError("image must be a path, a PIL image, a uint8 numpy array [H, W, 3] or a "
                    f"float tensor [3, H, W]; got {type(image).__name__}")


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _forward(model, batch: torch.Tensor, amp: Optional[str]) -> torch.Tensor:
    device = _device_of(model)
    with torch.no_grad(), torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.float32),
                                         enabled=amp is not None):
        return model(batch.to(device)).float()


def tile_starts(length: int, tile: int, stride: int) -> List[int]:
    """Window origins 0, stride, 2*stride, ... until a window reaches the end (the last one may
    be cut short by the border; the model takes any size)."""
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(starts[-1] + stride)
    return starts


def blend_margin(overlap: int) -> int:
    """Pixels next to a tile's inner edge that get weight 0: the model's context, where the
    overlap allows it, keeping a linear ramp of at least MIN_RAMP pixels between neighbours."""
    return max(0, min(CONTEXT, (overlap - MIN_RAMP) // 2))


def _ramp(length: int, inner_start: bool, inner_end: bool, overlap: int) -> torch.Tensor:
    """1-D blend weights of one tile: 0 for `margin` pixels at an inner edge, then a linear ramp
    to 1. For two neighbours overlapping by `overlap`, their weights sum to 1 across the overlap."""
    m = blend_margin(overlap)
    d = torch.arange(length, dtype=torch.float32)
    w = torch.ones(length)
    slope = 1.0 / (overlap - 2 * m + 1)
    if inner_start:
        w = torch.minimum(w, ((d - m + 1) * slope).clamp(0, 1))
    if inner_end:
        w = torch.minimum(w, ((length - 1 - d - m + 1) * slope).clamp(0, 1))
    return w


def default_overlap(tile: int) -> int:
    """128 pixels (enough for exact tiling), or half the tile for tiles too small for that."""
    return 128 if tile >= 128 + 2 * ALIGN else tile // 2


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_tiling(tile: int, overlap: int, name: Callable[[str], str] = str) -> int:
    """The stride between tiles (a multiple of 8), or InputError for an unusable tile/overlap
    (`name` spells an argument as the caller's user knows it: `tile`, or `--tile` on the CLI)."""
    if not _is_integer(tile) or tile < 2 * ALIGN:
        raise InputError(f"{name('tile')} must be an integer of at least {2 * ALIGN} pixels, got {tile!r}")
    if not _is_integer(overlap) or overlap < 0:
        raise InputError(f"{name('overlap')} must be an integer >= 0, got {overlap!r}")
    stride = (tile - overlap) // ALIGN * ALIGN
    if stride < ALIGN:
        raise InputError(f"{name('overlap')} {overlap} leaves tiles of {tile} pixels no room to "
                       f"advance: it must be at most {tile - ALIGN}")
    return stride


def check_options(tile: Optional[int], overlap: Optional[int], batch_size: int, amp: Optional[str],
                  name: Callable[[str], str] = str) -> None:
    """InputError naming the argument for any prediction setting that cannot be used as given.

    Checked before any image is read, so `predict(model, x, tile=0)` is an error rather than a
    silent single pass, and `amp="bf17"` an error rather than full precision."""
    if tile is not None:
        check_tiling(tile, default_overlap(tile) if overlap is None else overlap, name)
    elif overlap is not None:
        raise InputError(f"{name('overlap')} is the overlap between tiles: it needs {name('tile')}")
    if not _is_integer(batch_size) or batch_size < 1:
        raise InputError(f"{name('batch_size')} must be an integer >= 1, got {batch_size!r}")
    if amp is not None and amp not in AMP_DTYPES:
        raise InputError(f"{name('amp')} must be None, 'bf16' or 'fp16', got {amp!r}")


def option_flag(name: str) -> str:
    """`batch_size` -> `--batch-size`: how the command line spells an argument in errors."""
    return "--" + name.replace("_", "-")


def tiled_logits(model, image: torch.Tensor, tile: int, overlap: Optional[int] = None,
                 batch_size: int = 4, amp: Optional[str] = None) -> torch.Tensor:
    """float32 logits [K, H, W] of `image` [C, H, W] from overlapping tiles, blended."""
    if overlap is None:
        overlap = default_overlap(tile)
    stride = check_tiling(tile, overlap)
    overlap = tile - stride  # the stride was rounded down to the pooling grid
    _, height, width = image.shape
    windows = [(y, x) for y in tile_starts(height, tile, stride) for x in tile_starts(width, tile, stride)]
    out = None
    weight = torch.zeros(height, width)
    # Tiles of one shape go through the model together.
    shapes = {}
    for y, x in windows:
        shapes.setdefault((min(tile, height - y), min(tile, width - x)), []).append((y, x))
    for (th, tw), group in shapes.items():
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            batch = torch.stack([image[:, y:y + th, x:x + tw] for y, x in chunk])
            logits = _forward(model, batch, amp).cpu()
            if out is None:
                out = torch.zeros(logits.shape[1], height, width)
            for (y, x), lg in zip(chunk, logits):
                w = (_ramp(th, y > 0, y + th < height, overlap)[:, None]
                     * _ramp(tw, x > 0, x + tw < width, overlap)[None, :])
                out[:, y:y + th, x:x + tw] += lg * w
                weight[y:y + th, x:x + tw] += w
    return out / weight


def inference_bytes(height: int, width: int, base_channels: int, classes: int, amp: bool = False) -> int:
    """A lower bound on the memory of one forward pass without gradients, for one image: when
    the last decoder block's first convolution runs, the padded input (3 channels, float32),
    the first skip (base channels), the concatenation (2 x base) and the convolution's output
    (base) are all alive at full resolution (later, the logits beside two base-wide tensors).
    2 bytes per activation under autocast, else 4."""
    pixels = (-(-height // 8) * 8) * (-(-width // 8) * 8)
    b = base_channels
    return pixels * (12 + max(4 * b, 2 * b + classes) * (2 if amp else 4))


def check_fits(model, height: int, width: int, what: str, suggestion: str = "--tile 512",
               amp: Optional[str] = None) -> None:
    """InputError, before anything is allocated, when one pass over an image this size cannot
    fit the model's device; tiling keeps the memory at a tile's."""
    have = available_memory(_device_of(model))
    need = inference_bytes(height, width, model.base_channels, model.out_channels, amp is not None)
    if have is not None and need > have:
        raise InputError(f"{what} is {width}x{height}: predicting it in one pass needs at least "
                         f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB "
                         f"{_device_of(model)} has; predict it in tiles with {suggestion}")


def predict_logits(model, image, *, tile: Optional[int] = None, overlap: Optional[int] = None,
                   batch_size: int = 4, amp: Optional[str] = None) -> torch.Tensor:
    """float32 logits [K, H, W] on the CPU for one image (any form `predict` accepts)."""
    check_options(tile, overlap, batch_size, amp)
    x = image_tensor(image, model.in_channels)
    if tile is not None:
        return tiled_logits(model, x, tile, overlap, batch_size, amp)
    check_fits(model, x.shape[1], x.shape[2], "the image", suggestion="tile=512", amp=amp)
    return _forward(model, x[None], amp)[0].cpu()


def predict(model, image, *, tile: Optional[int] = None, overlap: Optional[int] = None,
            batch_size: int = 4, amp: Optional[str] = None) -> np.ndarray:
    """The class-index mask (uint8 numpy [H, W]) that `model` predicts for `image`.

    `image` may be a file path, a PIL image, a uint8 numpy array [H, W, 3] or a float tensor
    [3, H, W] with values in [0, 1] (what the model was trained on: uint8 pixels / 255); any H, W.
    The model runs on its own device, in eval mode, without gradients. tile=N runs overlapping
    NxN windows (`overlap` pixels, `batch_size` windows at a time) and blends them, for images
    too large for one pass (overlap defaults to 128, or tile // 2 for tiles under 144; from
    2 * 51 + 8 = 110 up the result equals a single pass); amp="bf16" or "fp16" runs under autocast.
    A path is read as `unet-fast predict` reads it (EXIF orientation applied, 16-bit and float
    images scaled to 8 bits); a PIL image is taken as it is, scaled the same way. An unusable
    tile, overlap, batch_size or amp raises unet_fast.errors.InputError naming the argument.
    """
    was_training = model.training
    model.eval()
    try:
        logits = predict_logits(model, image, tile=tile, overlap=overlap, batch_size=batch_size, amp=amp)
    finally:
        model.train(was_training)
    mask = logits.argmax(0).numpy()
    return mask.astype(np.uint8 if logits.shape[0] <= 256 else np.int32)


def predict_many(model, images: Sequence[torch.Tensor], batch_size: int = 4,
                 amp: Optional[str] = None) -> Iterable[Tuple[int, np.ndarray]]:
    """(index, mask) for tensors [C, H, W], running same-size images as one batch."""
    by_size = {}
    for i, x in enumerate(images):
        by_size.setdefault(tuple(x.shape), []).append(i)
    for indices in by_size.values():
        for k in range(0, len(indices), batch_size):
            chunk = indices[k:k + batch_size]
            logits = _forward(model, torch.stack([images[i] for i in chunk]), amp)
            for i, lg in zip(chunk, logits.argmax(1).cpu().numpy()):
                yield i, lg.astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint from `unet-fast train` or `demo` (best.pt)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="images of any size")
    parser.add_argument("--out", required=True, help="output folder for NAME_mask.png and NAME_overlay.png")
    parser.add_argument("--tile", type=int, default=None, metavar="SIZE",
                        help="sliding-window inference with SIZExSIZE tiles (for very large images)")
    parser.add_argument("--overlap", type=int, default=None, metavar="PIXELS",
                        help="tile overlap, blended (default 128, or SIZE/2 for tiles under 144; "
                             ">= 110 makes tiling exact)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="images (or tiles) per forward pass (default %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None, help="mixed precision")
    parser.add_argument("--alpha", type=float, default=0.0,
                        help="opacity of each class's colour inside its outline in NAME_overlay.png, 0 to 1 "
                             "(default %(default)s: outlines only)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace NAME_mask.png / NAME_overlay.png files already in --out")


def _output_paths(out: str, images: Sequence[str]) -> List[Tuple[str, str]]:
    """(OUT/NAME_mask.png, OUT/NAME_overlay.png) for each input; InputError if two inputs share a
    NAME, or if an output would replace one of the inputs (which --overwrite does not allow)."""
    paths, seen = [], {}
    inputs = {os.path.realpath(p) for p in images}
    for p in images:
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in seen:
            raise InputError(f"inputs {seen[stem]} and {p} would both write {stem}_mask.png; "
                           "rename one or predict them into separate folders")
        seen[stem] = p
        pair = (os.path.join(out, f"{stem}_mask.png"), os.path.join(out, f"{stem}_overlay.png"))
        for written in pair:
            if os.path.realpath(written) in inputs:
                raise InputError(f"the output {written} would replace an input image; "
                               "predict into another --out folder")
        paths.append(pair)
    return paths


def _check_alpha(alpha: float) -> None:
    if not 0 <= alpha <= 1:  # NaN fails too
        raise InputError(f"--alpha is the opacity inside the overlay's outlines and must be in [0, 1], got {alpha}")


def run(args) -> int:
    # Everything that can fail on the user's input is checked before anything is written.
    ckpt = checkpoint.read(args.checkpoint)
    model = checkpoint.build_model(ckpt, args.checkpoint)
    class_names = model.class_names
    if model.in_channels not in (1, 3):
        raise InputError(f"checkpoint {args.checkpoint} expects {model.in_channels}-channel images; "
                       "predict reads RGB or grayscale files")
    check_options(args.tile, args.overlap, args.batch_size, args.amp, name=option_flag)
    if args.tile is not None and args.overlap is None:
        args.overlap = default_overlap(args.tile)
    _check_alpha(args.alpha)
    device = resolve_device(args.device)
    outputs = _output_paths(args.out, args.images)
    if not args.overwrite:
        # e.g. --out DATA/masks would replace the ground truth, named like the loader's NAME_mask.png
        refuse_to_overwrite([p for pair in outputs for p in pair], "pass --overwrite to replace it")
    mode = "RGB" if model.in_channels == 3 else "L"
    model.to(device)
    for path in args.images:
        image = read_image(path, mode)  # decodes fully: a corrupt file stops us before any output
        if args.tile is None:
            check_fits(model, image.height, image.width, f"image {path}", amp=args.amp)
    prepare_output_dir(args.out)
    model.to(device).eval()

    def write(i, image, mask):
        mask_path, overlay_path = outputs[i]
        save_mask_and_overlay(mask_path, overlay_path, np.asarray(image.convert("RGB")), mask,
                              class_names, args.alpha)
        counts = np.bincount(mask.reshape(-1), minlength=len(class_names)) / max(1, mask.size)
        shares = ", ".join(f"{class_names[k]} {100 * c:.1f}%" for k, c in enumerate(counts) if c > 0)
        _say(f"{args.images[i]} ({image.width}x{image.height}): {shares} -> {mask_path}, {overlay_path}")

    if args.tile is not None:
        for i, path in enumerate(args.images):
            image = read_image(path, mode)
            write(i, image, predict(model, image, tile=args.tile, overlap=args.overlap,
                                    batch_size=args.batch_size, amp=args.amp))
    else:
        # Read a batch's worth of images at a time; same-size images share a forward pass.
        for start in range(0, len(args.images), args.batch_size * 4):
            idx = list(range(start, min(len(args.images), start + args.batch_size * 4)))
            pil = {i: read_image(args.images[i], mode) for i in idx}
            tensors = [image_tensor(pil[i], model.in_channels) for i in idx]
            for j, mask in predict_many(model, tensors, args.batch_size, args.amp):
                write(idx[j], pil[idx[j]], mask)
    _say(f"wrote {2 * len(args.images)} PNGs (masks and overlays) to {args.out}")
    return 0


def _say(line: str) -> None:
    """Print a progress line; if the reader went away (`predict ... | head -1`), keep predicting
    quietly: the masks are what the user asked for, the lines only report them."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
