"""Instructions a compiled kernel issues in its K loop, read from its SASS (no GPU needed).

STATIC ANALYSIS, NOT A TIMING. The cubin Triton compiled for sm_90 is disassembled with the
`cuobjdump` shipped in Triton's wheel. The K loop is the smallest backward branch (a BRA to a
lower address) whose body holds a tensor-core instruction (HGMMA on sm_90, HMMA on sm_80). Every
warp of the CTA runs that body once per iteration, so one iteration issues
`body length x warps` warp-instructions, against the multiply-adds of its tensor-core
instructions for the whole CTA:
  - HGMMA.64xNx16 is issued by each warpgroup (4 warps) and does 64*N*16 multiply-adds;
  - HMMA.16816 (sm_80) is issued by each warp and does 16*8*16.
`per_64cube` = warp-instructions per 64^3 multiply-adds, the figure compared across kernels
(the forward's K loop is the yardstick: a backward kernel that issues far more per unit of
tensor-core work is bound by instruction issue, not by DRAM or the tensor cores).
"""
import os
import re
import subprocess
import tempfile

import triton

_ADDR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;?\s*/\*", re.IGNORECASE)
_BRANCH = re.compile(r"\bBRA(?:\.[A-Z.]+)?\s+(?:`\(\.L_x_\d+\)\s*)?(0x[0-9a-f]+)", re.IGNORECASE)
_HGMMA = re.compile(r"\bHGMMA\.(\d+)x(\d+)x(\d+)")
_HMMA = re.compile(r"\bHMMA\.(\d)(\d)(\d+)")
CUBE = 64 ** 3


def cuobjdump_path() -> str:
    """The cuobjdump in Triton's wheel (the one this Triton's ptxas matches)."""
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def sass_of(cubin: bytes) -> str:
    """The SASS text of a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([cuobjdump_path(), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout


def instructions(sass: str) -> list:
    """[(address, instruction text)] in program order (addresses in bytes, 16 per instruction)."""
    found = []
    for line in sass.splitlines():
        m = _ADDR.search(line)
        if m:
            found.append((int(m.group(1), 16), m.group(2).strip()))
    return found


def _branch_target(text: str):
    m = _BRANCH.search(text)
    return int(m.group(1), 16) if m else None


def _macs_per_issue(text: str) -> tuple:
    """(multiply-adds, issuing warps) of one tensor-core instruction, or (0, 0)."""
    m = _HGMMA.search(text)
    if m:
        return int(m.group(1)) * int(m.group(2)) * int(m.group(3)), 4
    m = _HMMA.search(text)
    if m:
        return int(m.group(1)) * int(m.group(2)) * int(m.group(3)), 1
    return 0, 0


def k_loop(sass: str, num_warps: int):
    """The K loop's cost, or None when no loop holds a tensor-core instruction:
    dict(instructions = body length per warp, mma = tensor-core instructions in the body,
    macs = multiply-adds of one iteration for the whole CTA, per_64cube = warp-instructions per
    64^3 multiply-adds)."""
    code = instructions(sass)
    best = None
    for i, (addr, text) in enumerate(code):
        target = _branch_target(text)
        if target is None or target >= addr:
            continue
        body = [t for a, t in code if target <= a <= addr]
        macs = mma = 0
        for t in body:
            per_issue, issuers = _macs_per_issue(t)
            if per_issue:
                mma += 1
                macs += per_issue * num_warps // issuers
        if macs and (best is None or len(body) < best["instructions"]):
            best = dict(instructions=len(body), mma=mma, macs=macs,
                        per_64cube=len(body) * num_warps * CUBE / macs)
    return best


def k_loop_of(compiled, num_warps: int):
    """k_loop of a Triton CompiledKernel (its `asm["cubin"]`), or None."""
    cubin = compiled.asm.get("cubin")
    return k_loop(sass_of(cubin), num_warps) if cubin else None
