"""The time model (kernels/time_model.py), the K-loop reader (unet_fast/gpu/sass.py) and the byte
model's step floors (kernels/byte_model.py), pinned on figures computed by hand.

MODELLED, NOT MEASURED: these check the arithmetic of the model, not a GPU."""
import pytest

from unet_fast.cases import CHECK_STEP, report_cases
from unet_fast.gpu import sass
from unet_fast.kernels import byte_model, time_model as tm

STEPS = {s.name: s for s in report_cases()}


def test_ctas_per_sm_takes_the_tightest_resource():
    # Registers: 145 per thread round up to 152; 152 x 32 = 4,864 per warp; 65,536 // 4,864 = 13 warps:
    # one 8-warp CTA. At 128 registers, 4,096 per warp: 16 warps, two CTAs.
    assert tm.ctas_per_sm(145, 8, 0) == 1
    assert tm.ctas_per_sm(128, 8, 0) == 2
    assert tm.ctas_per_sm(129, 8, 0) == 1  # 136 x 32 x 8 = 34,816: one CTA
    assert tm.ctas_per_sm(100, 4, 0) == 4  # 104 x 32 = 3,328 per warp: 19 warps (20 without the rounding)
    # Shared memory: 233,472 // (73,728 + 1,024) = 3 on sm_90; 167,936 // 74,752 = 2 on sm_80.
    assert tm.ctas_per_sm(64, 8, 73728) == 3
    assert tm.ctas_per_sm(64, 8, 73728, capability=80) == 2
    # Warps: 8 warps of 32 registers: registers allow 64 warps, 64 // 8 = 8 CTAs.
    assert tm.ctas_per_sm(32, 8, 0) == 8
    # CTAs: one-warp CTAs stop at 32.
    assert tm.ctas_per_sm(32, 1, 0) == 32


def test_waves_and_issue_efficiency():
    assert tm.waves(264, 2) == pytest.approx(1.0)
    assert tm.waves(264, 2, tm.SMS_PCIE) == pytest.approx(264 / 228)
    assert [tm.issue_efficiency(w) for w in (1, 2, 3, 4, 6)] == [0.5, 0.7, 0.85, 1.0, 1.0]


# A K loop of 100 instructions per warp, 10 iterations of 64^3 multiply-adds, 50 instructions outside
# it, 4 warps, 2 CTAs per SM, 264 programs: 2 per SM.
LOOP = dict(programs=264, gemm_programs=264, k_iterations=10, loop_instructions=100, loop_macs=64 ** 3,
            outside_instructions=50, warps=4, ctas=2)
# Issue: each SM runs 2 programs of 4 warps x (100 x 10 + 50) warp-instructions = 8,400 over 4
# schedulers with 2 warps each (70% of the slots): 2,100 / (1.75e9 x 0.7) s.
ISSUE_S = 2100 / (1.75e9 * 0.7)
# Tensor cores: 2 programs x 10 x 64^3 multiply-adds x 2 FLOPs at 800e12 / 132 FLOP/s per SM.
TENSOR_S = 2 * 10 * 64 ** 3 * 2 / (800e12 / 132)


def test_kernel_time_is_the_largest_bound_plus_a_launch():
    t = tm.kernel_time(dram_bytes=0, l2_bytes=0, **LOOP)
    assert t["issue"] == pytest.approx(ISSUE_S) and t["tensor"] == pytest.approx(TENSOR_S)
    assert t["warps_per_scheduler"] == 2 and t["bound"] == "tensor"
    assert t["seconds"] == pytest.approx(TENSOR_S + 4e-6)
    # Each bound in turn the largest.
    dram = tm.kernel_time(dram_bytes=3.0e12 * 5e-6, l2_bytes=0, **LOOP)
    assert dram["bound"] == "dram" and dram["seconds"] == pytest.approx(5e-6 + 4e-6)
    l2 = tm.kernel_time(dram_bytes=3.0e12 * 5e-6, l2_bytes=7.0e12 * 6e-6, **LOOP)
    assert l2["bound"] == "l2" and l2["seconds"] == pytest.approx(6e-6 + 4e-6)
    issue = tm.kernel_time(dram_bytes=0, l2_bytes=0, **dict(LOOP, loop_instructions=1000))
    assert issue["bound"] == "issue"
    assert issue["issue"] == pytest.approx(2 * 4 * (1000 * 10 + 50) / 4 / (1.75e9 * 0.7))


