"""What the up_concat kernels share: interpreter detection, the tile product, the index helpers.

No torch import here or in the kernel modules (up_concat_forward.py, up_concat_backward.py): a
Python with Triton alone can import them and compile the kernels for a GPU that is not there
(benchmarks/build_triton_cache.py builds the GPU machines' Triton cache that way).
"""
import os
import re

import triton
import triton.language as tl

# Triton versions the kernels are checked on: 3.6 (the GPU machines) to 3.9 (CI's newest).
OLDEST_TRITON = (3, 6)


def major_minor(version: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


if major_minor(triton.__version__) < OLDEST_TRITON:
    # up_concat_op catches this and runs the PyTorch path, saying why.
    raise ImportError(f"unet_fast's Triton kernels need Triton >= {'.'.join(map(str, OLDEST_TRITON))}, "
                      f"found {triton.__version__}")


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpreter_problem():
    """Why Triton's CPU interpreter cannot run the kernels here, or None.

    Triton 3.6's interpreter fails in every kernel with numpy >= 2.4 ("only 0-dimensional arrays
    can be converted to Python scalars" at a range() over a runtime bound); 3.9 does not. 3.7 and
    3.8 were not checked, so they are not refused."""
    import numpy
    if major_minor(triton.__version__) == (3, 6) and major_minor(numpy.__version__) >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter (TRITON_INTERPRET=1) fails in every kernel with "
                f"numpy {numpy.__version__}: install 'numpy<2.4' or Triton >= 3.9, or unset TRITON_INTERPRET "
                "to run the PyTorch path")
    return None


# Programmatic dependent launch (sm_90 and newer): a kernel launched with Triton's `launch_pdl`
# option may start while the kernel before it on the stream still runs, once every program of
# that one has let it (or ended). Its programs then read what that kernel wrote only after
# wait_for_previous_kernel, which returns once it has completed and its writes are visible.
# Both are constexpr-gated: left out of the compiled code where the launch is an ordinary one,
# and of the interpreter's run (it has no griddepcontrol).
@triton.jit
def let_next_kernel_start(ENABLED: tl.constexpr):
    """The primary's half: the next kernel, if launched as a dependent, may start now."""
    if ENABLED:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def wait_for_previous_kernel(ENABLED: tl.constexpr):
    """The dependent's half: blocks until the kernel before this launch has completed."""
    if ENABLED:
        tl.extra.cuda.gdc_wait()


