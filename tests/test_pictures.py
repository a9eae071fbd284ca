"""The pictures: class palette, overlay PNGs (outlines and legend strip) and predictions.png.

Each picture is checked pixel by pixel against what it claims to show: solid masks are
palette[mask], the error picture is red exactly where the prediction is wrong, outlines lie on
class boundaries only, and every legend names each class beside its colour.
"""
import itertools

import numpy as np
from PIL import Image

from unet_fast.workflow.data import SYNTHETIC_CLASSES, synthetic_sample
from unet_fast.workflow.overlay import (ERROR_COLOUR, class_boundaries, default_class_names, error_image,
                                        outline_width, overlay, palette, save_mask_and_overlay)
from unet_fast.workflow.plots import PREDICTION_COLUMNS, WRONG_PIXEL_LABEL, prediction_figure


def _pairs(count=3, height=48, width=64):
    """Synthetic (image, truth, prediction) triples; the prediction swaps and invents some pixels."""
    rng = np.random.default_rng(7)
    out = []
    for k in range(count):
        image, truth = synthetic_sample(3, height, width, index=k, shapes=(2, 4))
        prediction = truth.copy()
        prediction[rng.random(truth.shape) < 0.05] = rng.integers(0, len(SYNTHETIC_CLASSES))
        prediction[5:12, 3:20] = 1 + k % 3
        out.append((image, truth, prediction))
    return out


def _min_distance(colours: np.ndarray) -> float:
    colours = colours.astype(np.float64)
    return min(np.linalg.norm(a - b) for a, b in itertools.combinations(colours, 2))


def test_palette_colours_are_distinct_and_far_from_the_synthetic_images_colours():
    # 120 small images (many shapes, so many shape colours) of a fixed seed: a fixed count to compare.
    pixels = np.concatenate([synthetic_sample(10, 32, 32, index=i, radius=(4, 7))[0].reshape(-1, 3)
                             for i in range(120)]).astype(np.float64)
    colours = palette(len(SYNTHETIC_CLASSES))
    assert tuple(colours[0]) == (0, 0, 0)  # background: no colour
    for k in range(1, len(colours)):
        near = np.linalg.norm(pixels - colours[k], axis=1) < 60  # of 441, the cube's diagonal
        # A shape's colour is drawn uniformly from the whole cube, so every colour turns up now
        # and then; the palette's lie in the cube's sparse corners (about 0.2% of pixels here,
        # where a mid-tone green holds 4%).
        assert near.mean() < 0.006, (k, tuple(colours[k]), near.mean())
    assert _min_distance(colours[1:]) > 300  # the data's three classes: opposite-ish colours
    assert _min_distance(palette(14)) > 120  # every fixed colour
    many = palette(40)
    assert len({tuple(c) for c in many}) == 40  # generated colours beyond the fixed ones differ too


def test_outlines_are_drawn_only_on_class_boundaries_in_solid_class_colours():
    rng = np.random.default_rng(0)
    image = rng.integers(30, 220, (40, 50, 3)).astype(np.uint8)  # never a palette colour
    mask = np.zeros((40, 50), np.uint8)
    mask[5:20, 5:25] = 1
    mask[5:20, 25:40] = 2  # touches class 1: both classes outline their side
    mask[28:36, 0:10] = 2  # touches the image border: the border is no boundary
    drawn = overlay(image, mask, 3)
    changed = (drawn != image).any(-1)
    want = np.zeros_like(changed)
    for y, x in itertools.product(range(40), range(50)):
        neighbours = [mask[y + dy, x + dx] for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
                      if 0 <= y + dy < 40 and 0 <= x + dx < 50]
        want[y, x] = any(n != mask[y, x] for n in neighbours)
    np.testing.assert_array_equal(changed, want)  # no fill inside, nothing off the boundaries
    np.testing.assert_array_equal(drawn[want], palette(3)[mask[want]])  # background side black
    assert outline_width(40, 50) == 1
    np.testing.assert_array_equal(class_boundaries(mask), want)

    # A large image gets thicker outlines, each class's colour on its own side of its boundaries.
    big = np.kron(mask, np.ones((20, 20), np.uint8))
    width = outline_width(*big.shape)
    assert width == 2
    thick = overlay(np.kron(image, np.ones((20, 20, 1), np.uint8)), big, 3)
    interior = (big > 0) & ~class_boundaries(big, width)
    band = (big > 0) & class_boundaries(big, width)
    assert band.sum() > 1.5 * (class_boundaries(big) & (big > 0)).sum()
    np.testing.assert_array_equal(thick[band], palette(3)[big[band]])
    assert not (thick[interior] == palette(3)[big[interior]]).all(-1).any()
    dark = (big == 0) & class_boundaries(big, width)
    assert (thick[dark] == 0).all()
    far = (big == 0) & ~class_boundaries(big, width)
    np.testing.assert_array_equal(thick[far], np.kron(image, np.ones((20, 20, 1), np.uint8))[far])