def test_a_programmatic_dependent_launch_costs_1us_not_4():
    """The same bounds; only the launch term differs (time_model.DEPENDENT_LAUNCH_S)."""
    plain = tm.kernel_time(dram_bytes=3.0e12 * 5e-6, l2_bytes=7.0e12 * 6e-6, **LOOP)
    dependent = tm.kernel_time(dram_bytes=3.0e12 * 5e-6, l2_bytes=7.0e12 * 6e-6, dependent=True, **LOOP)
    assert dependent["bound"] == plain["bound"] == "l2"
    assert plain["seconds"] == pytest.approx(6e-6 + 4e-6)
    assert dependent["seconds"] == pytest.approx(6e-6 + 1e-6)


def test_a_partial_wave_costs_a_whole_one_and_one_warp_per_scheduler_is_derated():
    one_each = tm.kernel_time(dram_bytes=0, l2_bytes=0, **dict(LOOP, programs=132, gemm_programs=132))
    # 132 programs: one per SM, one warp per scheduler (50% of the slots).
    assert one_each["warps_per_scheduler"] == 1
    assert one_each["issue"] == pytest.approx(4 * 1050 / 4 / (1.75e9 * 0.5))
    # One program more: some SM runs two, at two warps per scheduler.
    one_more = tm.kernel_time(dram_bytes=0, l2_bytes=0, **dict(LOOP, programs=133, gemm_programs=133))
    assert one_more["issue"] == pytest.approx(ISSUE_S)
    assert one_more["tensor"] == pytest.approx(2 * one_each["tensor"])


def test_copy_programs_add_their_share_of_the_outside_code():
    t = tm.kernel_time(dram_bytes=0, l2_bytes=0, **dict(LOOP, programs=264 + 132))
    # 132 copy programs: one more per SM running its 50 warp-instructions per warp; still 2 CTAs
    # resident at a time (ctas=2).
    assert t["issue"] == pytest.approx((2 * 1050 + 50) * 4 / 4 / (1.75e9 * 0.7))


def test_k_iterations_and_gemm_programs_follow_the_tile():
    up3 = STEPS["up3"]  # x [8, 512, 64, 64] -> 256 + 256, 2x2
    assert tm.k_iterations("forward", up3, (128, 64, 64)) == 8                # 512 / 64
    assert tm.k_iterations("backward_input", up3, (128, 64, 64)) == 16        # 4 taps x 256 / 64
    # The weight gradient: 8 images x 4096 pixels in blocks of 64 = 512, over the launch's splits.
    assert tm.k_iterations("backward_weight", up3, (64, 64, 64)) == 512
    assert tm.k_iterations("backward_weight", up3, (64, 64, 64), dict(S_LO=16, BLOCK_W=64)) == 32
    assert tm.k_iterations("backward_weight", up3, (64, 64, 64), dict(S_LO=3)) == 171
    assert tm.k_iterations("backward_weight", up3, (64, 64, 64), dict(BLOCKS_PER_SPLIT=256)) == 256
    # 8 images x 4096 / 128 row blocks x 4 taps x 256 / 64 Cout tiles; dx: x 512 / 64 Cin tiles.
    assert tm.gemm_programs("forward", up3, (128, 64, 64), 8192) == 4096
    assert tm.gemm_programs("backward_input", up3, (128, 64, 64), 6144) == 2048
    assert tm.gemm_programs("backward_weight", up3, (64, 64, 64), 256) == 256


