"""Class colours, mask PNGs, overlays (class outlines over the image, with a legend) and the
solid-mask and error pictures of the demo's prediction grid.

A mask PNG is a palette ("P") image: its pixel values are the class indices, so
np.array(Image.open(path)) gives the mask back, while image viewers show the class colours.

An overlay PNG is the image at its own size in the top-left corner, each non-background class's
outline drawn over it in the class colour (solid, with a black edge on the background side, so
a class stays visible whatever colour the object and its surroundings have), and below it a
legend strip naming each class next to a swatch of its colour. The strip is as wide as the
image, or wider when the image is too narrow for the class names.
"""
import colorsys
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unet_fast.workflow.atomic_write import atomic_write

# Background black (drawn as no colour over the image); then the saturated corners of the RGB cube,
# then its edges' midpoints. Pictures, ours and users', rarely hold such pure colours (the built-in
# shapes draw theirs uniformly from the whole cube and the backgrounds stay inside 0.15..0.85), so
# an outline stands out against the object it surrounds. Red comes late: it marks errors.
_BASE = [(0, 0, 0),
         (255, 0, 255), (0, 255, 255), (255, 255, 0), (0, 255, 0), (0, 0, 255), (255, 0, 0),
         (255, 128, 0), (128, 0, 255), (0, 128, 255), (0, 255, 128), (255, 0, 128), (128, 255, 0),
         (255, 255, 255)]
ERROR_COLOUR = (255, 0, 0)      # wrong pixels in the error picture, over a grey copy of the image
_LEGEND_PAPER = (255, 255, 255)
_LEGEND_INK = (32, 32, 32)
_SWATCH_EDGE = (96, 96, 96)     # frames each swatch so black and white swatches show on the strip


def palette(num_classes: int) -> np.ndarray:
    """uint8 [num_classes, 3] colours; beyond the fixed ones, fully saturated hues spread by the
    golden ratio (deterministic, each new hue far from the last)."""
    colours = list(_BASE[:num_classes])
    k = 0
    while len(colours) < num_classes:
        hue = (0.13 + k * 0.618033988749895) % 1.0
        value = 1.0 if k % 2 == 0 else 0.75
        colours.append(tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 1.0, value)))
        k += 1
    return np.array(colours, np.uint8).reshape(num_classes, 3)


def default_class_names(num_classes: int) -> list:
    """"background" then "class 1" .. "class N-1": the names used when none were given."""
    return ["background"] + [f"class {k}" for k in range(1, num_classes)]


def mask_image(mask: np.ndarray, num_classes: int) -> Image.Image:
    """A class-index mask as a palette image (or 16-bit grayscale beyond 256 classes)."""
    if num_classes > 256:
        return Image.fromarray(mask.astype(np.uint16))
    im = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask, np.uint8).tobytes())
    flat = np.zeros((256, 3), np.uint8)
    flat[:num_classes] = palette(num_classes)
    im.putpalette(flat.reshape(-1).tolist())
    return im


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.uint8)
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def _colours_for(mask: np.ndarray, num_classes: int) -> np.ndarray:
    return palette(max(num_classes, int(mask.max()) + 1 if mask.size else 1))


def solid_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """uint8 [H, W, 3]: every pixel in its class colour (background black)."""
    return _colours_for(mask, num_classes)[mask]


def outline_width(height: int, width: int) -> int:
    """Outline thickness in pixels: 1 up to 400-pixel images, thicker on large photos so that
    it stays visible when the picture is shown scaled down."""
    return max(1, round(min(height, width) / 400))


