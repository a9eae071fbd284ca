"""Compile the kernels for an NVIDIA GPU that this machine does not have.

Triton's JIT asks its active driver which GPU it compiles for. `offline_target(90)` installs a
driver that names one (sm_90 here, sm_80 for an A100) and owns no device, so
`JITFunction.warmup` / `preload` and an autotuner's `warmup` compile exactly what a launch on that
GPU would (the same specializations, the same pruned configs) and never launch anything.
No torch import: benchmarks/build_triton_cache.py uses this under a Python with Triton alone.
"""
import contextlib

from triton.backends.compiler import GPUTarget
from triton.runtime import driver

# Shared memory one block may opt in to, in bytes (CUDA's ..._MAX_SHARED_MEMORY_PER_BLOCK_OPTIN).
SHARED_MEMORY_LIMIT = {90: 232448, 80: 166912}


def parse_arch(text: str) -> int:
    """'sm_90', 'sm_90a', '90' -> 90; only the architectures listed in SHARED_MEMORY_LIMIT."""
    digits = text.lower().removeprefix("sm_").rstrip("a")
    if not digits.isdigit() or int(digits) not in SHARED_MEMORY_LIMIT:
        known = ", ".join(f"sm_{c}" for c in SHARED_MEMORY_LIMIT)
        raise ValueError(f"--arch must be one of {known}, got {text!r}")
    return int(digits)


class _Properties:
    """The one part of the CUDA driver's utils the kernels' config pruning reads."""

    def __init__(self, capability: int):
        self.capability = capability

    def get_device_properties(self, device):
        return {"max_shared_mem": SHARED_MEMORY_LIMIT[self.capability]}


class OfflineCudaDriver:
    def __init__(self, capability: int):
        self.target = GPUTarget("cuda", capability, 32)
        self.utils = _Properties(capability)
        # The JIT keeps its compiled kernels and target per device id: one id per architecture,
        # so that compiling for sm_80 after sm_90 in one process does not reuse sm_90's binder.
        self.device = 1000 + capability

    def is_active(self):
        return False

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return 0


@contextlib.contextmanager
def offline_target(capability: int):
    """Within the block Triton compiles for sm_<capability> and cannot launch."""
    previous = driver._active  # None until a real driver was asked for; restored as it was
    driver.set_active(OfflineCudaDriver(capability))
    try:
        yield
    finally:
        driver._active = previous
