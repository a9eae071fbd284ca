"""Segmentation data: the built-in synthetic set and a folder of images/ + masks/.

A dataset yields (image, mask): image a uint8 tensor [3, H, W], mask a uint8 tensor [H, W] of
class indices. The model sees image / 255 (see `to_model_input`); nothing else is normalised, so
prediction needs no statistics from training. Files are read as viewers show them (EXIF
orientation applied) and images deeper than 8 bits are scaled to 8 bits (see `to_8_bit`), the
same way for training and prediction.

Folder layout:
    ROOT/images/NAME.(png|jpg|jpeg|bmp|tif|tiff|gif|webp)
    ROOT/masks/NAME.png  or  ROOT/masks/NAME_mask.png  (or .gif, as in the Carvana data)
Masks hold class indices 0..num_classes-1, as grayscale ("L") or palette ("P") images. Every
pair is read once up front, so a corrupt file, a size mismatch or an out-of-range class value
is reported (InputError, naming the file) before anything is trained or written.
"""
import argparse
import contextlib
import math
import os
import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from unet_fast.workflow.atomic_write import one_line
from unet_fast.errors import InputError
from unet_fast.workflow.metrics import check_class_names

SYNTHETIC_CLASSES = ("background", "disc", "square", "triangle")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
MASK_EXTENSIONS = (".png", ".gif", ".bmp", ".tif", ".tiff")


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 in [0, 1], the only preprocessing the model expects."""
    return images.float().div_(255)


# --------------------------------------------------------------------------------------------
# The built-in synthetic set
# --------------------------------------------------------------------------------------------

def _texture(rng: np.random.Generator, h: int, w: int, yy, xx, amplitude: float) -> np.ndarray:
    """Colour gratings plus blotchy low-frequency noise: [H, W, 3], zero mean-ish."""
    out = np.zeros((h, w, 3), np.float32)
    for _ in range(2):
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(4, 16)
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period) + phase)
        out += amplitude * wave[..., None] * rng.uniform(-1, 1, 3).astype(np.float32)
    coarse = rng.normal(0, amplitude, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    # Bilinear upsampling of the coarse noise through PIL, one channel at a time.
    blotches = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(coarse[..., c])).resize(
        (w + 16, h + 16), Image.BILINEAR))[8:8 + h, 8:8 + w] for c in range(3)], axis=-1)
    return out + blotches


def _shape_mask(kind: int, yy, xx, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    """Boolean mask of one shape: 1 disc, 2 square, 3 triangle (rotated by `angle`)."""
    dy, dx = yy - cy, xx - cx
    if kind == 1:
        return dy * dy + dx * dx <= r * r
    c, s = math.cos(angle), math.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    if kind == 2:
        half = r * 0.85  # about the disc's area, so size does not give the class away
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    # Equilateral triangle with circumradius 1.25 r: inside all three edges' half-planes.
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        a = angle + k * 2 * math.pi / 3
        inside &= (dx * math.cos(a) + dy * math.sin(a)) <= 0.625 * r
    return inside


def synthetic_sample(seed: int, height: int, width: int, index: int = 0,
                     radius: Tuple[float, float] = (8.0, 14.0),
                     shapes: Tuple[int, int] = (1, 4)) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic image (uint8 [H, W, 3]) and mask (uint8 [H, W]), a pure function of its args.

    Discs, squares and triangles of random colour, size (radius in pixels) and rotation over a
    textured, noisy background. Colour never tells the class: the model has to learn shapes.
    Shapes lie inside the image and apart from each other (up to 30 tries each), and each
    shape's colour differs clearly from the background's, so every pixel's class is decidable.
    """
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = rng.uniform(0.15, 0.85, 3).astype(np.float32)
    image = background + _texture(rng, height, width, yy, xx, 0.08)
    mask = np.zeros((height, width), np.uint8)
    taken = np.zeros((height, width), bool)
    for _ in range(int(rng.integers(shapes[0], shapes[1] + 1))):
        kind = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        for _try in range(30):
            r = rng.uniform(*radius)
            margin = min(r, (min(height, width) - 1) / 2)
            cy, cx = rng.uniform(margin, height - margin), rng.uniform(margin, width - margin)
            inside = _shape_mask(kind, yy, xx, cy, cx, r, rng.uniform(0, 2 * math.pi))
            if inside.any() and not (inside & taken).any():
                break
        else:
            continue
        # Keep a 2-pixel gap around each shape free for the next ones.
        taken |= _shape_mask(1, yy, xx, cy, cx, 1.3 * r + 2, 0.0)
        while True:
            colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
            if np.abs(colour - background).max() > 0.35:
                break
        shade = colour + _texture(rng, height, width, yy, xx, 0.05)
        image[inside] = shade[inside]
        mask[inside] = kind
    image += rng.normal(0, 0.05, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), mask