def class_boundaries(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """bool [H, W]: pixels with a 4-neighbour of another class (both sides of each boundary),
    widened to `thickness` pixels on each side. The image border is no boundary."""
    edge = np.zeros(mask.shape, bool)
    if mask.ndim != 2 or mask.size == 0:
        return edge
    horizontal = mask[:, :-1] != mask[:, 1:]
    vertical = mask[:-1, :] != mask[1:, :]
    edge[:, :-1] |= horizontal
    edge[:, 1:] |= horizontal
    edge[:-1, :] |= vertical
    edge[1:, :] |= vertical
    if thickness > 1:
        # A pixel within thickness-1 of a boundary pixel (square neighbourhood) that is on the
        # same side of it: dilate, then keep each class's own side (below, in `overlay`).
        grown = edge.copy()
        for _ in range(thickness - 1):
            step = grown.copy()
            step[:, 1:] |= grown[:, :-1]
            step[:, :-1] |= grown[:, 1:]
            step[1:, :] |= step[:-1, :].copy()
            step[:-1, :] |= step[1:, :].copy()
            grown = step
        edge = grown
    return edge


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.0) -> np.ndarray:
    """uint8 [H, W, 3]: the image with each non-background class's outline drawn in its colour.

    The outline is the class's own side of every boundary with another class, `outline_width`
    pixels thick and fully opaque; where the other side is background it is drawn black (a dark
    edge that keeps a bright outline visible on a light image). `alpha` > 0 also tints each
    class's inside with its colour at that opacity (0: the image is untouched inside). Pixels
    off the boundaries keep the image as it is.
    """
    image = _rgb(image)
    colours = _colours_for(mask, num_classes)
    out = image.copy()
    fg = mask > 0
    if alpha > 0:
        tint = (1 - alpha) * image.astype(np.float32) + alpha * colours[mask].astype(np.float32)
        out[fg] = (tint[fg] + 0.5).astype(np.uint8)
    edge = class_boundaries(mask, outline_width(*mask.shape))
    out[edge & ~fg] = colours[0]
    out[edge & fg] = colours[mask[edge & fg]]
    return out


def error_image(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: a dimmed grey copy of the image, ERROR_COLOUR where prediction != truth."""
    rgb = _rgb(image).astype(np.float32)
    luminance = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    grey = (0.55 * luminance + 60 + 0.5).astype(np.uint8)  # 60..200: never red, never white
    out = np.repeat(grey[..., None], 3, axis=-1)
    out[np.asarray(prediction) != np.asarray(truth)] = ERROR_COLOUR
    return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow without FreeType: its fixed bitmap font
        return ImageFont.load_default()


def legend_font_size(height: int, width: int) -> int:
    """Legend text height in pixels: readable at 1:1 on small images, larger on large ones."""
    return int(min(64, max(12, round(max(height, width) / 32))))


def legend_strip(class_names: Sequence[str], width: int, font_size: int = 12) -> np.ndarray:
    """uint8 [h, w, 3], w >= width: a swatch of each class colour followed by its name, left to
    right, wrapping onto more rows when a row is full; background drawn as a black swatch."""
    font = _font(font_size)
    colours = palette(len(class_names))
    pad = max(3, font_size // 3)
    swatch = font_size
    line = font_size + pad
    entries = []
    for name in class_names:
        left, _, right, _ = font.getbbox(str(name))
        entries.append(swatch + pad + (right - left))
    width = max(width, max(entries, default=0) + 2 * pad)
    positions, x, y = [], pad, pad
    for entry in entries:
        if x > pad and x + entry > width - pad:
            x, y = pad, y + line
        positions.append((x, y))
        x += entry + 2 * pad
    height = y + line + pad if class_names else 0
    strip = Image.new("RGB", (width, height), _LEGEND_PAPER)
    draw = ImageDraw.Draw(strip)
    for (x, y), name, colour in zip(positions, class_names, colours):
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=tuple(int(c) for c in colour),
                       outline=_SWATCH_EDGE)
        draw.text((x + swatch + pad, y + swatch // 2), str(name), fill=_LEGEND_INK, font=font, anchor="lm")
    return np.asarray(strip)


def overlay_with_legend(image: np.ndarray, mask: np.ndarray, class_names: Sequence[str],
                        alpha: float = 0.0) -> np.ndarray:
    """uint8: `overlay` at the image's size in the top-left corner, the legend strip below it."""
    drawn = overlay(image, mask, len(class_names), alpha)
    h, w = drawn.shape[:2]
    strip = legend_strip(class_names, w, legend_font_size(h, w))
    out = np.empty((h + strip.shape[0], strip.shape[1], 3), np.uint8)
    out[:] = _LEGEND_PAPER
    out[:h, :w] = drawn
    out[h:] = strip
    return out


def save_png(path, image: Image.Image) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_mask_and_overlay(mask_path, overlay_path, image: np.ndarray, mask: np.ndarray,
                          class_names: Sequence[str], alpha: float = 0.0) -> None:
    """NAME_mask.png (the class indices, as a palette PNG) and NAME_overlay.png (outlines and
    legend; `alpha` > 0 also tints each class's inside, see `overlay`)."""
    save_png(mask_path, mask_image(mask, len(class_names)))
    save_png(overlay_path, Image.fromarray(overlay_with_legend(image, mask, class_names, alpha)))
