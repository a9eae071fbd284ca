"""What fraction of the device's bandwidth a decoder step's time achieves.

On a GPU the decoder steps are memory-bound (at most ~146 FLOP/byte in bf16
against an H100 ridge of ~267), so the figure of merit is achieved GB/s against the copy
ceiling, not FLOP/s. The bytes are the step's compulsory traffic (cases.StepCase.nbytes: the
floor of kernels/byte_model.py, every tensor the step needs read or written exactly once, the
ReLU mask as bits, nothing for intermediates). An implementation that materialises the
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
