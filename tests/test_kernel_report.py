"""Every Triton kernel compiled for the GPUs we target (sm_90: H100/H200, sm_80: A100) on this CPU.

Static analysis, not a timing: `unet-fast kernels` compiles, for the default UNet's three 2-D
decoder steps and nnU-Net's 3-D ones, every kernel with every config a launch may use (after
pruning), in each dtype and layout, with ReLU and bias and with neither, each with int64 offsets
(IDX64) off and, on sm_90, on, and the tests fail on a compile error, on a config needing more shared memory
than the GPU has, on any spill (the bound, MAX_SPILL_BYTES, is 0), on an atomic instruction, and
on a scalar 16-bit global load in a 16-bit channels_last kernel. It runs in a subprocess: this process has
TRITON_INTERPRET=1 set (conftest.py), under which Triton interprets kernels instead of compiling.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from unet_fast.gpu.kernel_report import (CASE_CHOICES, DTYPE_CHOICES, KERNEL_CHOICES, LAYOUT_CHOICES, MAX_SPILL_BYTES,
                                         problems)
from unet_fast.kernels import configs
from unet_fast.cases import report_cases
from unet_fast.kernels.configs import (TILES, narrow_enough, operand_class, shared_memory_bound, tiles_for,
                                      tiles_that_fit, wide_enough)
from unet_fast.kernels.offline_target import SHARED_MEMORY_LIMIT
from unet_fast.gpu.static_compile import KERNEL_NAMES, VARIANTS, ptx_features, ptxas_resources

# .ci/run's second venv (the GPU machines' Triton 3.6.0) checks sm_90 alone, to keep CI short:
# that Triton only ever compiles for the GPU machines, which are sm_90.
ARCHES = {arch: int(arch[3:]) for arch in os.environ.get("UNET_FAST_STATIC_ARCHES", "sm_90,sm_80").split(",")}
# The steps compiled here: a 2-D step, the smallest 3-D one (4^3 pixels: sizes not divisible by 16,
# so other specializations) and the anisotropic (1, 2, 2) one. All nine compile alike but take
# about 20 minutes per arch on two cores; `unet-fast kernels` with no --case compiles them all.
CASES = os.environ.get("UNET_FAST_STATIC_CASES", "up3,3d5,3da").split(",")
# Every dtype on sm_90; on sm_80 fp16 is left to `unet-fast kernels` with no --dtype: in the full
# report (nine steps, Triton 3.9) 6 of 436 bf16/fp16 row pairs on sm_80 differed in registers and
# none in spills or shared memory, against 59 of 554 on sm_90 (up to 43 registers, fp16 at 255
# in some rows).
DTYPES = os.environ.get("UNET_FAST_STATIC_DTYPES", ",".join(DTYPE_CHOICES)).split(",")
DTYPES_BY_ARCH = {arch: [d for d in DTYPES if arch != "sm_80" or d != "fp16"] for arch in ARCHES}
# The int64-offset variants (IDX64 forced on; launched for tensors of 2**31 elements or more) on
# sm_90 alone: they differ from the int32 ones in their offsets only, and on sm_80 add a sixth of
# the report's compile time (`unet-fast kernels` compiles them on every arch unless --no-int64).
INT64_ARCHES = os.environ.get("UNET_FAST_STATIC_INT64_ARCHES", "sm_90").split(",")
IDX64_BY_ARCH = {arch: (False, True) if arch in INT64_ARCHES else (False,) for arch in ARCHES}
ELEMENT_SIZE = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}
PRECISION = {"fp32": "ieee", "tf32": "tf32", "bf16": "ieee", "fp16": "ieee"}


def operands(dtype, layout):
    return operand_class(ELEMENT_SIZE[dtype], PRECISION[dtype], layout == "channels_last")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(the last failing run or the last run, the reports of every arch merged)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    doc, last = None, None
    for arch in ARCHES:
        path = tmp_path_factory.mktemp("static") / f"static-{arch}.json"
        cmd = [sys.executable, "-m", "unet_fast", "kernels", "--json", str(path), "--case", ",".join(CASES),
               "--dtype", ",".join(DTYPES_BY_ARCH[arch]), "--arch", arch] + ([] if True in IDX64_BY_ARCH[arch]
                                                                             else ["--no-int64"])
        # No timeout: on a busy machine the compile takes longer, which must not turn into an error.
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert path.exists(), f"unet-fast kernels wrote no report (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        with open(path) as f:
            part = json.load(f)
        last = proc if last is None or last.returncode == 0 else last
        if doc is None:
            doc = part
        else:
            doc["rows"] += part["rows"]
            doc["steps"]["rows"] += part["steps"]["rows"]
            doc["meta"]["problems"] += part["meta"]["problems"]
    return last, doc


def _tile(row):
    if row["kernel"] == "weight_reduce":
        return None
    size, warps, stages = row["config"].split()
    return (*map(int, size.split("x")), int(warps[1:]), int(stages[1:]))


def test_the_one_pass_backward_of_512_columns_compiles_without_spill(tmp_path):
    """The steps above reach the one-pass backward's 256-column tiles (3da); its 512-column tile
    (32 Cin channels, the most registers of its tiles; sm_90 only) first serves 3d2 (8 taps x 64
    channels), compiled here in bf16 channels_last, alone."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    assert configs.fused_backward_tile("16-bit", 80, 512, SHARED_MEMORY_LIMIT[80]) is None
    for arch, capability in ARCHES.items():
        want = configs.fused_backward_tile("16-bit", capability, 512, SHARED_MEMORY_LIMIT[capability])
        if want is None:
            continue
        path = tmp_path / f"static-{arch}.json"
        cmd = [sys.executable, "-m", "unet_fast", "kernels", "--json", str(path), "--case", "3d2",
               "--dtype", "bf16", "--layout", "channels_last", "--arch", arch, "--kernel", "backward_fused"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert path.exists(), proc.stderr[-3000:]
        with open(path) as f:
            doc = json.load(f)
        assert doc["meta"]["problems"] == [] and proc.returncode == 0, doc["meta"]["problems"]
        assert {r["kernel"] for r in doc["rows"]} == {"backward_fused"} and doc["steps"]["rows"] == []
        assert sorted(r["idx64"] for r in doc["rows"]) == [False, True]  # int64 variants compiled by default
        fused = {r["config"] for r in doc["rows"]}
        assert fused == {"{BLOCK_M}x{BLOCK_N}x{BLOCK_K} w{num_warps} s{num_stages}".format(**want)}, fused


def test_every_launchable_config_compiles_fits_and_does_not_spill(report):
    proc, doc = report
    assert doc["meta"]["problems"] == [], "\n".join(doc["meta"]["problems"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert doc["meta"]["max_spill"] == MAX_SPILL_BYTES


# The GEMM N a launch's autotuner prunes wide tiles against (configs.narrow_enough), and with a
# ReLU narrow ones (configs.wide_enough).
GEMM_N = {"forward": lambda step: step.cout, "backward_input": lambda step: step.cin}


def test_report_covers_every_kernel_dtype_layout_and_pruned_config(report):
    """One row per config the autotuner keeps after pruning, for each arch, dtype, layout, step,
    (ReLU, bias) variant and IDX64 setting, and with ReLU the forward twice (inference, and the
    training forward that writes the mask bits); the one-pass backward instead of the two backward
    kernels where the launcher takes it; the dW reduction once per variant (no IDX64)."""
    _, doc = report
    assert set(CASE_CHOICES) == {c.name for c in report_cases()} and set(CASES) <= set(CASE_CHOICES)
    assert set(DTYPES) <= set(DTYPE_CHOICES)
    case_of = {c.name: c for c in report_cases()}
    for arch, capability in ARCHES.items():
        for dtype in DTYPES_BY_ARCH[arch]:
            for layout in LAYOUT_CHOICES:
                for case in CASES:
                    rows = [r for r in doc["rows"] if (r["arch"], r["dtype"], r["layout"], r["case"])
                            == (arch, dtype, layout, case)]
                    step = case_of[case]
                    columns = step.taps * 16 * -(-step.cout // 16)
                    for relu, bias in VARIANTS:
                        # Without ReLU a step whose columns fit a one-pass tile takes it, and neither
                        # backward_input nor backward_weight.
                        fused = None if relu else configs.fused_backward_tile(
                            operands(dtype, layout), capability, columns, SHARED_MEMORY_LIMIT[capability])
                        fused_rows = sorted(_tile(r) for r in rows if (r["kernel"], r["relu"], r["has_bias"])
                                            == ("backward_fused", relu, bias))
                        want_fused = [] if fused is None else [tuple(fused[k] for k in (
                            "BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages"))] * len(IDX64_BY_ARCH[arch])
                        assert fused_rows == want_fused, (arch, dtype, layout, case, relu, bias)
                        backward = ("backward_input", "backward_weight")
                        for idx64 in IDX64_BY_ARCH[arch]:
                            # The forward twice with ReLU: inference, and the training forward writing bits.
                            for kernel, bits in [(k, b) for k in TILES if not (fused and k in backward)
                                                 for b in ((False, True) if k == "forward" and relu else (False,))]:
                                has_bias = bias  # backward_input sums dbias among its programs
                                # The forward of inference with int32 offsets, one tap along depth, tries
                                # LIGHT_TILES too.
                                kd = case_of[case].kernel[0] if len(case_of[case].kernel) == 3 else 1
                                light = configs.light_variant(dict(WRITE_BITS=bits, IDX64=idx64, KD=kd))
                                fit = tiles_that_fit(kernel, operands(dtype, layout), capability,
                                                     SHARED_MEMORY_LIMIT[capability], light=light)
                                if kernel in GEMM_N:  # the autotuner's pruning of tiles wider than N
                                    n = GEMM_N[kernel](case_of[case])  # (and with ReLU, narrower)
                                    fit = [t for t in fit if narrow_enough(t[1], n)
                                           and wide_enough(kernel, t[1], n, relu)] or fit
                                if kernel == "backward_weight":  # the first narrow enough (configs.fixed_tile)
                                    fit = [t for t in fit if narrow_enough(t[0], step.cin, least=128)
                                           and narrow_enough(t[1], columns, least=128)] or fit
                                want = sorted(fit if kernel != "backward_weight" else fit[:1])
                                got = sorted(_tile(r) for r in rows if (
                                    r["kernel"], r["relu"], r["has_bias"], r["idx64"], r["write_bits"])
                                    == (kernel, relu, has_bias, idx64, bits))
                                assert got == want, (arch, dtype, layout, case, kernel, relu, bias, idx64, bits)
                    assert {r["idx64"] for r in rows} == set(IDX64_BY_ARCH[arch])
                    assert [r["idx64"] for r in rows if r["kernel"] == "weight_reduce"] == [False] * len(
                        [r for r in rows if r["kernel"] == "weight_reduce"])


def test_shared_memory_bound_covers_what_the_compiler_allots(report):
    """The pruning estimate must never be below the real figure, or pruning lets an overflow through."""
    _, doc = report
    for r in doc["rows"]:
        if r["kernel"] == "weight_reduce":
            continue
        bound = shared_memory_bound(r["kernel"], _tile(r), ELEMENT_SIZE[r["dtype"]])
        assert r["shared"] <= bound, r


def test_sm90_kernels_use_wgmma_and_channels_last_moves_16_bytes(report):
    """What makes the kernels fast on an H100: Hopper's tensor-core instruction wherever the tile
    allows it, and in channels_last 16-byte vector (or cp.async) loads and stores, no scalar
    16-bit load, and no atomic anywhere."""
    _, doc = report
    for r in doc["rows"]:
        assert r["atomics"] == 0, r
        if r["kernel"] == "weight_reduce":
            continue
        if r["arch"] == "sm_90" and r["dtype"] != "fp32" and _tile(r)[0] >= 64:
            assert r["tensor_cores"] == "wgmma", r
        if r["layout"] == "channels_last":
            assert r["widest_store"] == 16 and r["cp_async"] > 0, r
            if r["kernel"] != "backward_weight":  # its ReLU mask bits are byte loads
                assert r["widest_load"] in (0, 16), r  # 0: every load is a cp.async
            if r["dtype"] in ("bf16", "fp16"):
                assert r["scalar_16bit_loads"] == 0, r


def test_report_rows_carry_the_byte_model(report):
    _, doc = report
    for r in doc["rows"]:
        if r["kernel"] in ("forward", "backward_input", "backward_weight", "backward_fused"):
            assert r["moved_mb"] > 0 and r["floor_mb"] > 0 and r["x_floor"] >= 0.99, r


def test_report_rows_carry_the_time_model(report):
    """Every sm_90 kernel with a tensor-core loop, as the report's shapes launch it (int64 offsets
    not forced): the K loop read from its SASS, its occupancy, grid and the time model's bounds, the
    modelled time their largest plus a launch (MODELLED): 1 us for backward_input, a programmatic
    dependent of the weight gradient on sm_90 (and only there), 4 us for any other."""
    _, doc = report
    modelled = 0
    for r in doc["rows"]:
        assert r["programs"] >= 1 and 1 <= r["ctas_per_sm"] <= 32, r
        assert r.get("dependent_launch") == (r["arch"] == "sm_90" and r["kernel"] == "backward_input"), r
        if r["arch"] != "sm_90" or r["tensor_cores"] == "-" or r["idx64"]:
            continue
        assert r["k_loop"] > 0 and r["per_64cube"] > 0 and r["k_iterations"] >= 1, r
        if r["dtype"] == "fp32":  # float32 without TF32: no tensor-core rate modelled
            continue
        bounds = [r[f"{b}_us"] for b in ("dram", "l2", "issue", "tensor")]
        assert min(bounds) >= 0 and r["issue_us"] > 0 and r["tensor_us"] > 0, r
        assert r["modelled_us"] == pytest.approx(max(bounds) + (1.0 if r["dependent_launch"] else 4.0)), r
        assert r[f"{r['bound']}_us"] == max(bounds), r
        modelled += 1
    assert modelled


# The backward kernels' K-loop budget on sm_90 (16-bit, int32 offsets): twice what the forward's
# loop issues per unit of tensor-core work, in warp-instructions per 64^3 multiply-adds.
BACKWARD_LOOP_BUDGET = 832


def test_backward_k_loops_stay_within_twice_the_forwards_instructions(report):
    """Every backward tile a launch of the report's steps (ReLU as the step has it: the 2-D steps
    with, nnU-Net's without) can take on sm_90 in bf16 and fp16, channels_last, issues at most
    BACKWARD_LOOP_BUDGET warp-instructions per 64^3 multiply-adds."""
    _, doc = report
    relu = {c.name: c.relu for c in report_cases()}
    checked = [r for r in doc["rows"] if r["arch"] == "sm_90" and r["dtype"] in ("bf16", "fp16")
               and r["layout"] == "channels_last" and r["step_relu"] == relu[r["case"]] and not r["idx64"]
               and r["kernel"] in ("backward_input", "backward_weight", "backward_fused")]
    assert checked
    over = [(r["kernel"], r["case"], r["dtype"], r["layout"], r["config"], r["relu"], r["per_64cube"])
            for r in checked if r["per_64cube"] > BACKWARD_LOOP_BUDGET]
    assert not over, over


def test_report_models_each_step_against_its_floor_eager_and_compile(report):
    """The per-step table (MODELLED): each compiled step, 16-bit and TF32 dtypes and both layouts,
    forward, backward and a full training step, fused time as a percentage of the floor's."""
    _, doc = report
    rows = doc["steps"]["rows"]
    for case in CASES:
        for dtype in set(DTYPES) & {"bf16", "fp16", "tf32"}:
            for layout in LAYOUT_CHOICES:
                got = {r["direction"]: r for r in rows if (r["step"], r["dtype"], r["layout"]) == (case, dtype, layout)}
                assert set(got) == {"forward", "backward", "full"}, (case, dtype, layout)
                for r in got.values():
                    assert min(r["floor_us"], r["fused_us"], r["eager_us"], r["compile_us"]) > 0, r
                    assert r["pct_of_floor"] == pytest.approx(100 * r["floor_us"] / r["fused_us"]), r
                for key in ("floor_us", "eager_us", "compile_us"):
                    assert got["full"][key] == pytest.approx(got["forward"][key] + got["backward"][key])


def test_shared_memory_exactly_at_the_limit_passes_and_one_byte_more_fails():
    row = dict(kernel="forward", case="up3", dtype="bf16", layout="contiguous", config="64x64x32 w4 s4",
               arch="sm_80", error=None, shared=166912, shared_limit=166912, spill_stores=0)
    assert problems([row], 0) == []
    assert "shared memory" in problems([dict(row, shared=166913)], 0)[0]


@pytest.mark.parametrize("capability", [90, 80])
def test_tile_lists_and_pruning_per_class_and_arch(capability):
    limit = SHARED_MEMORY_LIMIT[capability]
    for kernel, classes in TILES.items():
        for operand_class_name in classes:
            tiles = configs.base_tiles(kernel, operand_class_name)
            element_size = 2 if operand_class_name.startswith("16-bit") else 4
            if capability < 90:
                skipped = configs.NOT_BEFORE_HOPPER.get(kernel, {}).get(operand_class_name, [])
                tiles = [t for t in tiles if t not in skipped]
            assert tiles and tiles_for(kernel, operand_class_name, capability)[-len(tiles):] == tiles
            fit = tiles_that_fit(kernel, operand_class_name, capability, limit)
            assert fit and all(shared_memory_bound(kernel, t, element_size) <= limit for t in fit)
            # Every 16-bit tile a dot runs on has K >= 16 (Triton's minimum for 16-bit operands).
            assert all(t[2] >= 16 for t in tiles)
    assert operand_class(2, "ieee") == "16-bit" and operand_class(2, "ieee", False) == "16-bit-nchw"
    assert operand_class(4, "tf32") == "tf32" and operand_class(4, "ieee", False) == "fp32-nchw"


def test_one_pass_backward_tiles_fit_and_narrow_as_the_columns_grow():
    """Each arch's list: more columns, a Cin tile no wider (the accumulator is columns x Cin
    tile), every tile within the arch's shared memory; a step with more columns than the last, or
    a GPU with too little shared memory, takes the two-kernel backward (None)."""
    for operands, by_arch in configs.FUSED_BACKWARD.items():
        for capability, tiles in by_arch.items():
            assert [t[0] for t in tiles] == sorted(t[0] for t in tiles)
            assert [t[1] for t in tiles] == sorted((t[1] for t in tiles), reverse=True)
            limit = SHARED_MEMORY_LIMIT[capability]
            for most, bm, bk, warps, stages in tiles:
                assert bk >= 16 and shared_memory_bound("backward_fused", (bm, most, bk, warps, stages), 2) <= limit
                assert configs.fused_backward_tile(operands, capability, most, limit)["BLOCK_M"] == bm
            assert configs.fused_backward_tile(operands, capability, tiles[-1][0] + 16, limit) is None
            assert configs.fused_backward_tile(operands, capability, 16, 1024) is None
    assert configs.fused_backward_tile("tf32", 90, 16, SHARED_MEMORY_LIMIT[90]) is None
    # An sm_89 GPU takes sm_80's list; 144 columns run as a 256-wide tile.
    assert configs.fused_backward_tile("16-bit", 89, 144, 101376)["BLOCK_N"] == 256


def test_a_triton_version_takes_its_own_list_where_one_is_given():
    for since, table in configs.FROM_TRITON.items():
        older = f"{since[0]}.{since[1] - 1}.0"
        for kernel, classes in table.items():
            for operand_class_name, tiles in classes.items():
                assert configs.base_tiles(kernel, operand_class_name, f"{since[0]}.{since[1]}.0") == tiles
                assert configs.base_tiles(kernel, operand_class_name, older) == TILES[kernel][operand_class_name]
    assert configs.base_tiles("forward", "16-bit", "3.9.0") == TILES["forward"]["16-bit"]


def test_light_tiles_only_for_inference_forward_with_int32_offsets_on_hopper():
    """The 256 x 128 forward tile spills when the forward writes mask bits, takes int64 offsets, or
    (with ReLU) has two taps along depth: only a launch with none of these tries it, and the
    autotuner keys on all three, so such a launch never reuses a light launch's choice."""
    light = configs.LIGHT_TILES["forward"]["16-bit"]
    assert tiles_for("forward", "16-bit", 90, light=True)[:len(light)] == light
    assert not set(light) & set(tiles_for("forward", "16-bit", 90))
    assert not set(light) & set(tiles_for("forward", "16-bit", 80, light=True))
    assert configs.light_variant(dict(WRITE_BITS=False, IDX64=False))
    assert not configs.light_variant(dict(WRITE_BITS=True, IDX64=False))
    assert not configs.light_variant(dict(WRITE_BITS=False, IDX64=True))
    assert not configs.light_variant(dict(WRITE_BITS=False, IDX64=False, KD=2))
    from unet_fast.kernels.up_concat_forward import up_concat_forward_kernel_autotuned as forward
    assert {"WRITE_BITS", "IDX64"} <= set(forward.keys)


def test_pruning_drops_a_tile_over_the_limit_on_sm80_only(monkeypatch):
    """A 16-bit forward tile whose bound (229,376 bytes) lies between sm_80's and sm_90's limits."""
    big = (256, 128, 64, 8, 3)
    assert SHARED_MEMORY_LIMIT[80] < shared_memory_bound("forward", big, 2) <= SHARED_MEMORY_LIMIT[90]
    monkeypatch.setitem(configs.TILES["forward"], "16-bit", [big, (64, 32, 64, 4, 4)])
    assert tiles_that_fit("forward", "16-bit", 90, SHARED_MEMORY_LIMIT[90]) == [big, (64, 32, 64, 4, 4)]
    assert tiles_that_fit("forward", "16-bit", 80, SHARED_MEMORY_LIMIT[80]) == [(64, 32, 64, 4, 4)]
    # None fits: the smallest is kept, so the launch reports the real shortfall.
    monkeypatch.setitem(configs.TILES["forward"], "16-bit", [big])
    assert tiles_that_fit("forward", "16-bit", 80, SHARED_MEMORY_LIMIT[80]) == [big]


def test_problems_flags_errors_overflow_and_spills():
    ok = dict(kernel="forward", case="up3", dtype="bf16", layout="contiguous", config="64x64x32 w4 s4",
              arch="sm_90", error=None, shared=1000, shared_limit=232448, spill_stores=0)
    assert problems([ok], 0) == []
    assert "does not compile" in problems([dict(ok, error="CompilationError: x")], 0)[0]
    assert "shared memory" in problems([dict(ok, shared=232449)], 0)[0]
    assert "spills 8 bytes" in problems([dict(ok, spill_stores=8)], 0)[0]
    assert problems([dict(ok, spill_stores=8)], 8) == []
    assert "atomic" in problems([dict(ok, atomics=2)], 0)[0]
    assert "scalar 16-bit" in problems([dict(ok, layout="channels_last", scalar_16bit_loads=4)], 0)[0]
    assert problems([dict(ok, scalar_16bit_loads=4)], 0) == []  # NCHW taps load element by element


def test_ptx_and_ptxas_readers():
    ptx = ("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {...};\n"
           "cp.async.cg.shared.global [ %r1 + 0 ], [ %rd2 + 0 ], 0x10, %r3;\n"
           "ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];\n"
           "@%p1 st.global.b16 [ %rd5 + 0 ], { %rs1 };\n"
           "@%p2 ld.global.b16 { %rs65 }, [ %rd23 + 0 ];\n"
           "ld.global.nc.L1::evict_last.u16 { %rs2 }, [ %rd7 + 0 ];\n"
           "ld.global.v2.b16 { %rs3, %rs4 }, [ %rd8 + 0 ];\n"
           "atom.global.add.f32 %f1, [ %rd9 ], %f2;\nred.global.add.f32 [ %rd9 ], %f2;\n")
    assert ptx_features(ptx) == dict(tensor_cores="wgmma", cp_async=1, widest_load=16, widest_store=2,
                                     scalar_16bit_loads=2, atomics=2)
    log = ("ptxas info    : Function properties for k\n"
           "    184 bytes stack frame, 176 bytes spill stores, 224 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers\n")
    assert ptxas_resources(log) == dict(registers=255, spill_stores=176, spill_loads=224)


def test_kernel_choices_name_every_triton_kernel_of_the_op():
    """--kernel's names are the op's Triton kernels, each up_concat_<name>_kernel, and nothing else."""
    from unet_fast.kernels import (up_concat_backward, up_concat_backward_fused, up_concat_backward_weight,
                                   up_concat_forward)
    found = {name for module in (up_concat_forward, up_concat_backward, up_concat_backward_weight,
                                 up_concat_backward_fused)
             for name in vars(module) if re.fullmatch(r"up_concat_\w+_kernel", name)}
    assert sorted(found) == sorted(KERNEL_NAMES) and len(KERNEL_CHOICES) == len(found)


def test_kernels_command_exits_1_when_a_row_is_over(monkeypatch, capsys):
    """The report's exit status, not only its rows: one config over the shared memory -> 1."""
    from unet_fast.cli import main
    from unet_fast.gpu import static_compile

    def one_row_over(capability, cases, dtypes, layouts, progress=None, int64=True, kernels=None):
        return [dict(kernel="forward", case="up3", dtype="bf16", layout="channels_last", config="64x64x32 w8 s4",
                     error=None, registers=128, spill_stores=0, spill_loads=0, shared=232449, shared_limit=232448)]

    monkeypatch.setattr(static_compile, "compile_report", one_row_over)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["kernels", "--arch", "sm_90", "--case", "up3", "--dtype", "bf16"]) == 1
    assert "needs 232449 bytes of shared memory" in capsys.readouterr().err