def test_eager_and_compile_bytes_of_the_deep_2d_step():
    """up3 in bf16: x 33,554,432 bytes, w 1,048,576, bias 512, y (upsampled) 67,108,864, skip
    67,108,864. Eager forward: the convolution (x + w + bias + y), cat (reads y and skip, writes
    both) and ReLU (reads and writes the output); torch.compile: cat and ReLU in one copy."""
    up3 = STEPS["up3"]
    x, w, bias, y, skip = 33554432, 1048576, 512, 67108864, 67108864
    eager = dict((name, b) for name, b, _ in tm.eager_passes(up3, "forward"))
    assert eager == dict(conv_transpose=x + w + bias + y, cat=2 * (y + skip), relu=2 * (y + skip))
    compiled = dict((name, b) for name, b, _ in tm.compile_passes(up3, "forward"))
    assert compiled == dict(conv_transpose=x + w + bias + y, cat_relu=2 * (y + skip))
    fused = byte_model.step_floor(up3, "forward")
    assert sum(eager.values()) / fused == pytest.approx(2.71, abs=0.01)
    assert sum(compiled.values()) / fused == pytest.approx(1.57, abs=0.01)
    backward = dict((name, b) for name, b, _ in tm.eager_passes(up3, "backward"))
    # cat's backward gives views: the skip's gradient stays one, cuDNN copies the upsampled slice.
    assert backward == dict(threshold_backward=3 * (y + skip), split_copy=2 * y,
                            conv_data_grad=y + w + x, conv_weight_grad=y + x + w, bias_sum=y + bias)
    flops = 2 * 32768 * 512 * 256 * 4
    assert {f for _, _, f in tm.eager_passes(up3, "backward")} == {0, flops}
    # Each pass: max(bytes at 3.0 TB/s, FLOPs at 800 TFLOP/s) + 4 us.
    assert tm.pass_time(y + w + x, flops) == pytest.approx(flops / 800e12 + 4e-6)
    assert tm.pass_time(2 * (y + skip)) == pytest.approx(2 * (y + skip) / 3.0e12 + 4e-6)


def test_percent_of_floor_is_shown_rounded_down():
    """A figure shown as 60.0% is at least 60%: 59.9987% (up3's backward at 154.96 us of a 92.97 us
    floor) shows as 59.9%."""
    assert tm.percent_shown(100 * 92.97390933 / 154.95987200) == "59.9%"
    assert [tm.percent_shown(p) for p in (60.0, 86.66, 100.0, 7.449)] == ["60.0%", "86.6%", "100.0%", "7.4%"]


def test_step_table_row_compares_against_the_floor():
    up1 = STEPS["up1"]
    floor = byte_model.step_floor(up1, "forward") / 3.0e12
    row = tm.step_table_row(up1, "forward", 2 * floor)
    assert row["floor_us"] == pytest.approx(floor * 1e6) and row["pct_of_floor"] == pytest.approx(50)
    full = tm.step_table_row(up1, "full", floor)
    assert full["floor_us"] == pytest.approx((byte_model.step_floor(up1, "forward")
                                              + byte_model.step_floor(up1, "backward")) / 3.0e12 * 1e6)
    assert full["eager_us"] == pytest.approx(tm.step_table_row(up1, "forward", 1)["eager_us"]
                                             + tm.step_table_row(up1, "backward", 1)["eager_us"])


def test_step_floors_of_up1_and_3d1_by_hand():
    """bf16. up1: x [8, 128, 256, 256] -> 64 + 64 at 512^2, ReLU: 524,288 input pixels, 2,097,152
    output pixels. 3d1: x [2, 64, 64^3] -> 32 + 32 at 128^3, no ReLU: 524,288 and 4,194,304."""
    up1, d31 = STEPS["up1"], STEPS["3d1"]
    # Forward: x + out's upsampled channels + skip read and written + w.
    assert byte_model.step_floor(up1, "forward") == 2 * 524288 * 128 + 2 * 2097152 * (64 + 2 * 64) + 2 * 128 * 64 * 4
    assert byte_model.step_floor(up1, "forward") == 939589632
    assert byte_model.step_floor(d31, "forward") == 872448000
    # Backward: grad (128 channels), the ReLU mask as bits (128 channels / 8), x read and dx
    # written, dskip, w read and dW written, dbias.
    mask = 2097152 * 128 // 8
    assert mask == 33554432
    assert byte_model.step_floor(up1, "backward") == (2 * 2097152 * 128 + mask + 2 * (2 * 524288 * 128)
                                                      + 2 * 2097152 * 64 + 2 * (2 * 128 * 64 * 4) + 2 * 64)
    assert byte_model.step_floor(up1, "backward") == 1107427456
    assert byte_model.step_floor(up1, "backward", has_bias=False) == 1107427456 - 128
    # No ReLU: no mask, and the skip's gradient is a view of grad (its 64 channels neither read
    # nor written as dskip).
    skip_part = 2 * 2097152 * 64
    assert byte_model.step_floor(up1, "backward", relu=False) == 1107427456 - mask - 2 * skip_part
    # 3d1: the upsampled 32 channels of grad, x read and dx written, w read and dW written, dbias.
    assert byte_model.step_floor(d31, "backward") == (2 * 4194304 * 32 + 2 * (2 * 524288 * 64)
                                                      + 2 * (2 * 64 * 32 * 8) + 2 * 32)
    assert byte_model.step_floor(d31, "backward") == 402718784


