"""Benchmark the fused decoder step and UNet against the PyTorch reference (eager, compiled).

Cases: the default UNet's three decoder steps (up3 512->256 at 64x64, up2 256->128 at 128x128,
up1 128->64 at 256x256 input; batch 8 on a GPU), any --shape you give, and the whole UNet
(inference, and a training step: forward, cross-entropy, backward).

Each row: median and 20%/80% quantile times, speedup over the eager reference, bytes moved
(compulsory traffic, see unet_fast/bench/roofline.py), achieved GB/s and percent of the device's
copy ceiling, peak memory (GPU), and the relative error against a float64 reference.

On a GPU, timing is triton.testing.do_bench. On the CPU it is wall clock after a warm-up, the
fused op runs its PyTorch path (never Triton's interpreter), decoder steps default to batch 1
and float32, torch.compile providers are skipped unless --compile is given, and the thread count
defaults to the cores the load average leaves free (a shared machine otherwise gives numbers
10x too slow at random).

Examples:
    unet-fast bench --quick                           # well under a minute on a 2-core CPU
    unet-fast bench --json benchmarks/results/h100.json --plot speedup.png
    unet-fast bench --case up1 --dtype bf16 --layout channels_last --mode full
    unet-fast bench --shape 4,256,128,128,96,96 --provider fused,eager
"""
import math
import sys

from unet_fast import names
from unet_fast.errors import InputError
from unet_fast.workflow.atomic_write import atomic_write, atomic_write_plot, check_report_files
from unet_fast.workflow.progress import progress

QUICK = dict(batch=1, image_size=128, batch_3d=1, patch_size=32, model_batch=1, model_size=64, dtype="fp32",
             mode="full",
             provider="fused,eager", sets=2, warmup=1, repeats=3)
CPU = dict(batch=1, image_size=512, batch_3d=1, patch_size=64, model_batch=1, model_size=64, dtype="fp32",
           mode="forward,backward,full", provider="all", sets=2, warmup=2, repeats=5)
GPU = dict(batch=8, image_size=512, batch_3d=2, patch_size=128, model_batch=8, model_size=512, dtype="bf16,fp16,fp32",
           mode="forward,backward,full", provider="all", sets=3, warmup=None, repeats=None)
STEPS_2D = ("up3", "up2", "up1")
# nnU-Net's 3d_fullres decoder steps (unet_fast.cases.nnunet_3d_cases), deepest first, and its
# anisotropic (1, 2, 2) step.
STEPS_3D = ("3d5", "3d4", "3d3", "3d2", "3d1", "3da")
CASE_NAMES = (*STEPS_2D, *STEPS_3D, "unet", "custom")


