"""The weight-gradient kernels (kernels/up_concat_backward_weight.py) through launch_backward,
against the float64 reference: the strided pixel-block path and the general one, taps folded into
the columns, uneven split layouts and their fixed-order reduction, and the split choice on a GPU.

Runs under Triton's interpreter (conftest.py): tiny shapes, fixed tiles (32 x 32 x 16)."""
import math
from types import SimpleNamespace

import pytest
import torch
import triton

from unet_fast.cases import report_cases
from unet_fast.kernels import byte_model
from unet_fast.kernels import up_concat_launch as launcher
from unet_fast.kernels.configs import REDUCE_ROWS, narrow_enough, tiles_for, weight_grad_ctas_per_sm
from unet_fast.kernels.up_concat_launch import launch_backward, launch_forward, recording_launches
from helpers import require_triton
from test_kernels_nd import check_step, make_step

REPORT_STEPS = ("up3", "up2", "up1", "3d1", "3d2")


def weight_launch(args, relu=True):
    """The backward_weight launch's keyword arguments and grid for a step, recorded (not run)."""
    x, skip, weight, bias = args
    out = launch_forward(x, skip, weight, bias, relu=relu, skip_first=False)
    seen = {}

    def record(kernel, grid, a, kw):
        seen[kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__] = (grid, a, kw)

    with recording_launches(record):
        launch_backward(torch.zeros_like(out), out if relu else None, x, weight, skip_first=False,
                        has_bias=bias is not None)
    return seen["up_concat_backward_weight_kernel"]


@pytest.mark.parametrize("layout,spatial,block_w,cout",
                         [("channels_last", (4, 4), 4, 5), ("contiguous", (3, 32), 16, 16)])
def test_strided_pixel_blocks(layout, spatial, block_w, cout):
    """Pixel blocks of 16 as 4 whole rows of W = 4 (BLOCK_W = 4), or as half rows of W = 32
    (BLOCK_W = 16, two blocks a row): offsets a scalar per step plus a fixed tile; 2 images,
    ReLU, bias; Cout odd (a mask per column) or whole mask bytes (a mask per 8 columns)."""
    require_triton()
    args = make_step(2, 6, cout, 3, spatial, (2, 2), torch.float32, layout)
    launch = weight_launch(args)[2]
    assert launch["BLOCK_W"] == block_w and launch["COUT8"] == (cout % 8 == 0)
    check_step(args, torch.float32, True, False)


def test_general_path_when_width_does_not_tile():
    """W = 5 (no power of two above 1 divides it) and H = 3: no block of whole rows, so the
    per-pixel index math runs (BLOCK_W = 0), with a partial last block per image."""
    require_triton()
    args = make_step(2, 6, 7, 3, (3, 5), (2, 2), torch.float32, "channels_last")
    assert weight_launch(args)[2]["BLOCK_W"] == 0
    check_step(args, torch.float32, True, False)


def test_3d_taps_folded_into_columns_with_uneven_splits():
    """Cout = 9 padded to 16 columns a tap, 8 taps: 128 columns in 4 column tiles, two Cin tiles
    (Cin = 40): 8 tiles, 17 programs on the interpreter (every tile 2 splits, tile 0 three), dbias
    summed over an uneven (split, tap) set."""
    require_triton()
    args = make_step(1, 40, 9, 2, (2, 4, 8), (2, 2, 2), torch.float32, "channels_last")
    grid, _, kw = weight_launch(args)
    assert kw["BLOCK_W"] == 8 and grid == (17,)
    check_step(args, torch.float32, True, False)


@pytest.mark.parametrize("splits,spatial,k,tiles", [(3, (8, 10), (2, 2), 2), (17, (4, 8, 9), (2, 2, 2), 4)])
def test_forced_splits_and_dbias_over_many_splits(monkeypatch, splits, spatial, k, tiles):
    """3 splits of 10 pixel blocks (2-D), and 17 of 36 (3-D, 8 taps: 136 (split, tap) rows of
    dbias partials, more than one step of the reduction's REDUCE_ROWS), without ReLU, bias on."""
    require_triton()
    assert len(k) == 2 or splits * math.prod(k) > REDUCE_ROWS
    monkeypatch.setattr(launcher, "WEIGHT_GRAD_SPLITS", splits)
    args = make_step(2, 5, 6, 2, spatial, k, torch.float32, "channels_last")
    assert weight_launch(args, relu=False)[0] == (splits * tiles,)
    check_step(args, torch.float32, False, False)