def test_error_picture_is_red_exactly_on_the_wrong_pixels():
    for image, truth, prediction in _pairs():
        errors = error_image(image, truth, prediction)
        red = (errors == ERROR_COLOUR).all(-1)
        np.testing.assert_array_equal(red, truth != prediction)
        rest = errors[~red]
        assert (rest[:, 0] == rest[:, 1]).all() and (rest[:, 1] == rest[:, 2]).all()  # grey


def test_predictions_figure_shows_solid_masks_errors_and_a_legend_naming_each_class():
    samples = _pairs(2)
    names = ["background", "disc", "square", "triangle"]
    fig = prediction_figure(samples, names)
    axes = np.asarray(fig.axes).reshape(len(samples), len(PREDICTION_COLUMNS))
    assert [ax.get_title() for ax in axes[0]] == list(PREDICTION_COLUMNS)
    colours = palette(len(names))
    for row, (image, truth, prediction) in zip(axes, samples):
        shown = [np.asarray(ax.images[0].get_array()) for ax in row]
        np.testing.assert_array_equal(shown[0], image)
        np.testing.assert_array_equal(shown[1], colours[truth])       # solid, not over the image
        np.testing.assert_array_equal(shown[2], colours[prediction])
        np.testing.assert_array_equal(shown[3], overlay(image, prediction, len(names)))
        np.testing.assert_array_equal((shown[4] == ERROR_COLOUR).all(-1), truth != prediction)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == names + [WRONG_PIXEL_LABEL]
    faces = [tuple(np.round(np.asarray(p.get_facecolor()[:3]) * 255).astype(int))
             for p in legend.get_patches()]
    assert faces == [tuple(int(v) for v in c) for c in colours] + [ERROR_COLOUR]


def test_overlay_png_is_the_outlined_image_above_a_legend_strip_of_each_class(tmp_path):
    image, truth, prediction = _pairs(1, 40, 24)[0]  # narrower than the class names
    names = default_class_names(4)
    assert names == ["background", "class 1", "class 2", "class 3"]
    save_mask_and_overlay(tmp_path / "m.png", tmp_path / "o.png", image, prediction, names)
    with Image.open(tmp_path / "m.png") as mask:
        assert mask.mode == "P"
        np.testing.assert_array_equal(np.asarray(mask), prediction)  # class indices, as before
    with Image.open(tmp_path / "o.png") as written:
        assert written.mode == "RGB"
        picture = np.asarray(written)
    h, w = prediction.shape
    assert picture.shape[0] > h and picture.shape[1] >= w
    np.testing.assert_array_equal(picture[:h, :w], overlay(image, prediction, 4))
    strip = picture[h:]
    for k, colour in enumerate(palette(4)):
        swatch = (strip == colour).all(-1).sum()
        assert swatch >= 50, (k, tuple(colour), swatch)  # a swatch of each class, background too
    # The names are drawn: other names give another strip.
    save_mask_and_overlay(tmp_path / "m2.png", tmp_path / "o2.png", image, prediction, ["a", "b", "c", "d"])
    with Image.open(tmp_path / "o2.png") as other:
        assert np.asarray(other).shape != picture.shape or (np.asarray(other) != picture).any()