@triton.jit
def tile_product(a, b, acc, USE_DOT: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc + a @ b for a [M, K] and b [K, N] tile, accumulating in acc's dtype."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if USE_DOT:
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    else:
        acc += tl.sum(a[:, :, None].to(acc.dtype) * b[None, :, :].to(acc.dtype), axis=1)
    return acc


@triton.jit
def as_offset(v, IDX64: tl.constexpr):
    """v in the integer type element offsets are computed in: int64 when a tensor of the launch
    spans 2**31 elements or more (the launcher decides), else int32, which halves the registers
    the offset tensors take and keeps the pixel-index divisions 32-bit. Both branches cast, so the
    helper has one return type per variant (the compiler refuses a helper returning int64 in one
    branch and int32 in the other; the interpreter does not check)."""
    if IDX64:
        return v.to(tl.int64)
    else:
        return v.to(tl.int32)


@triton.jit
def relu_keep_nan(v):
    """max(v, 0) that lets NaN through, as torch.relu does (tl.maximum would turn NaN into 0)."""
    return tl.where(v < 0, tl.zeros_like(v), v)


@triton.jit
def row_block(pid_m, DHW, IDX64: tl.constexpr, BLOCK: tl.constexpr):
    """Row block pid_m of a GEMM over the pixels of [N, *, D, H, W] tensors, blocked per image
    (a block never spans two images, so its pixels are contiguous in NCHW and the compiler sees
    it): (image, pixel indices within the image, mask)."""
    n_pb = tl.cdiv(DHW, BLOCK)
    img = pid_m // n_pb
    r = (pid_m - img * n_pb) * BLOCK + tl.arange(0, BLOCK)
    return as_offset(img, IDX64), as_offset(r, IDX64), r < DHW


@triton.jit
def spatial_coords(r, H, W):
    """Pixel index r within one image of a [*, *, D, H, W] grid -> (d, h, w). 2-D: D = 1."""
    hw = H * W
    d = r // hw
    rem = r - d * hw
    h = rem // W
    w = rem - h * W
    return d, h, w


@triton.jit
def pixel_offset(img, r, d, h, w, sn, sd, sh, sw, FLAT: tl.constexpr):
    """Offset of pixel (img, d, h, w) = (img, r): FLAT when (d, h, w) merge into one dimension of
    stride sw (no per-pixel multiply-adds, and stride-1 pixels stay visibly contiguous)."""
    if FLAT:
        return img * sn + r * sw
    else:
        return img * sn + d * sd + h * sh + w * sw


@triton.jit
def tap_offset(t, sd, sh, sw, KH: tl.constexpr, KW: tl.constexpr):
    """Offset of tap t = (td * KH + th) * KW + tw from tap 0, in a tensor of strides (sd, sh, sw)."""
    td = t // (KH * KW)
    th = (t // KW) % KH
    tw = t % KW
    return td * sd + th * sh + tw * sw


@triton.jit
def up_pixel_offset(img, d, h, w, sn, sd, sh, sw, KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr):
    """Offset of output pixel (n, KD*d, KH*h, KW*w): tap 0 of input pixel (n, d, h, w)."""
    return img * sn + (KD * d) * sd + (KH * h) * sh + (KW * w) * sw


@triton.jit
def copy_tile_coords(q, PS, CS, IDX64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Copy tile q of a [N, CS, PS pixels] tensor -> (image, pixel indices in it, channel indices,
    mask). Channel tiles vary fastest, then pixel blocks, then images; a tile never spans two
    images, so its pixel indices stay contiguous (vector accesses in NCHW)."""
    n_pb = tl.cdiv(PS, BLOCK_P)
    n_cb = tl.cdiv(CS, BLOCK_C)
    cb = q % n_cb
    rest = q // n_cb
    pb = rest % n_pb
    img = as_offset(rest // n_pb, IDX64)
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_p < PS)[:, None] & (offs_c < CS)[None, :]
    return img, as_offset(offs_p, IDX64), as_offset(offs_c, IDX64), mask


@triton.jit
def copy_tile_offsets(img, offs_p, chan, sn, sc, sd, sh, sw, HS, WS, FLAT: tl.constexpr):
    """[pixels, channels] element offsets of one copy tile in a tensor of strides (sn, sc, sd, sh,
    sw) over a [*, *, DS, HS, WS] grid. FLAT: d, h, w merge into one dimension of stride sw (for
    every tensor of the copy: contiguous NCHW, channels_last, ...), so no index division is needed
    and, where sw == 1, the compiler sees contiguous pixels."""
    if FLAT:
        pix = offs_p * sw
    else:
        hw = HS * WS
        d = offs_p // hw
        rem = offs_p - d * hw
        h = rem // WS
        w = rem - h * WS
        pix = d * sd + h * sh + w * sw
    return img * sn + pix[:, None] + chan[None, :] * sc


@triton.jit
def program_role(pid, N_ROW_BLOCKS, NIMG, PS, CS, N_COLS, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Where program `pid` of a GEMM-plus-copy launch works. The grid is N_ROW_BLOCKS groups,
    each N_COLS GEMM column tiles of one row block followed by that group's share of the copy
    tiles (CS channels over PS pixels per image, [BLOCK_M, BLOCK_N] tiles): the column tiles of a
    row block run side by side (its A tile comes from DRAM once, then from L2), and the copies are
    spread through the launch, overlapping the GEMM's math instead of trailing it.
    Returns (row block, column index, copy tile index, number of copy tiles): the program is a
    GEMM tile when column < N_COLS, else the copy tile `q` when q < number of copy tiles (else idle).
    gemm_copy_grid() in up_concat_launch.py computes the same grid size on the host."""
    n_copy = NIMG * tl.cdiv(PS, BLOCK_M) * tl.cdiv(CS, BLOCK_N)
    per_group = tl.cdiv(n_copy, N_ROW_BLOCKS)
    group = N_COLS + per_group
    pid_m = pid // group
    col = pid - pid_m * group
    q = pid_m * per_group + (col - N_COLS)
    return pid_m, col, q, n_copy


@triton.jit
def block_origin(kb, D, H, W, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr):
    """Pixel block kb of the whole-rows path of the kernels that walk pixel blocks (a block is
    BLOCK_K // BLOCK_W rows of BLOCK_W pixels of one image plane) -> (image, d, first row h0,
    first column w0)."""
    rows: tl.constexpr = BLOCK_K // BLOCK_W
    n_w = W // BLOCK_W
    per_plane = (H // rows) * n_w
    per_image = D * per_plane
    img = kb // per_image
    rem = kb - img * per_image
    d = rem // per_plane
    rem = rem - d * per_plane
    hb = rem // n_w
    return img, d, hb * rows, (rem - hb * n_w) * BLOCK_W


@triton.jit
def next_block(img, d, h0, w0, D, H, W, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr):
    """The origin of the pixel block after the one at (img, d, h0, w0), in block_origin's order."""
    w0 += BLOCK_W
    wrap = w0 >= W
    w0 = tl.where(wrap, 0, w0)
    h0 = tl.where(wrap, h0 + BLOCK_K // BLOCK_W, h0)
    wrap = h0 >= H
    h0 = tl.where(wrap, 0, h0)
    d = tl.where(wrap, d + 1, d)
    wrap = d >= D
    d = tl.where(wrap, 0, d)
    img = tl.where(wrap, img + 1, img)
    return img, d, h0, w0


@triton.jit
def origin_offsets(img, d, h0, w0, IDX64: tl.constexpr):
    """A block origin (block_origin, next_block) in the integer type of element offsets."""
    return as_offset(img, IDX64), as_offset(d, IDX64), as_offset(h0, IDX64), as_offset(w0, IDX64)


@triton.jit
def split_blocks(s, n_split, NIMG, DHW, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr):
    """Pixel blocks [kb0, kb1) of split s of n_split over NIMG images of DHW pixels: whole-row
    blocks (block_origin) when BLOCK_W > 0, else per-image blocks of BLOCK_K (row_block)."""
    if BLOCK_W > 0:
        n_blocks = NIMG * (DHW // BLOCK_K)
    else:
        n_blocks = NIMG * tl.cdiv(DHW, BLOCK_K)
    kb0 = (s.to(tl.int64) * n_blocks // n_split).to(tl.int32)
    kb1 = ((s + 1).to(tl.int64) * n_blocks // n_split).to(tl.int32)
    return kb0, kb1