class SyntheticSegmentation(torch.utils.data.Dataset):
    """`count` synthetic samples of size HxW from `seed`, generated once and kept in memory."""

    def __init__(self, count: int, size: Tuple[int, int] = (64, 64), seed: int = 0, first_index: int = 0):
        if count < 1:
            raise InputError(f"the built-in data set needs at least 1 sample, got {count}")
        self.class_names = list(SYNTHETIC_CLASSES)
        self.seed, self.size = seed, tuple(size)
        pairs = [synthetic_sample(seed, size[0], size[1], first_index + i) for i in range(count)]
        self.images = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).contiguous()
        self.masks = torch.from_numpy(np.stack([p[1] for p in pairs]))
        self.names = [f"synthetic_{first_index + i:05d}" for i in range(count)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.masks[index]

    def sizes(self) -> List[Tuple[int, int]]:
        return [self.size] * len(self)


# --------------------------------------------------------------------------------------------
# A folder of images/ and masks/
# --------------------------------------------------------------------------------------------

# PIL's single-channel modes deeper than 8 bits: 16-bit unsigned integers, 32-bit signed
# integers (how PIL opens some 16-bit PNGs and TIFFs) and 32-bit floats.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
INTEGER_MODES = SIXTEEN_BIT_MODES + ("I",)
FLOAT_MODES = ("F",)


def to_8_bit(image: Image.Image, what: str) -> Image.Image:
    """`image` scaled to 8 bits ("L") if its one channel is deeper; any other mode as it is.

    PIL's convert("L"/"RGB") clips such values at 255 instead of scaling them, which turns a
    16-bit picture white. The rules, so that training and prediction read a file alike:
    integer modes (I;16*, I) are 16-bit levels, value / 257 (65535 -> 255; a 16-bit copy of an
    8-bit image, value x 257, reads back exactly), and I values outside 0..65535 are an error;
    F (floats, in no fixed unit: depth in metres, intensities) is min-max scaled per image
    (a constant image reads as 0), and NaN or Inf is an error. `what` names the image in errors.
    """
    if image.mode not in INTEGER_MODES + FLOAT_MODES:
        return image
    values = np.asarray(image).astype(np.float64)
    if values.size == 0:
        return Image.fromarray(values.astype(np.uint8))
    low, high = values.min(), values.max()
    if image.mode in FLOAT_MODES:
        if not np.isfinite(values).all():
            raise InputError(f"{what} holds NaN or infinite values; a float image must be finite")
        scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    else:
        if low < 0 or high > 65535:
            raise InputError(f"{what} holds values from {low:.0f} to {high:.0f}; integer images are "
                           "read as 16-bit (0..65535): convert it to 8 or 16 bits")
        scaled = values / 257
    return Image.fromarray(np.rint(scaled).astype(np.uint8))


# PIL refuses to open images of more pixels than this (a "decompression bomb" guard: a small
# file can declare 100000x100000 pixels and take all memory when decoded). The variable raises
# or lowers the limit for genuine huge images.
PIXEL_LIMIT_VARIABLE = "UNET_FAST_MAX_IMAGE_PIXELS"


def pixel_limit() -> Optional[int]:
    """The largest image, in pixels, that is read (None: no limit, if PIL's was removed)."""
    text = os.environ.get(PIXEL_LIMIT_VARIABLE, "").strip()
    if not text:
        return Image.MAX_IMAGE_PIXELS
    # ASCII digits only: str.isdigit() also takes '١٠٠' (which int() reads as 100) and '²' (which it
    # refuses), so a limit nobody meant would end up blamed on the image.
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise InputError(f"{PIXEL_LIMIT_VARIABLE} must be a positive whole number of pixels written with "
                         f"the digits 0-9, got {text!r}")
    return int(text)


@contextlib.contextmanager
def _opened(path, what: str):
    """Image.open(path) under the pixel limit; a file past it is InputError naming the file,
    its size, the limit and the way to raise it (PIL warns between 1x and 2x its limit and
    fails beyond; here both are errors, before any pixel is decoded)."""
    limit = pixel_limit()
    saved = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = limit
            try:
                im = Image.open(path)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise InputError(f"{what} {path} is {_declared_size(path)}, more than the limit of "
                                 f"{limit:,} pixels that guards against decompression bombs; if it "
                                 f"is genuine, raise the limit with {PIXEL_LIMIT_VARIABLE}=PIXELS") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    with im:
        yield im


def _declared_size(path) -> str:
    """The width x height a file's header declares (read without the pixel limit, no decoding)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return f"{im.width}x{im.height} ({im.width * im.height:,} pixels)"
    except Exception:
        return "too large"
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_image(path, mode: str = "RGB") -> Image.Image:
    """Open and fully decode an image (so a truncated file fails here), upright as its EXIF
    orientation says, deeper than 8 bits scaled by `to_8_bit`, and converted to `mode`."""
    if not os.path.exists(path):
        raise InputError(f"image {path} not found")
    try:
        with _opened(path, "image") as im:
            im.load()
            return to_8_bit(ImageOps.exif_transpose(im), f"image {path}").convert(mode)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot read image {path}: {one_line(e)}") from e


# Formats that store pixels approximately: decoded, a mask's class boundaries come back as
# ramps of in-between values (and a 0/1 mask as 0, 1, 2, ...), which would train on wrong labels.
LOSSY_FORMATS = ("JPEG", "MPO", "JPEG2000", "WEBP")
LOSSY_TIFF_COMPRESSIONS = ("jpeg", "tiff_jpeg", "webp")


def _check_lossless(path, opened: Image.Image) -> None:
    lossy = opened.format in LOSSY_FORMATS
    if opened.format == "TIFF" and opened.info.get("compression") in LOSSY_TIFF_COMPRESSIONS:
        lossy = True
    if lossy:
        kind = opened.format + (" (JPEG-compressed)" if opened.format == "TIFF" else "")
        raise InputError(f"mask {path} is stored as {kind}, whatever its name says: lossy "
                         "compression changes class indices at every edge; save masks as PNG "
                         "(or GIF, BMP, uncompressed TIFF) from the original labels")


def mask_array(path) -> np.ndarray:
    """A mask file's class indices as an integer array [H, W], upright as its EXIF orientation
    says (the same rule as its image's, so a pair rotated alike still matches). A mask stored in
    a lossy format (a JPEG renamed .png) is refused: its values are not class indices."""
    try:
        with _opened(path, "mask") as opened:
            _check_lossless(path, opened)
            opened.load()
            im = ImageOps.exif_transpose(opened)
            if im.mode in ("L", "P") + INTEGER_MODES:
                return np.asarray(im)
            if im.mode == "1":
                return np.asarray(im).astype(np.uint8)
            if im.mode in ("LA", "PA"):
                return np.asarray(im.getchannel(0))
            if im.mode in ("RGB", "RGBA"):
                rgb = np.asarray(im.convert("RGB"))
                if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                    return rgb[..., 0].copy()  # a grayscale mask saved as RGB
                raise InputError(f"mask {path} is a colour image; masks must hold class indices "
                               "(grayscale or palette PNG)")
            raise InputError(f"mask {path} has unsupported image mode {im.mode}")
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot read mask {path}: {one_line(e)}") from e


def check_mask_values(path, mask: np.ndarray, num_classes: int) -> None:
    if mask.size == 0 or (int(mask.min()) >= 0 and int(mask.max()) < num_classes):
        return
    found = np.unique(mask)
    shown = ", ".join(str(v) for v in found[:12]) + (", ..." if len(found) > 12 else "")
    raise InputError(f"mask {path} holds values outside [0, {num_classes}) (values found: {shown}); "
                   f"masks must hold class indices 0..{num_classes - 1}")


def _listdir(folder: str, what: str) -> List[str]:
    if not os.path.isdir(folder):
        raise InputError(f"{what} folder {folder} not found")
    try:
        return sorted(os.listdir(folder))
    except OSError as e:
        raise InputError(f"cannot read folder {folder}: {one_line(e)}") from e


def find_pairs(root: str) -> List[Tuple[str, str]]:
    """(image path, mask path) for every image in ROOT/images, matched by stem (or stem_mask)."""
    if not os.path.isdir(root):
        raise InputError(f"data folder {root} not found")
    image_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
    images = [f for f in _listdir(image_dir, "images") if f.lower().endswith(IMAGE_EXTENSIONS)]
    masks = {}
    for f in _listdir(mask_dir, "masks"):
        stem, ext = os.path.splitext(f)
        if ext.lower() in MASK_EXTENSIONS:
            masks.setdefault(stem, []).append(f)
    if not images:
        raise InputError(f"no images in {image_dir} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    pairs, stems = [], {}
    for f in images:
        stem = os.path.splitext(f)[0]
        if stem in stems:
            raise InputError(f"two images share the name {stem!r}: {stems[stem]} and {f} in {image_dir}")
        stems[stem] = f
        found = masks.get(stem, []) + masks.get(stem + "_mask", [])
        if not found:
            raise InputError(f"image {os.path.join(image_dir, f)} has no mask "
                           f"(looked for {stem}.png or {stem}_mask.png in {mask_dir})")
        if len(found) > 1:
            raise InputError(f"image {os.path.join(image_dir, f)} has several masks: {', '.join(found)}")
        pairs.append((os.path.join(image_dir, f), os.path.join(mask_dir, found[0])))
    return pairs


class FolderSegmentation(torch.utils.data.Dataset):
    """ROOT/images + ROOT/masks, checked up front; samples resized to `size` (H, W) if given."""

    def __init__(self, root: str, num_classes: int, class_names: Optional[Sequence[str]] = None,
                 size: Optional[Tuple[int, int]] = None, progress: Optional[bool] = None):
        from unet_fast.workflow.progress import progress as progress_bar

        self.root, self.size = root, tuple(size) if size else None
        self.class_names = (check_class_names(class_names, num_classes, "--class-names") if class_names
                            else [f"class{i}" for i in range(num_classes)])
        self.pairs = find_pairs(root)
        self._sizes = []
        for image_path, mask_path in progress_bar(self.pairs, enabled=progress, desc="checking data",
                                                  unit="image", leave=False):
            image = read_image(image_path)
            mask = mask_array(mask_path)
            if mask.shape != (image.height, image.width):
                raise InputError(f"image {image_path} is {image.width}x{image.height} but its mask "
                               f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}")
            check_mask_values(mask_path, mask, num_classes)
            self._sizes.append((image.height, image.width))
        self.names = [os.path.splitext(os.path.basename(p[0]))[0] for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def sizes(self) -> List[Tuple[int, int]]:
        """(H, W) of each sample as the model will see it."""
        return [self.size] * len(self) if self.size else list(self._sizes)

    def __getitem__(self, index):
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        mask = Image.fromarray(mask_array(mask_path).astype(np.uint8 if len(self.class_names) <= 256 else np.int32))
        if self.size:
            image = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
            mask = mask.resize((self.size[1], self.size[0]), Image.NEAREST)
        image = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()
        mask = torch.from_numpy(np.asarray(mask).copy())
        return image, mask


# --------------------------------------------------------------------------------------------
# Splitting and training-time augmentation
# --------------------------------------------------------------------------------------------

def split_indices(count: int, val_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """A seeded shuffle cut into (train, validation); at least one training sample."""
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-split must be in [0, 1), got {val_fraction}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(int(round(count * val_fraction)), count - 1)
    if val_fraction > 0 and n_val == 0 and count > 1:
        n_val = 1
    return sorted(order[n_val:]), sorted(order[:n_val])


class Augmented(torch.utils.data.Dataset):
    """Random crop (if `crop`) and horizontal flip (if `flip`) of `dataset[indices]`.

    The randomness of sample i in epoch e comes from a generator seeded with (seed, e, i) alone,
    so it does not depend on worker processes, on the rank, or on whether the run was resumed:
    a resumed run sees exactly the crops an unbroken one would have.
    """

    def __init__(self, dataset, indices: Sequence[int], crop: Optional[Tuple[int, int]] = None,
                 flip: bool = False, seed: int = 0):
        self.dataset, self.indices = dataset, list(indices)
        self.crop, self.flip, self.seed, self.epoch = crop, flip, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        image, mask = self.dataset[self.indices[i]]
        if not (self.crop or self.flip):
            return image, mask
        rng = np.random.default_rng([self.seed, self.epoch, self.indices[i]])
        if self.crop:
            ch, cw = self.crop
            h, w = mask.shape
            if ch > h or cw > w:
                raise InputError(f"--crop {ch}x{cw} is larger than sample {self.indices[i]} ({h}x{w})")
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            image, mask = image[:, top:top + ch, left:left + cw], mask[top:top + ch, left:left + cw]
        if self.flip and rng.random() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image.contiguous(), mask.contiguous()


def parse_size(text: str) -> Tuple[int, int]:
    """'64' -> (64, 64); '96x128' -> (96, 128) as (H, W). An argparse type: a bad size is a
    usage error (ArgumentTypeError), reported by argparse with exit code 2."""
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or HxW with positive integers, got {text!r}")
    return parts[0], parts[1]
