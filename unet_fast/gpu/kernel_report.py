"""Compile every Triton kernel for a GPU (no GPU needed) and report registers, spills, shared memory.

STATIC ANALYSIS, NOT A TIMING. For each architecture (--arch), decoder step (--case), dtype and
layout, the op's own launchers run on empty tensors with Triton pointed at that GPU, so each
kernel is compiled with exactly the specializations and the configs (after pruning) that a launch
there would use. One row per kernel, case, dtype, layout and config: registers per thread and
spill bytes (ptxas -v), shared memory against the architecture's limit, the tensor-core
instruction (wgmma on sm_90, mma), async copies (cp.async), the widest global load and store in
bytes, scalar 16-bit global loads, atomics, and the compile time. dtype "tf32" is float32 with
cudnn.allow_tf32 (PyTorch's default); "fp32" is float32 without it. Each step is compiled with
ReLU and bias and with neither, and each of those with int64 offsets (IDX64) forced on and off
(--no-int64: off alone). --kernel compiles some kernels only (then no per-step table).
Beside each row, the kernel's byte model (kernels/byte_model.py): DRAM bytes moved as written
against the floor, the ratio, and the implied H100 / H200 time range -- MODELLED, NOT MEASURED.
Beside those, the time model of an H100 SXM (kernels/time_model.py, MODELLED, NOT MEASURED): the
grid, CTAs per SM, waves on 132 and 114 SMs, the K loop's SASS instructions per warp and per 64^3
multiply-adds (sm_90, read with cuobjdump), L2 bytes, the binding bound and the modelled time; and
after the rows, per step and direction (forward, backward, a full training step), the floor's time,
the fused op's modelled time and its percentage of the floor's speed, and eager and torch.compile
modelled the same way.

Steps: the default UNet's 2-D steps up3, up2, up1 (batch 8) and nnU-Net's 3-D steps 3d5 ... 3d1
plus the anisotropic 3da (batch 2): unet_fast.cases.report_cases.

Exit status 1 when a kernel fails to compile, needs more shared memory than the architecture has,
spills more than --max-spill bytes, has an atomic instruction, or (16-bit channels_last) loads a
16-bit element on its own.

Examples:
    unet-fast kernels --arch sm_90 --arch sm_80
    unet-fast kernels --arch sm_90 --dtype bf16 --layout channels_last --json static-sm90.json
    unet-fast kernels --case 3d2 --kernel backward_fused --no-int64
"""
import datetime
import json
import sys

from unet_fast import names
from unet_fast.cli import non_negative_int
from unet_fast.errors import InputError
from unet_fast.kernels.time_model import percent_shown
from unet_fast.workflow.atomic_write import atomic_write_text, check_report_file

DTYPE_CHOICES = ("fp32", "tf32", "bf16", "fp16")
LAYOUT_CHOICES = tuple(names.LAYOUTS)
KERNEL_CHOICES = ("forward", "backward_input", "backward_weight", "weight_reduce", "backward_fused")
CASE_CHOICES = ("up3", "up2", "up1", "3d5", "3d4", "3d3", "3d2", "3d1", "3da")  # cases.report_cases()
# Spill bytes per thread allowed in a launchable config. Zero: every config in kernels/configs.py
# was chosen to fit the register file (benchmarks/NOTES.md has the before and after).
MAX_SPILL_BYTES = 0
COLUMNS = (("kernel", "{}"), ("case", "{}"), ("dtype", "{}"), ("layout", "{}"), ("config", "{}"),
           ("relu", "{}"), ("has_bias", "{}"), ("idx64", "{}"), ("write_bits", "{}"),
           ("registers", "{}"), ("spill_stores", "{}"), ("shared", "{}"), ("shared_limit", "{}"),
           ("tensor_cores", "{}"), ("cp_async", "{}"), ("widest_load", "{}"), ("widest_store", "{}"),
           ("scalar_16bit_loads", "{}"), ("atomics", "{}"), ("compile_s", "{:.1f}"),
           ("moved_mb", "{:.1f}"), ("floor_mb", "{:.1f}"), ("x_floor", "{:.2f}"), ("h100_us", "{}"),
           ("h200_us", "{}"), ("programs", "{}"), ("ctas_per_sm", "{}"), ("waves", "{}"), ("k_loop", "{}"),
           ("per_64cube", "{:.0f}"), ("l2_mb", "{:.1f}"), ("bound", "{}"), ("modelled_us", "{:.1f}"))