def test_uneven_splits_are_bitwise_deterministic():
    require_triton()
    args = make_step(1, 40, 9, 2, (2, 4, 8), (2, 2, 2), torch.float32, "channels_last")
    x, skip, weight, bias = args
    out = launch_forward(x, skip, weight, bias, relu=True, skip_first=False)
    grad = torch.randn(out.shape).contiguous(memory_format=torch.channels_last_3d)
    first = launch_backward(grad, out, x, weight, skip_first=False, has_bias=True)
    second = launch_backward(grad, out, x, weight, skip_first=False, has_bias=True)
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])


@pytest.mark.parametrize("sms", [132, 114])
@pytest.mark.parametrize("name", REPORT_STEPS + ("3d5", "3d4", "3d3"))
def test_gpu_split_layout_fills_one_wave(monkeypatch, sms, name):
    """On a GPU of `sms` SMs the weight-gradient grid of each report step (sm_90's bf16
    channels_last tile for the step) has the longest range of a whole wave's ranges, with as few
    ranges a tile as keep it and no tile with one more, unless a range would then span under 4
    pixel blocks (two ranges a tile at least); each split at least 1 block, every tile split
    within one of the others; the byte model agrees with the launcher, tile included."""
    step = next(s for s in report_cases() if s.name == name)
    columns = step.taps * 16 * triton.cdiv(step.cout, 16)
    tile = next(t for t in tiles_for("backward_weight", "16-bit", 90)  # an H100's, as the launcher's rule
                if narrow_enough(t[0], step.cin, least=128) and narrow_enough(t[1], columns, least=128))
    bm, bn, bk = tile[:3]
    assert byte_model.weight_grad_tile(step) == (bm, bn, bk)
    ctas = weight_grad_ctas_per_sm(tile, 2)
    tiles = triton.cdiv(step.cin, bm) * triton.cdiv(columns, bn)
    blocks = step.m // bk
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(multi_processor_count=sms))
    s_lo, r_extra = launcher.weight_grad_splits(blocks, tiles, torch.device("cuda"), ctas)
    programs = tiles * s_lo + r_extra
    wave = sms * ctas
    if tiles * max(2, blocks // 4) >= wave:  # blocks enough for a wave of ranges of 4
        assert programs <= wave and r_extra == 0, (programs, wave, r_extra)  # the report's steps: one wave
        longest = triton.cdiv(blocks, s_lo)
        assert longest == triton.cdiv(blocks, wave // tiles), (s_lo, wave // tiles, blocks)
        assert s_lo == 1 or triton.cdiv(blocks, s_lo - 1) > longest, (s_lo, blocks)
    else:  # one range per 4 blocks (two at least)
        assert (s_lo, r_extra) == (max(min(2, blocks), blocks // 4), 0), (s_lo, r_extra, blocks)
    assert 0 <= r_extra < tiles and s_lo >= 1
    assert blocks // (s_lo + (r_extra > 0)) >= min(4, max(1, blocks // 2))
    assert byte_model.weight_grad_splits(step, (bm, bn, bk), sms, ctas) == (tiles, s_lo, r_extra)


@pytest.mark.parametrize("capability, shared, cin, columns, want", [
    (90, 232448, 512, 1024, (256, 128, 32)),   # up3
    (90, 232448, 128, 256, (128, 256, 32)),    # up1: 256 Cin would be half padding
    (90, 232448, 64, 256, (128, 256, 32)),     # 128 wide at least
    (90, 232448, 24, 64, (128, 128, 64)),
    (80, 166912, 512, 1024, (64, 64, 32)),     # before Hopper: the one tile without a spill
])
def test_weight_gradient_takes_the_first_tile_narrow_enough(monkeypatch, capability, shared, cin, columns, want):
    """configs.fixed_tile: the first tile of the device's list no wider along Cin or columns than
    128 or the step rounded up to a power of two."""
    from unet_fast.kernels import configs
    monkeypatch.setattr(configs, "device_limits", lambda: (capability, shared))
    tile = configs.fixed_tile("backward_weight", "16-bit", cin, columns)
    assert (tile["BLOCK_M"], tile["BLOCK_N"], tile["BLOCK_K"]) == want