# cuobjdump -sass lines: an outer loop (0x0040..0x0100) holding the K loop (0x0060..0x00c0).
SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;                  /* 0x00000a0000017a02 */
        /*0040*/                   IADD3 R2, R2, 0x1, RZ ;                 /* 0x0000000102027810 */
        /*0060*/                   LDS.128 R4, [R3] ;                      /* 0x0000000003047984 */
        /*0070*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8].tnspB, R24 ;  /* 0x40e00000081879f0 */
        /*0080*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR12], R24, gsb0 ;  /* 0x40e000000c1879f0 */
        /*0090*/                   IADD3 R3, R3, 0x80, RZ ;                /* 0x0000008003037810 */
        /*00a0*/                   ISETP.GE.AND P0, PT, R3, R5, PT ;       /* 0x000000050300720c */
        /*00b0*/                   NOP ;                                   /* 0x0000000000007918 */
        /*00c0*/               @!P0 BRA 0x60 ;                             /* 0xfffffffc00008947 */
        /*00d0*/                   STG.E.128 desc[UR4][R6.64], R8 ;        /* 0x0000000806007986 */
        /*0100*/               @P1 BRA 0x40 ;                              /* 0xfffffff800001947 */
        /*0110*/                   EXIT ;                                  /* 0x000000000000794d */