# Each column's formatter; the percentage of the floor is rounded down (percent_shown).
STEP_COLUMNS = (("step", str), ("dtype", str), ("layout", str), ("direction", str), ("floor_us", "{:.1f}".format),
                ("fused_us", "{:.1f}".format), ("pct_of_floor", percent_shown), ("eager_us", "{:.1f}".format),
                ("compile_us", "{:.1f}".format))
SIXTEEN_BIT = ("bf16", "fp16")
# The fused op's backward launches: the two-kernel backward (backward_input sums the weight
# gradient's partials itself), or the one-pass backward of a step without ReLU and weight_reduce,
# absent when nothing is left to reduce (kernels/byte_model.py backward_kernels).
BACKWARD_KERNELS = ("backward_weight", "backward_input", "backward_fused", "weight_reduce")
BACKWARD_ROUTES = (("backward_weight", "backward_input"), ("backward_fused",))


def _choices(text, choices, option, canonical=None):
    try:
        return names.parse_list(text, choices, option, canonical)
    except ValueError as e:
        raise InputError(str(e)) from None


def add_arguments(parser) -> None:
    parser.add_argument("--arch", action="append", metavar="sm_XX",
                        help="GPU architecture to compile for: sm_90 (H100, H200) or sm_80 (A100); "
                             "repeatable (default sm_90)")
    parser.add_argument("--case", default=",".join(CASE_CHOICES),
                        help="decoder steps: the default UNet's 2-D ones at batch 8 from 512x512 (up3, up2, "
                             "up1) and nnU-Net's 3-D ones at batch 2 (3d5 ... 3d1, 3da) (default all)")
    parser.add_argument("--dtype", default=",".join(DTYPE_CHOICES), help="comma list (default all)")
    parser.add_argument("--layout", default=",".join(LAYOUT_CHOICES), help="comma list (default both)")
    parser.add_argument("--kernel", default=",".join(KERNEL_CHOICES),
                        help="kernels to compile, comma list (default all: " + ", ".join(KERNEL_CHOICES) + ")")
    parser.add_argument("--no-int64", dest="int64", action="store_false",
                        help="leave out the variants with int64 offsets forced on (the ones a tensor of "
                             "2**31 elements or more launches; compiled by default)")
    parser.add_argument("--max-spill", type=non_negative_int, default=MAX_SPILL_BYTES,
                        help=f"spill bytes per thread above which a row fails (default {MAX_SPILL_BYTES})")
    parser.add_argument("--json", metavar="FILE", help="also write the rows, with versions and commit")


def problems(rows, max_spill: int) -> list:
    """What makes a row fail: a compile error, shared memory over the limit, spills over the bound,
    an atomic instruction, a scalar 16-bit global load in a 16-bit channels_last kernel."""
    found = []
    for r in rows:
        where = f"{r['kernel']} {r['case']} {r['dtype']} {r['layout']} {r['config']} on {r['arch']}"
        if r["error"]:
            found.append(f"{where}: does not compile: {r['error']}")
            continue
        if r["shared"] > r["shared_limit"]:
            found.append(f"{where}: needs {r['shared']} bytes of shared memory, the GPU has {r['shared_limit']}")
        if (r["spill_stores"] or 0) > max_spill:
            found.append(f"{where}: spills {r['spill_stores']} bytes per thread (bound {max_spill})")
        if r.get("atomics"):
            found.append(f"{where}: {r['atomics']} atomic instructions (the kernels must be deterministic)")
        if r.get("scalar_16bit_loads") and r["dtype"] in SIXTEEN_BIT and r["layout"] == "channels_last":
            found.append(f"{where}: {r['scalar_16bit_loads']} scalar 16-bit global loads")
    return found


