"""Class colours, mask PNGs and overlays (mask colours laid over the image).

A mask PNG is a palette ("P") image: its pixel values are the class indices, so
np.array(Image.open(path)) gives the mask back, while image viewers show the class colours.
"""
from typing import Sequence

import numpy as np
from PIL import Image

from unet_fast.workflow.atomic_write import atomic_write

# Background black; then distinct, saturated colours (tab10 order, most visible first).
_BASE = [(0, 0, 0), (255, 56, 56), (56, 201, 56), (52, 120, 255), (255, 205, 0), (200, 80, 255),
         (0, 215, 215), (255, 140, 30), (255, 105, 200), (140, 90, 40), (150, 150, 150)]


def palette(num_classes: int) -> np.ndarray:
    """uint8 [num_classes, 3] colours; beyond the fixed ones, a deterministic spread of hues."""
    colours = list(_BASE[:num_classes])
    rng = np.random.default_rng(0)
    while len(colours) < num_classes:
        colours.append(tuple(int(v) for v in rng.integers(40, 256, 3)))
    return np.array(colours, np.uint8)


def mask_image(mask: np.ndarray, num_classes: int) -> Image.Image:
    """A class-index mask as a palette image (or 16-bit grayscale beyond 256 classes)."""
    if num_classes > 256:
        return Image.fromarray(mask.astype(np.uint16))
    im = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask, np.uint8).tobytes())
    flat = np.zeros((256, 3), np.uint8)
    flat[:num_classes] = palette(num_classes)
    im.putpalette(flat.reshape(-1).tolist())
    return im


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.5) -> np.ndarray:
    """uint8 [H, W, 3]: each non-background class tinted with its colour, its outline drawn solid.

    Background pixels keep the image as it is, so the overlay reads like the lesson's figure of
    a car with its mask laid over it.
    """
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    colours = palette(max(num_classes, int(mask.max()) + 1 if mask.size else 1)).astype(np.float32)
    tint = colours[mask]
    fg = (mask > 0)[..., None]
    out = np.where(fg, (1 - alpha) * image.astype(np.float32) + alpha * tint, image.astype(np.float32))
    # Outline: pixels whose right or lower neighbour has another class.
    edge = np.zeros(mask.shape, bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    edge &= mask > 0
    out[edge] = tint[edge]
    return (out + 0.5).astype(np.uint8)


def save_png(path, image: Image.Image) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_mask_and_overlay(mask_path, overlay_path, image: np.ndarray, mask: np.ndarray,
                          class_names: Sequence[str], alpha: float = 0.5) -> None:
    save_png(mask_path, mask_image(mask, len(class_names)))
    save_png(overlay_path, Image.fromarray(overlay(image, mask, len(class_names), alpha)))