def add_arguments(parser) -> None:
    g = parser.add_argument_group("what to run (defaults depend on the device and --quick)")
    g.add_argument("--quick", action="store_true",
                   help=f"a short run: steps at batch 1 on a {QUICK['image_size']}px image (real channel "
                        f"counts), UNet at batch 1 {QUICK['model_size']}px, float32, fwd+bwd, fused vs eager")
    g.add_argument("--device", help="cuda, cuda:1, cpu (default: the GPU when there is one)")
    g.add_argument("--case", help=f"comma list of {', '.join(CASE_NAMES)} (default: all; with --shape, "
                                  "only the given shapes)")
    g.add_argument("--shape", action="append", default=[], metavar="N,Cin,Cout,Cs,H,W",
                   help="an extra decoder step (x [N,Cin,H,W], skip [N,Cs,2H,2W]); repeatable")
    g.add_argument("--dtype", help="comma list of bf16, fp16, fp32 (or bfloat16, float16, float32), or 'all' "
                                   "(default: all on a GPU, float32 on the CPU)")
    g.add_argument("--layout", default="contiguous,channels_last", help="contiguous, channels_last")
    g.add_argument("--mode", help="comma list of forward, backward, full (= forward+backward)")
    g.add_argument("--provider", help="comma list of fused, eager, compiled, fused-compiled, or 'all'")
    g.add_argument("--compile-mode", default=None, metavar="MODE",
                   help="torch.compile mode of the compiled providers (default max-autotune-no-cudagraphs; "
                        "'default' compiles in a fraction of the time, for a GPU run on a budget)")
    g.add_argument("--compile", action="store_true",
                   help="on the CPU, also run the torch.compile providers (slow to compile)")
    s = parser.add_argument_group("sizes")
    s.add_argument("--batch", type=int, help="batch of the decoder-step cases (GPU 8, CPU 1)")
    s.add_argument("--image-size", type=int, help="image size the decoder steps come from (512)")
    s.add_argument("--batch-3d", type=int, help="batch of nnU-Net's 3-D steps, --case 3d5,...,3da (GPU 2, CPU 1)")
    s.add_argument("--patch-size", type=int, help="nnU-Net's 3-D patch, a multiple of 32 (GPU 128, CPU 64)")
    s.add_argument("--base-channels", type=int, default=64, help="UNet base_channels (64)")
    s.add_argument("--model-batch", type=int, help="batch of the UNet case (GPU 8, CPU 1)")
    s.add_argument("--model-size", type=int, help="image size of the UNet case (GPU 512, CPU 64)")
    t = parser.add_argument_group("timing")
    t.add_argument("--sets", type=int, help="input sets timed calls rotate among (GPU 3, CPU 2)")
    t.add_argument("--warmup", type=int, help="CPU warm-up calls (2)")
    t.add_argument("--repeats", type=int, help="CPU timed calls; the median is reported (5)")
    t.add_argument("--threads", type=int,
                   help="CPU: torch.set_num_threads (default: the cores other processes leave free, "
                        "from the load average; at least 1)")
    t.add_argument("--rep-ms", type=int, default=100, help="GPU: do_bench's rep time in ms (100)")
    t.add_argument("--bandwidth", type=float, metavar="GBPS",
                   help="the 100%% bandwidth floor; default: the copy ceiling measured before on "
                        "a known GPU, else a copy measured now")
    o = parser.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write every row, with device, versions, commit, date")
    o.add_argument("--plot", metavar="FILE.png", help="draw speedup bars per case")
    o.add_argument("--no-progress", action="store_true",
                   help="no progress (default: a bar when stderr is a terminal, else a line every 30 s)")


def _choices(text, allowed, option, canonical=None):
    try:
        return names.parse_list(text, allowed, option, canonical)
    except ValueError as e:
        raise InputError(str(e)) from None


def _positive(args, names):
    for name in names:
        v = getattr(args, name)
        if v is not None and v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {v}")


def resolve(args, device):
    """Fill every unset option from the device's (or --quick's) defaults."""
    defaults = QUICK if args.quick else (GPU if device.type == "cuda" else CPU)
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    _positive(args, ["batch", "batch_3d", "patch_size", "image_size", "base_channels", "model_batch", "model_size",
                     "sets", "repeats", "rep_ms", "threads"])
    return args


def build_cases(args):
    from unet_fast import cases as C
    names = _choices(args.case, CASE_NAMES, "--case") if args.case else (
        ["custom"] if args.shape else [*STEPS_2D, "unet"])
    if "custom" in names and not args.shape:
        raise InputError("--case custom needs at least one --shape N,Cin,Cout,Cs,H,W")
    try:
        steps = (C.decoder_cases(args.batch, args.image_size, args.base_channels)
                 + C.nnunet_3d_cases(args.batch_3d, args.patch_size))
        custom = [C.parse_shape(s, "custom" if i == 0 else f"custom{i + 1}") for i, s in enumerate(args.shape)]
    except ValueError as e:
        raise InputError(str(e)) from None
    chosen = [c for c in steps if c.name in names]
    if args.shape and (not args.case or "custom" in names):
        chosen += custom
    if "unet" in names:
        if args.model_size < 8:
            raise InputError(f"--model-size must be at least 8, got {args.model_size}")
        chosen.append(C.ModelCase("unet", args.model_batch, args.model_size, args.base_channels))
    return chosen


def run(args) -> int:
    import torch

    threads = torch.get_num_threads()
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # run() may be called in-process (tests): leave it as found


def _check_up_front(args) -> None:
    """Checked before anything is measured: the output files and the numbers that resolve()
    does not check (a negative warm-up, a bandwidth that is not a positive number)."""
    check_report_files([("--json", args.json, False), ("--plot", args.plot, True)])
    if args.warmup is not None and args.warmup < 0:
        raise InputError(f"--warmup must be >= 0, got {args.warmup}")
    if args.bandwidth is not None and not (math.isfinite(args.bandwidth) and args.bandwidth > 0):
        raise InputError(f"--bandwidth must be a positive number of GB/s, got {args.bandwidth}")