def format_static_table(rows) -> str:
    head = [name for name, _ in COLUMNS]
    cells = [[("-" if r.get(k) is None else fmt.format(r[k])) if not r.get("error") or k in head[:5]
              else "ERROR" for k, fmt in COLUMNS] for r in rows]
    widths = [max(len(c) for c in col) for col in zip(head, *cells)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def step_table(rows, cases) -> list:
    """Per step (sm_90 rows, each dtype and layout) and direction: the floor, the fused op, eager and
    torch.compile, all modelled (kernels/time_model.py). The step's own variant (ReLU and bias as
    the step has them), int32 offsets; of a kernel's configs the one modelled fastest, as the
    autotuner would keep the fastest. 'full' is a training step: its forward also writes the mask."""
    from unet_fast.kernels import time_model
    by_name = {c.name: c for c in cases}
    best = {}
    for r in rows:
        step = by_name.get(r.get("case"))
        if (r.get("arch") != "sm_90" or r.get("idx64") or r.get("modelled_us") is None or step is None
                or r.get("step_relu") != step.relu):
            continue
        kernels = best.setdefault((r["case"], r["dtype"], r["layout"], r["step_bias"]), {})
        key = (r["kernel"], bool(r.get("write_bits")))
        kernels[key] = min(kernels.get(key, float("inf")), r["modelled_us"] * 1e-6)
    table = []
    for (case, dtype, layout, has_bias), kernels in best.items():
        step, elem = by_name[case], names.DTYPES[dtype][0].itemsize
        if ("forward", False) not in kernels or not any(all((k, False) in kernels for k in route)
                                                       for route in BACKWARD_ROUTES):
            continue
        forward = kernels[("forward", False)]
        backward = sum(kernels.get((k, False), 0.0) for k in BACKWARD_KERNELS)
        training_forward = kernels.get(("forward", True), forward)
        for direction, fused in (("forward", forward), ("backward", backward), ("full", training_forward + backward)):
            row = time_model.step_table_row(step, direction, fused, elem, dtype, has_bias=has_bias)
            table.append(dict(row, dtype=dtype, layout=layout))
    return table


def format_step_table(table) -> str:
    head = [name for name, _ in STEP_COLUMNS]
    cells = [[fmt(r[k]) for k, fmt in STEP_COLUMNS] for r in table]
    widths = [max(len(c) for c in col) for col in zip(head, *cells)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def run(args) -> int:
    if args.json:  # now, not after the compiles
        check_report_file(args.json, "--json")
    from unet_fast.cases import report_cases
    from unet_fast.bench.environment import git_commit, triton_version
    from unet_fast.kernels.offline_target import parse_arch
    try:
        arches = [parse_arch(a) for a in (args.arch or ["sm_90"])]
    except ValueError as e:
        raise InputError(str(e)) from e
    chosen = _choices(args.case, CASE_CHOICES, "--case")
    cases = [s for s in report_cases() if s.name in chosen]
    dtypes = _choices(args.dtype, DTYPE_CHOICES, "--dtype", names.dtype_name)
    layouts = _choices(args.layout, LAYOUT_CHOICES, "--layout", names.layout_name)
    kernels = _choices(args.kernel, KERNEL_CHOICES, "--kernel")
    from unet_fast.gpu.static_compile import compile_report
    rows = []
    for arch in arches:
        try:
            arch_rows = compile_report(arch, cases, dtypes, layouts, int64=args.int64, kernels=kernels,
                                       progress=lambda s: print(f"compiled {s}", file=sys.stderr, flush=True))
        except RuntimeError as e:
            raise InputError(str(e)) from e
        rows += [dict(r, arch=f"sm_{arch}") for r in arch_rows]
    print("Static analysis (compiled on this machine for the GPU, not run, not timed); "
          f"triton {triton_version()}, commit {git_commit()}")
    print("moved_mb / floor_mb / x_floor / h100_us / h200_us: the byte model (kernels/byte_model.py), "
          "modelled, not measured")
    print("programs / ctas_per_sm / waves (on 132/114 SMs) / k_loop (SASS per warp of the K loop) / per_64cube "
          "(warp-instructions per 64^3 multiply-adds) / l2_mb / bound / modelled_us: the time model of an H100 SXM "
          "(kernels/time_model.py), modelled, not measured")
    for arch in arches:
        print(f"\nsm_{arch}:")
        print(format_static_table([r for r in rows if r["arch"] == f"sm_{arch}"]))
    # A step's modelled time sums all its kernels: with some left out there is no per-step table.
    steps = step_table(rows, cases) if set(kernels) == set(KERNEL_CHOICES) else []
    if steps:
        print("\nPer step on an H100 SXM, MODELLED, NOT MEASURED (kernels/time_model.py): floor = the step's floor "
              "bytes at 3.0 TB/s; fused = the sum of its kernels' modelled times (each kernel's fastest config); "
              "pct_of_floor = floor / fused; eager and torch.compile modelled pass by pass")
        print(format_step_table(steps))
    found = problems(rows, args.max_spill)
    if args.json:
        meta = dict(kind="static analysis: compiled for the GPU on a CPU, not run, not timed",
                    triton=triton_version(), commit=git_commit(), arches=[f"sm_{a}" for a in arches],
                    max_spill=args.max_spill, kernels=kernels, int64=args.int64, problems=found,
                    date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        steps_doc = dict(kind="modelled, not measured (kernels/time_model.py)", rows=steps)
        atomic_write_text(args.json, json.dumps({"meta": meta, "rows": rows, "steps": steps_doc}, indent=1) + "\n")
    for line in found:
        print(f"FAIL {line}", file=sys.stderr)
    print(f"\n{len(rows)} kernels compiled, {len(found)} problems", file=sys.stderr)
    return 1 if found else 0
