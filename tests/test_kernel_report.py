"""Every Triton kernel compiled for the GPUs we target (sm_90: H100/H200, sm_80: A100) on this CPU.

Static analysis, not a timing: `unet-fast kernels` compiles, for the default UNet's three decoder
steps, every kernel with every config a launch may use (after pruning), in each dtype and layout,
and the tests fail on a compile error, on a config needing more shared memory than the GPU has,
and on any spill (the bound, MAX_SPILL_BYTES, is 0). It runs in a subprocess: this process has
TRITON_INTERPRET=1 set (conftest.py), under which Triton interprets kernels instead of compiling.
"""
import json
import os
import subprocess
import sys

import pytest

from unet_fast.gpu.kernel_report import DTYPE_CHOICES, LAYOUT_CHOICES, MAX_SPILL_BYTES, problems
from unet_fast.kernels.configs import TILES, shared_memory_bound, tiles_that_fit
from unet_fast.kernels.offline_target import SHARED_MEMORY_LIMIT
from unet_fast.gpu.static_compile import ptx_features, ptxas_resources

# .ci/run's second venv (the GPU machines' Triton 3.6.0) checks sm_90 alone, to keep CI short:
# that Triton only ever compiles for the GPU machines, which are sm_90.
ARCHES = {arch: int(arch[3:]) for arch in os.environ.get("UNET_FAST_STATIC_ARCHES", "sm_90,sm_80").split(",")}
ELEMENT_SIZE = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}
OPERANDS = {"fp32": "fp32", "tf32": "tf32", "bf16": "16-bit", "fp16": "16-bit"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("static") / "static.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "unet_fast", "kernels", "--json", str(path)]
    for arch in ARCHES:
        cmd += ["--arch", arch]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert path.exists(), f"unet-fast kernels wrote no report (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    with open(path) as f:
        return proc, json.load(f)


def _tile(row):
    size, warps, stages = row["config"].split()
    return (*map(int, size.split("x")), int(warps[1:]), int(stages[1:]))


def test_every_launchable_config_compiles_fits_and_does_not_spill(report):
    proc, doc = report
    assert doc["meta"]["problems"] == [], "\n".join(doc["meta"]["problems"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert doc["meta"]["max_spill"] == MAX_SPILL_BYTES


def test_report_covers_every_kernel_dtype_layout_and_pruned_config(report):
    """One row per config the autotuner keeps after pruning, for each arch, dtype, layout, step."""
    _, doc = report
    for arch, capability in ARCHES.items():
        for dtype in DTYPE_CHOICES:
            for layout in LAYOUT_CHOICES:
                for kernel in TILES:
                    for case in ("up3", "up2", "up1"):
                        got = sorted(_tile(r) for r in doc["rows"] if (r["arch"], r["dtype"], r["layout"],
                                                                       r["kernel"], r["case"])
                                     == (arch, dtype, layout, kernel, case))
                        fit = tiles_that_fit(kernel, OPERANDS[dtype], capability, SHARED_MEMORY_LIMIT[capability])
                        want = sorted(fit if kernel != "backward_weight" else fit[:1])
                        assert got == want, (arch, dtype, layout, kernel, case)


def test_shared_memory_bound_covers_what_the_compiler_allots(report):
    """The pruning estimate must never be below the real figure, or pruning lets an overflow through."""
    _, doc = report
    for r in doc["rows"]:
        bound = shared_memory_bound(r["kernel"], _tile(r), ELEMENT_SIZE[r["dtype"]])
        assert r["shared"] <= bound, r


def test_sm90_kernels_use_wgmma_and_channels_last_moves_16_bytes(report):
    """What makes the kernels fast on an H100: Hopper's tensor-core instruction wherever the tile
    allows it, and 16-byte vector loads and stores in channels_last."""
    _, doc = report
    for r in doc["rows"]:
        if r["arch"] == "sm_90" and r["dtype"] != "fp32" and _tile(r)[0] >= 64:
            assert r["tensor_cores"] == "wgmma", r
        if r["layout"] == "channels_last" and r["kernel"] != "backward_weight":
            assert r["widest_load"] == 16 and r["widest_store"] == 16, r


def test_problems_flags_errors_overflow_and_spills():
    ok = dict(kernel="forward", case="up3", dtype="bf16", layout="contiguous", config="64x64x32 w4 s4",
              arch="sm_90", error=None, shared=1000, shared_limit=232448, spill_stores=0)
    assert problems([ok], 0) == []
    assert "does not compile" in problems([dict(ok, error="CompilationError: x")], 0)[0]
    assert "shared memory" in problems([dict(ok, shared=232449)], 0)[0]
    assert "spills 8 bytes" in problems([dict(ok, spill_stores=8)], 0)[0]
    assert problems([dict(ok, spill_stores=8)], 8) == []


def test_ptx_and_ptxas_readers():
    ptx = ("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {...};\n"
           "cp.async.cg.shared.global [ %r1 + 0 ], [ %rd2 + 0 ], 0x10, %r3;\n"
           "ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];\n"
           "@%p1 st.global.b16 [ %rd5 + 0 ], { %rs1 };\n")
    assert ptx_features(ptx) == dict(tensor_cores="wgmma", cp_async=1, widest_load=16, widest_store=2)
    log = ("ptxas info    : Function properties for k\n"
           "    184 bytes stack frame, 176 bytes spill stores, 224 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers\n")
    assert ptxas_resources(log) == dict(registers=255, spill_stores=176, spill_loads=224)