def _bandwidth_floor(args, device, device_name):
    """(floor in GB/s, where it comes from, the copy measured now): --bandwidth, else a ceiling
    measured before on this GPU model, else the copy measured at the start of this run."""
    from unet_fast.bench import roofline
    measured = roofline.measure_copy_gbps(device)
    known = roofline.known_copy_ceiling_gbps(device_name)
    if args.bandwidth:
        return args.bandwidth, "--bandwidth", measured
    if known:
        return known, "the copy ceiling measured before on this GPU model", measured
    return measured, "a 256 MiB tensor copy measured at the start of this run", measured


def _run(args) -> int:
    import torch

    from unet_fast import cases as C
    from unet_fast.bench import environment, report, runner
    from unet_fast.bench import providers as P

    _check_up_front(args)
    try:
        device = environment.pick_device(args.device)
    except (RuntimeError, ValueError) as e:
        raise InputError(f"--device: {e}") from None
    args = resolve(args, device)
    chosen = build_cases(args)
    dtypes = _choices(args.dtype, C.BENCH_DTYPES, "--dtype", names.dtype_name)
    layouts = _choices(args.layout, C.LAYOUTS, "--layout", names.layout_name)
    modes = _choices(args.mode, C.MODES, "--mode")
    providers = _choices(args.provider, P.PROVIDERS, "--provider")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # do_bench and the peak-memory counters use the current GPU
    threads_reason = "--threads" if args.threads else "torch's default"
    if args.threads:
        torch.set_num_threads(args.threads)
    elif device.type == "cpu":
        args.threads, threads_reason = environment.free_cpu_threads(torch.get_num_threads())
        torch.set_num_threads(args.threads)
    jobs = runner.plan(chosen, dtypes, layouts, modes, providers)
    if not jobs:
        raise InputError("the filters leave nothing to run")

    meta = environment.metadata(device)
    cfg = runner.RunConfig(device=device, n_sets=args.sets, cpu_warmup=args.warmup or 0,
                           cpu_repeats=args.repeats or 1, gpu_rep_ms=args.rep_ms,
                           allow_compile_on_cpu=args.compile,
                           compile_mode=args.compile_mode or P.DEFAULT_COMPILE_MODE)
    cfg.ceiling_gbps, source, measured = _bandwidth_floor(args, device, meta["device_name"])
    with runner.cpu_fast_path(device):
        fused_path = runner.fused_path_name(device)
    meta.update(ceiling_gbps=cfg.ceiling_gbps, ceiling_source=source, measured_copy_gbps=measured,
                fused_path=fused_path, n_sets=cfg.n_sets, quick=args.quick, threads=torch.get_num_threads(),
                threads_reason=threads_reason,
                timer=("triton.testing.do_bench, quantiles [0.5, 0.2, 0.8]" if device.type == "cuda" else
                       f"time.perf_counter, {cfg.cpu_warmup} warm-up + median of {cfg.cpu_repeats}, "
                       "the providers of a row group in turns"),
                compile_mode=cfg.compile_mode,
                options={k: v for k, v in vars(args).items() if not k.startswith("_")})

    print(f"unet-fast bench: {len(jobs)} rows on {meta['device_name']}; the fused op runs: {fused_path}",
          file=sys.stderr)
    if device.type == "cpu":
        print(f"unet-fast bench: {report.CPU_NOTE}", file=sys.stderr)
    with progress(total=len(jobs), desc="bench", unit="row", enabled=False if args.no_progress else None) as bar:
        rows = runner.run_all(jobs, cfg, progress=bar)
    meta["loadavg_end"] = environment.loadavg()
    print(report.format_bench_table(rows, meta))
    if args.json:
        atomic_write(args.json, lambda tmp: report.write_json(tmp, rows, meta))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        atomic_write_plot(args.plot, lambda f: report.plot_speedups(f, rows, meta))
        print(f"wrote {args.plot}", file=sys.stderr)
    failed = [r for r in rows if r["status"] == "error"]
    if failed:
        print(f"{len(failed)} row(s) failed; see their notes", file=sys.stderr)
    return 1 if failed else 0