"""


def test_k_loop_is_the_smallest_backward_branch_around_a_tensor_core_instruction():
    loop = sass.k_loop(SASS, 4)
    # 0x60..0xc0: 7 instructions per warp; 2 HGMMA.64x64x16 per warpgroup of 4 warps: 2 x 65,536
    # multiply-adds for the CTA; 7 x 4 warp-instructions per 131,072 -> 7 x 4 x 2 per 64^3.
    assert loop == dict(instructions=7, mma=2, macs=2 * 64 * 64 * 16, per_64cube=56.0)
    # With 8 warps (two warpgroups) the CTA does twice the multiply-adds per iteration.
    assert sass.k_loop(SASS, 8)["macs"] == 4 * 64 * 64 * 16
    assert len(sass.instructions(SASS)) == 12
    assert sass.k_loop(SASS.replace("HGMMA", "HFMA2"), 4) is None  # no tensor-core loop


def test_weight_gradient_split_and_kernel_bytes_of_up1_and_3d1_by_hand():
    """The byte model of each kernel, bf16, on 132 SMs. up1: Cin 128, Cout 64 + 64, 4 taps, ReLU;
    3d1: Cin 64, Cout 32 + 32, 8 taps, no ReLU; both 524,288 input pixels."""
    up1, d31 = STEPS["up1"], STEPS["3d1"]
    # The weight gradient's tile, Cin x (tap, Cout) columns: the first no wider than 128 or the step
    # needs. up1 (128 x 256) and 3d1 (64 x 256): 256 x 128 is too tall, 128 x 256 fits.
    assert byte_model.weight_grad_tile(up1) == byte_model.weight_grad_tile(d31) == (128, 256, 32)
    assert byte_model.weight_grad_tile(STEPS["up3"]) == (256, 128, 32)
    assert byte_model.weight_grad_tile(CHECK_STEP) == (128, 128, 64)  # 24 Cin x 4 taps x 16 columns
    # Tiles: 1 x 1 each. Programs: the fewest whole waves of 132 holding every tile, one wave
    # (16,384 pixel blocks of 32: no range under 4 of them).
    assert byte_model.weight_grad_splits(up1, (128, 256, 32)) == (1, 132, 0)
    assert byte_model.weight_grad_splits(d31, (128, 256, 32)) == (1, 132, 0)
    # 320 Cin x 2560 columns over 4 blocks (3d5: 128 pixels): two ranges a tile, the least.
    assert byte_model.weight_grad_splits(STEPS["3d5"], (256, 128, 32)) == (40, 2, 0)
    assert byte_model.weight_grad_layout(40, 12, 132) == (3, 0)    # 12 blocks: ranges of 4
    assert byte_model.weight_grad_layout(40, 1, 132) == (1, 0)     # 1 block: dW stored directly
    # up3's 16 tiles: 8 ranges each; a ninth on 4 of them (132 programs) would shorten theirs, not
    # the longest. Several waves: the extra ranges fill the last one.
    assert byte_model.weight_grad_layout(16, 1024, 132) == (8, 0)
    assert byte_model.weight_grad_layout(16, 1000, 132) == (8, 0)   # 125 blocks the longest: 8 ranges
    assert byte_model.weight_grad_layout(40, 1000, 132) == (3, 0)   # 132 // 40 = 3: 334 blocks
    assert byte_model.weight_grad_layout(13, 100, 132) == (10, 0)   # 132 // 13 = 10: 10 blocks
    assert byte_model.weight_grad_layout(12, 90, 132) == (10, 0)    # 11 ranges, 9 blocks: 10 keep 9
    assert byte_model.weight_grad_layout(200, 1000, 132) == (1, 64)  # 264 programs, two waves
    assert byte_model.weight_grad_layout(200, 4, 132, 2) == (1, 64)  # one wave, every tile on partials
    # Partials, fp32, one [Cin, T, Cout] and one [T, Cout] per split.
    assert byte_model.weight_grad_partials(up1, (128, 256, 32), True) == (4 * 128 * 4 * 64 * 132, 4 * 4 * 64 * 132)
    assert byte_model.weight_grad_partials(up1, (128, 256, 32), True) == (17301504, 135168)
    assert byte_model.weight_grad_partials(d31, (128, 256, 32), False) == (4 * 64 * 8 * 32 * 132, 0)
    x, up, skip = 2 * 524288 * 128, 2 * 2097152 * 64, 2 * 2097152 * 64   # up1's tensors
    w, bias = 2 * 128 * 64 * 4, 2 * 64
    mask = 2097152 * 128 // 8              # the ReLU mask as bits, both channel groups
    conv_bits = 2097152 * 64 // 8          # of the upsampled channels
    forward = byte_model.kernel_bytes("forward", up1)
    # The training forward also writes the mask bits.
    assert (forward["moved"], forward["floor"]) == (x + w + bias + up + 2 * skip + mask, x + up + 2 * skip + w + mask)
    assert forward["floor"] == 973144064
    backward_input = byte_model.kernel_bytes("backward_input", up1)
    # Reads grad (both parts), the mask bits, w and x; writes dx and dskip; its first programs sum
    # the weight gradient's 17.4 MB of partials (under the 25 MB that stay in L2: no DRAM bytes)
    # and write dW and dbias.
    assert backward_input["moved"] == backward_input["floor"] == up + skip + mask + w + x + skip + w + bias
    assert backward_input["moved"] == 973144064 + w + bias
    assert backward_input["l2_bytes"] == (up + conv_bits + 2 * skip + (mask - conv_bits) + w * 4096 + x
                                          + 17301504 + 135168 + w + bias)  # 4096 row blocks of 128 pixels
    # Before Hopper the launch leaves the sum to weight_reduce: neither its bytes nor its floor.
    alone = byte_model.kernel_bytes("backward_input", up1, sums_partials=False)
    assert alone["moved"] == alone["floor"] == up + skip + mask + w + x + skip == 973144064
    assert alone["l2_bytes"] == backward_input["l2_bytes"] - (17301504 + 135168 + w + bias)
    # Without a ReLU, no copy programs: grad's upsampled channels, w, dx (and dW, dbias).
    unmasked = byte_model.kernel_bytes("backward_input", up1, relu=False)
    assert unmasked["moved"] == unmasked["floor"] == up + w + x + w + bias
    backward_weight = byte_model.kernel_bytes("backward_weight", up1)
    # Reads x, the upsampled grad and its mask bits; writes the partials.
    assert backward_weight["moved"] == x + up + conv_bits + 17301504 + 135168 == 436867072
    assert backward_weight["floor"] == x + up + conv_bits + w
    # x once per column tile (1), grad and its bits once per Cin tile (1), the partials written.
    assert backward_weight["l2_bytes"] == x + up + conv_bits + 17301504 + 135168
    assert byte_model.kernel_bytes("weight_reduce", d31, has_bias=False)["moved"] == 2 * 64 * 32 * 8  # in L2


def test_one_pass_backward_route_splits_and_bytes_of_3d1_and_3d2_by_hand():
    """Without ReLU a step whose (tap, Cout) columns fit 256 takes the 64-Cin tile, 512 the 32-Cin
    one; one wave of 132 programs over the Cin tiles. 3d1: Cin 64, Cout 32, 8 taps (256 columns),
    524,288 input pixels; 3d2: Cin 128, Cout 64 (512 columns), 65,536 pixels."""
    d31, d32, up1, d35 = STEPS["3d1"], STEPS["3d2"], STEPS["up1"], STEPS["3d5"]
    assert byte_model.fused_tile(d31) == (64, 256, 64) and byte_model.fused_tile(d32) == (32, 512, 64)
    assert byte_model.backward_kernels(d31) == ("backward_fused", "weight_reduce")
    assert byte_model.backward_kernels(up1) == ("backward_weight", "backward_input")  # ReLU; the second sums dW
    assert byte_model.backward_kernels(up1, relu=False)[0] == "backward_fused"   # 4 x 64 columns
    assert byte_model.fused_tile(d35) is None                                       # 8 x 320 columns
    assert byte_model.fused_backward_splits(1, 8192, 132) == 132
    assert byte_model.fused_backward_splits(4, 1024, 132) == 33
    assert byte_model.fused_backward_splits(4, 10, 132) == 10      # never a range under one block
    # 2 images x 64^3 pixels in blocks of 64 = 8192 over 132 splits.
    assert tm.k_iterations("backward_fused", d31, (64, 256, 64), dict(S=132, BLOCK_W=64)) == 63
    x, up, w = 2 * 524288 * 64, 2 * 4194304 * 32, 2 * 64 * 32 * 8
    dw_part, db_part = 4 * 64 * 8 * 32 * 132, 4 * 8 * 32 * 132
    assert byte_model.fused_partials(d31, (64, 256, 64), True) == (dw_part, db_part)
    fused = byte_model.kernel_bytes("backward_fused", d31)
    # Reads grad's upsampled channels, x and w once; writes dx and the partials.
    assert fused["moved"] == up + 2 * x + w + dw_part + db_part == 411471872
    assert fused["floor"] == up + 2 * x + w
    assert fused["l2_bytes"] == up + 2 * x + 132 * w + dw_part + db_part
    # 3d2: four Cin tiles read each gy tile (once from DRAM, four times from L2).
    x2, up2, w2 = 2 * 65536 * 128, 2 * 524288 * 64, 2 * 128 * 64 * 8
    fused2 = byte_model.kernel_bytes("backward_fused", d32, has_bias=False)
    assert fused2["moved"] == up2 + 2 * x2 + w2 + 4 * 128 * 8 * 64 * 33
    assert fused2["l2_bytes"] == 4 * up2 + 2 * x2 + 33 * w2 + 4 * 128 * 8 * 64 * 33
    # The reduction sums the one-pass partials (8.8 MB: in L2) and writes dW and dbias.
    assert byte_model.kernel_bytes("weight_reduce", d31)["moved"] == w + 2 * 32
    rows = {r["kernel"]: r for r in byte_model.step_rows(d31)}
    assert "backward_input" not in rows and rows["backward total"]["moved"] == pytest.approx(
        sum(rows[k]["moved"] for k in ("weight_pack", "backward_fused", "weight_reduce")))
