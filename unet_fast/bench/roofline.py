"""Bytes a decoder step must move, and what fraction of the device's bandwidth a time achieves.

On a GPU the decoder steps are memory-bound (at most ~146 FLOP/byte in bf16
against an H100 ridge of ~267), so the figure of merit is achieved GB/s against the copy
ceiling, not FLOP/s. The counts below are compulsory traffic: every tensor the op needs read or
written exactly once, nothing for intermediates. An implementation that materialises the
transposed-conv output and the concatenation (the eager reference) moves more than this; the
percentage then says how far it is from the ideal fused kernel, which is the point.
"""
import torch

# A copy ceiling measured on the device (the H100 SXM of the GPU machines we run on, which
# torch names "NVIDIA H100 80GB HBM3"; device-to-device copy, bytes read + written). The PCIe and
# NVL H100s have other memory, so they are not matched. Devices not named here use the copy
# measured at the start of the run (which every run also records, for comparison).
# The H200 (torch: "NVIDIA H200") is deliberately not here: no copy on one has been measured by
# this project yet, so its ceiling is the 256 MiB copy measured once at the start of each run,
# and the bench says so in its header (ceiling_source). Put a figure here only once a run has
# measured it, with the run named beside it.
KNOWN_COPY_CEILING_GBPS = {"H100 80GB HBM3": 3000.0}
# Vendor datasheet HBM bandwidth (a spec, never a measurement, and never used as the 100%: no
# copy reaches it), for reading a measured ceiling against: an H200 copy far under ~4000 GB/s, or
# an H100 SXM one under ~2800, says the measurement went wrong rather than the kernels.
DATASHEET_BANDWIDTH_GBPS = {"H200": 4800.0, "H100 80GB HBM3": 3350.0}


def datasheet_bandwidth_gbps(device_name: str):
    """The vendor's spec bandwidth for a device named here, else None (a spec, not measured)."""
    for key, gbps in DATASHEET_BANDWIDTH_GBPS.items():
        if key in device_name:
            return gbps
    return None


def forward_bytes(n, cin, cout, cs, h, w, elem_size) -> int:
    """Compulsory bytes of one forward, x [N,Cin,H,W], skip [N,Cs,2H,2W] -> out [N,Cout+Cs,2H,2W].

        read x       N*H*W*Cin
        read skip    N*4HW*Cs
        write out    N*4HW*(Cout + Cs)
        read weight  4*Cin*Cout
      = elem_size * (N*H*W*(Cin + 4*Cout + 8*Cs) + 4*Cin*Cout)

    With elem_size = 2 (bf16) this is 2*N*H*W*(Cin + 4*Cout + 8*Cs) + 8*Cin*Cout. The
    bias (Cout elements) is left out.
    """
    return elem_size * (n * h * w * (cin + 4 * cout + 8 * cs) + 4 * cin * cout)


def backward_bytes(n, cin, cout, cs, h, w, elem_size, relu=True) -> int:
    """Compulsory bytes of one backward (dx, dskip, dweight from the output gradient).

        read grad     N*4HW*(Cout + Cs)      the gradient of out
        read mask     N*4HW*(Cout + Cs)      the saved out, for relu's out > 0 (relu only)
        read x        N*H*W*Cin              for dweight = X^T @ gy
        write dx      N*H*W*Cin
        write dskip   N*4HW*Cs
        read weight   4*Cin*Cout             for dx = gy @ W^T
        write dweight 4*Cin*Cout
      = elem_size * (N*H*W*(2*Cin + 8*Cout + 12*Cs) + 8*Cin*Cout)      with relu
      = elem_size * (N*H*W*(2*Cin + 4*Cout + 8*Cs) + 8*Cin*Cout)       without

    The mask is counted at full element size because that is what unet_fast saves (the output);
    a 1-bit mask would cut that term to N*4HW*(Cout + Cs)/8 bytes. gy (the masked gradient of the
    conv part) feeds two products; a kernel that reads it twice moves N*4HW*Cout*elem_size more
    than counted here. dbias (Cout elements) is left out.
    """
    mask = 4 * (cout + cs) if relu else 0
    per_pixel = 2 * cin + 4 * cout + 8 * cs + mask
    return elem_size * (n * h * w * per_pixel + 8 * cin * cout)


def step_bytes(mode: str, n, cin, cout, cs, h, w, elem_size) -> int:
    """Bytes for a benchmark mode: 'forward', 'backward', or 'full' (forward + backward)."""
    fwd = forward_bytes(n, cin, cout, cs, h, w, elem_size)
    bwd = backward_bytes(n, cin, cout, cs, h, w, elem_size)
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode]


def known_copy_ceiling_gbps(device_name: str):
    """The copy ceiling of a device we have measured before, else None."""
    for key, gbps in KNOWN_COPY_CEILING_GBPS.items():
        if key in device_name:
            return gbps
    return None


def measure_copy_gbps(device: torch.device, mib: int = 256) -> float:
    """Bytes read + written per second by one large tensor copy, the practical bandwidth floor.

    Measured once per run: a large copy is the fastest any memory-bound op can go on this
    device, so it is a fairer 100% than a datasheet number (which no op reaches).
    """
    from unet_fast.bench.timing import time_fn  # timing imports nothing from here; keeps the import one-way
    numel = mib * 2**20 // 4
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, cpu_warmup=2, cpu_repeats=7)
    return 2 * numel * 4 / (t["median_ms"] * 1e-3) / 1e9


def achieved(nbytes, median_ms, ceiling_gbps):
    """(GB/s, percent of the ceiling) or (None, None) where either is unknown."""
    if nbytes is None or not median_ms:
        return None, None
    gbps = nbytes / (median_ms * 1e-3) / 1e9
    return gbps, (100.0 * gbps / ceiling_gbps if ceiling_gbps else None)


def step_bytes_nd(mode: str, pixels: int, taps: int, cin: int, cout: int, cs: int, elem_size: int,
                  relu: bool) -> int:
    """Compulsory bytes of any decoder step, 2-D or 3-D: `pixels` = N * prod(x's spatial size),
    `taps` = prod(kernel) output pixels per input pixel. The 2-D formulas above are this with
    taps = 4.

      forward   read x P*Cin, read skip P*T*Cs, write out P*T*(Cout + Cs), read weight T*Cin*Cout
      backward  read grad P*T*(Cout + Cs), and with a ReLU the saved output once more for its
                mask; read x P*Cin, write dx P*Cin, write dskip P*T*Cs, read weight and write
                dweight T*Cin*Cout each
    """
    out_pixels = pixels * taps
    fwd = pixels * cin + out_pixels * (cout + 2 * cs) + taps * cin * cout
    mask = out_pixels * (cout + cs) if relu else 0
    bwd = out_pixels * (cout + cs) + mask + 2 * pixels * cin + out_pixels * cs + 2 * taps * cin * cout
    return elem_size * {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode]
