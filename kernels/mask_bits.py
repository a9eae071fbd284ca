"""The ReLU mask of up_concat's output as bits: written by the forward (WRITE_BITS), read by the
backward instead of the 16-bit output (1/16 of its bytes).

Layout, one flat uint8 buffer of mask_bytes(...) bytes, in two parts:
  - the upsampled channels, bytes [0, conv_bytes): [M input pixels, T taps, NB = cdiv(Cout, 8)];
    bit (o % 8) of byte [pix, tap, o // 8] belongs to channel o of tap `tap` of input pixel `pix`
    (pix = image * D*H*W + pixel index in the image, as common.row_block numbers them);
  - the skip channels, bytes [conv_bytes, conv_bytes + skip_bytes): [N * P output pixels per image,
    NBS = cdiv(Cs, 8)]; bit (c % 8) of byte [image * P + p, c // 8] belongs to skip channel c of
    output pixel p (the copy programs' pixel numbering, common.copy_tile_coords).
A bit is 1 where the gradient passes: out > 0 or out is NaN (threshold_backward's condition,
the reference's ReLU backward). Bits past Cout (or Cs) in a pixel's last byte are 0.
No torch import: see common.py.
"""
import triton
import triton.language as tl


def mask_layout(m: int, taps: int, cout: int, n: int, skip_pix: int, cs: int) -> tuple:
    """(conv_bytes, skip_bytes) of the mask of a step with m input pixels, taps taps, cout
    upsampled channels, n images of skip_pix output pixels and cs skip channels."""
    return m * taps * triton.cdiv(cout, 8), n * skip_pix * triton.cdiv(cs, 8)


@triton.jit
def pass_mask(stored, UPCAST: tl.constexpr):
    """True where the gradient of the stored values passes their ReLU: stored > 0 or NaN. Taken
    from the values as stored (a positive float32 may round to 0 in 16 bits)."""
    if UPCAST:  # the interpreter cannot compare bfloat16 values
        stored = stored.to(tl.float32)
    return (stored > 0) | (stored != stored)


@triton.jit
def pack_bits(keep, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """[BLOCK_P, BLOCK_C] booleans -> [BLOCK_P, BLOCK_C // 8] bytes, channel c in bit c % 8."""
    shifted = tl.reshape(keep.to(tl.int32), (BLOCK_P, BLOCK_C // 8, 8)) << tl.arange(0, 8)[None, None, :]
    return tl.sum(shifted, axis=2).to(tl.uint8)


@triton.jit
def store_bits(row_ptrs, keep, mask_p, c0, NBYTES, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Write the [BLOCK_P rows, BLOCK_C channels from c0] pass mask `keep` (c0 a multiple of 8);
    row_ptrs [BLOCK_P] points at each row's byte 0, of NBYTES bytes per row."""
    first = c0 // 8 + tl.arange(0, BLOCK_C // 8)
    tl.store(row_ptrs[:, None] + first[None, :], pack_bits(keep, BLOCK_P, BLOCK_C),
             mask=mask_p[:, None] & (first < NBYTES)[None, :])


@triton.jit
def load_bits(row_ptrs, mask_p, c0, NBYTES, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """The [BLOCK_P rows, BLOCK_C channels from c0] pass mask store_bits wrote (False outside the
    rows of mask_p and past NBYTES bytes). Decoded byte-wise: each byte is loaded once and
    expanded into its 8 channels."""
    first = c0 // 8 + tl.arange(0, BLOCK_C // 8)
    byte = tl.load(row_ptrs[:, None] + first[None, :], mask=mask_p[:, None] & (first < NBYTES)[None, :], other=0)
    bits = (byte.to(tl.int32)[:, :, None] >> tl.arange(0, 8)[None, None, :]) & 1
    return tl.reshape(bits, (BLOCK_P, BLOCK_C)) != 0


@triton.jit
def store_conv_bits(bits_ptr, stored, mask, pix, mask_p, tap, o0, NB, T: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Bits of a [BLOCK_P input pixels `pix`, BLOCK_C upsampled channels from o0] tile of tap `tap`
    whose stored values are `stored` (where `mask`; elsewhere the bit is 0)."""
    store_bits(bits_ptr + pix * (T * NB) + tap * NB, pass_mask(stored, UPCAST) & mask, mask_p, o0, NB,
               BLOCK_P, BLOCK_C)


@triton.jit
def store_skip_bits(skip_bits_ptr, stored, mask, rows, mask_p, c0, NBS, UPCAST: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Bits of a [BLOCK_P output pixels (rows = image * P + p), BLOCK_C skip channels from c0]
    copy tile whose stored values are `stored` (where `mask`); skip_bits_ptr points at the skip part."""
    store_bits(skip_bits_ptr + rows * NBS, pass_mask(stored, UPCAST) & mask, mask_p, c0, NBS, BLOCK_P, BLOCK_C)


@triton.jit
def load_mask_bits(bits_ptr, pix, mask_p, tap, o0, NB, T: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_O: tl.constexpr):
    """The [BLOCK_P input pixels, BLOCK_O upsampled channels from o0] pass mask of tap `tap`."""
    return load_bits(bits_ptr + pix * (T * NB) + tap * NB, mask_p, o0, NB, BLOCK_P, BLOCK_O)


@triton.jit
def load_skip_bits(skip_bits_ptr, rows, mask_p, c0, NBS, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """The [BLOCK_P output pixels, BLOCK_C skip channels from c0] pass mask of a copy tile."""
    return load_bits(skip_bits_ptr + rows * NBS, mask_p, c0, NBS, BLOCK_P, BLOCK_C)
