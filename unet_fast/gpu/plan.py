"""The parts of benchmarks/gpu_run.sh, and the Triton cache plan recorded from them.

    python -m unet_fast.gpu.plan record PLAN.json [--arch sm_90] [--parts env,tests,steps,model,networks]
    python -m unet_fast.gpu.plan bench-calls PART     # the commands gpu_run.sh runs in PART
    python -m unet_fast.gpu.plan check-cache CACHE [--parts ...]  # launches a copy of a cache misses

`record` runs each part's own code on this CPU in record mode (unet_fast/gpu/record.py): the env
part's `unet-fast check` (TF32 on, float64 too), the tests part's `pytest -m gpu` (at the GPU's
sizes: the tests see a device whose type is "cuda"), and the benchmark commands of the steps,
model and networks parts on the meta device (at the GPU's sizes, with no memory and no
arithmetic: only the fused op's launches happen). Every Triton launch they make is recorded, not
run, as Triton's serialized specialization for sm_90 (dtypes, which strides are 1, which integers
divide by 16: channels_last model weights, a contiguous incoming gradient for a channels_last
output, whatever the code really passes), with the parts that launched it.
benchmarks/build_triton_cache.py then compiles them under the GPU machines' Python and Triton;
`check-cache` runs the parts again, compiling each launch for sm_90 against a (relocated) copy of
the cache, and counts the kernels it had to compile: those the GPU would compile in its window.

The benchmark commands are listed once, here (BENCH_CALLS): gpu_run.sh runs them on the GPU and
`record` runs them here, so the plan cannot drift from what the run launches.
"""
import argparse
import contextlib
import json
import os
import sys
import time

PART_NAMES = ("env", "tests", "steps", "model", "networks")

# part -> ((name of the JSON file in $OUT, unet-fast command, its arguments), ...): what gpu_run.sh
# runs, on the GPU, with --device cuda --json $OUT/NAME.json added.
BENCH_CALLS = {
    "steps": (
        ("steps", "bench", "--case up3,up2,up1 --dtype bfloat16 --layout channels_last --mode forward,backward,full "
                           "--provider fused,eager,compiled --compile-mode default"),
        ("steps-fp32", "bench", "--case up3,up2,up1 --dtype float32 --layout contiguous --mode forward "
                                "--provider fused,eager,compiled --compile-mode default"),
        # nnU-Net's 3d_fullres decoder steps (batch 2, 128^3 patch) and its anisotropic step: fused
        # against eager (ConvTranspose3d + cat); the compiled provider would cost minutes of
        # Inductor compiles for 18 more rows.
        ("steps-3d", "bench", "--case 3d5,3d4,3d3,3d2,3d1,3da --dtype bfloat16 --layout channels_last "
                              "--mode forward,backward,full --provider fused,eager"),
    ),
    "model": (("model", "bench", "--case unet --dtype bfloat16 --layout channels_last --provider fused,eager"),),
    # nnU-Net's 3d_fullres PlainConvUNet and MONAI's BasicUNet 3D, fused by unet_fast.fuse against
    # themselves: batch 2 of 128^3 patches, bf16, channels_last_3d, inference and a training step.
    "networks": (("networks", "networks", "--dtype bf16 --layout channels_last --size 128 --batch 2"),),
}

# Recording a bench call here: one call per row, only the providers that run the fused op, at the
# GPU's sizes (the bench's GPU defaults: batch 8 decoder steps from 512x512 images, nnU-Net's
# 3-D steps at batch 2 on a 128^3 patch, the UNet at batch 8 on 512x512), on the meta device.
# Smaller sizes do not record the same kernels: the autotuner's pruning, the weight gradient's
# split count and constexprs derived from the sizes all follow them
# (tests/test_gpu_plan_coverage.py keeps these equal to the bench's GPU defaults, and checks that
# a meta tensor launches what a CPU tensor of its shape and strides does).
GPU_SIZES = dict(batch=8, image_size=512, batch_3d=2, patch_size=128, model_batch=8, model_size=512)
RECORD_SIZES = GPU_SIZES
RECORD_OPTIONS = {
    "bench": ("--device meta --no-progress --sets 1 --warmup 0 --repeats 1 --compile "
              + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in RECORD_SIZES.items())),
    "networks": "--device meta --warmup 0 --repeats 1",
}


def _fused_only(arguments: str) -> list:
    words = arguments.split()
    i = words.index("--provider")
    providers = [p for p in words[i + 1].split(",") if p.startswith("fused")]
    return words[:i] + ["--provider", ",".join(providers)] + words[i + 2:] if providers else []


class _CudaLookingDevice(str):
    """The CPU as a device argument ("cpu" to torch) whose `.type` reads "cuda": test modules
    pick the GPU's sizes from `DEVICE.type` at import, then make their tensors on the CPU."""
    type = "cuda"
    index = None


class _TestsAtGpuSizes:
    """A pytest plugin: the tests' DEVICE looks like a GPU (before any test module imports it)."""

    def pytest_sessionstart(self, session):
        import helpers
        helpers.DEVICE = _CudaLookingDevice("cpu")


def record_env(_options) -> int:
    import torch

    from unet_fast import check
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default on a GPU: check runs float32 as TF32
    return check.run(argparse.Namespace(device="cpu", seed=0))


def record_tests(options) -> int:
    import pytest
    # As gpu_run.sh's tests part runs them: in this process (the plugin above), without pytest.ini's
    # addopts (pytest-xdist workers would not see the plugin).
    args = ["tests", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--ignore-glob=tests/test_fuse_*",
            "-W", "ignore"] + list(options.pytest_args)
    return int(pytest.main(args, plugins=[_TestsAtGpuSizes()]))


def _recorded_words(command: str, arguments: str) -> list:
    """The words `record` runs for one of BENCH_CALLS: the bench's fused providers only (the
    others launch nothing of ours); a networks run as it is (its unfused twin is free on meta)."""
    words = _fused_only(arguments) if command == "bench" else arguments.split()
    return [command, *words, *RECORD_OPTIONS[command].split()] if words else []


def record_bench(part: str):
    def run(_options) -> int:
        from unet_fast.cli import main
        rc = 0
        for _name, command, arguments in BENCH_CALLS[part]:
            words = _recorded_words(command, arguments)
            if words:
                rc |= main(words)
        return rc
    return run


RECORDERS = {"env": record_env, "tests": record_tests, "steps": record_bench("steps"),
             "model": record_bench("model"), "networks": record_bench("networks")}
# Parts whose code checks the op's results (so record mode computes them with PyTorch).
CHECKED_PARTS = ("env", "tests")


@contextlib.contextmanager
def _benchmarks_take_meta():
    """The benchmarks accept --device meta while the plan records (environment.BENCH_DEVICE_TYPES)."""
    from unet_fast.bench import environment
    saved = environment.BENCH_DEVICE_TYPES
    environment.BENCH_DEVICE_TYPES = (*saved, "meta")
    try:
        yield
    finally:
        environment.BENCH_DEVICE_TYPES = saved


def record(capability: int, parts=PART_NAMES, options=None, log=sys.stderr, after_part=None, compile=False):
    """A Recorder holding every specialization the parts launch, and {part: exit status}.
    after_part(recorder, status) is called as each part ends (the plan is written part by part,
    so a part that kills the process, out of memory say, leaves the parts before it).
    compile=True compiles each launch (finding it in TRITON_CACHE_DIR when it is there)."""
    from unet_fast.gpu.record import Recorder, record_mode
    options = options or argparse.Namespace(pytest_args=())
    recorder, status = Recorder(), {}
    for part in parts:
        recorder.part = part
        start, before = time.perf_counter(), len(recorder.entries)
        with record_mode(capability, recorder, compute=part in CHECKED_PARTS, compile=compile), \
                _benchmarks_take_meta():
            try:
                status[part] = RECORDERS[part](options)
            except SystemExit as e:
                status[part] = e.code if isinstance(e.code, int) else 1
        print(f"plan: {part}: exit {status[part]}, {len(recorder.keys(part))} kernel specializations "
              f"({len(recorder.entries) - before} new) in {time.perf_counter() - start:.0f} s", file=log)
        if after_part:
            after_part(recorder, status)
    return recorder, status


def compiled_kernels(folder) -> set:
    """The compiled kernels (.cubin files) in a Triton cache folder, by path."""
    return {os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".cubin")}


def check_cache(cache: str, capability: int, parts, options, log=sys.stderr) -> dict:
    """{part: kernels it had to compile}: the parts run with every launch compiled for
    sm_<capability> against `cache` (TRITON_CACHE_DIR), where a launch the cache holds compiles
    nothing. The cache keeps what was compiled: pass a copy (relocated, as gpu_run.sh does, by
    benchmarks/build_triton_cache.py --relocate). Run under the Triton, and the Python, the cache
    was built with (Triton's key hashes its compiled library), or every launch misses."""
    missed = {}
    saved = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = os.path.abspath(cache)
    seen = compiled_kernels(cache)

    def count(_recorder, status):
        nonlocal seen
        part = list(status)[-1]
        now = compiled_kernels(cache)
        missed[part] = len(now - seen)
        seen = now
        print(f"check-cache: {part}: {missed[part]} kernels compiled (missing from the cache)", file=log)
    try:
        record(capability, parts, options, log=log, after_part=count, compile=True)
    finally:
        if saved is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = saved
    return missed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unet_fast.gpu.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="record the plan from the parts")
    r.add_argument("plan", help="JSON file to write")
    r.add_argument("--arch", default="sm_90")
    r.add_argument("--parts", default=",".join(PART_NAMES))
    r.add_argument("--pytest-args", default="", help="extra pytest arguments for the tests part")
    c = sub.add_parser("check-cache", help="count the parts' launches that would miss a built cache")
    c.add_argument("cache", help="the Triton cache folder (benchmarks/build_triton_cache.py's output)")
    c.add_argument("--arch", default="sm_90")
    c.add_argument("--parts", default=",".join(PART_NAMES))
    c.add_argument("--pytest-args", default="", help="extra pytest arguments for the tests part")
    b = sub.add_parser("bench-calls", help="print a part's commands: NAME COMMAND ARGUMENTS..., one a line")
    b.add_argument("part", choices=sorted(BENCH_CALLS))
    args = parser.parse_args(argv)
    if args.command == "bench-calls":
        for name, command, arguments in BENCH_CALLS[args.part]:
            print(name, command, arguments)
        return 0
    os.environ["TRITON_INTERPRET"] = "0"  # before the kernels are decorated (conftest keeps it)
    import triton
    from unet_fast.kernels.offline_target import parse_arch
    capability = parse_arch(args.arch)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PART_NAMES)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PART_NAMES)}")
    options = argparse.Namespace(pytest_args=args.pytest_args.split())
    if args.command == "check-cache":
        missed = check_cache(args.cache, capability, parts, options)
        print(f"check-cache: {sum(missed.values())} launches of {', '.join(parts)} missed {args.cache} "
              f"({', '.join(f'{p} {n}' for p, n in missed.items())})", file=sys.stderr)
        return 1 if any(missed.values()) else 0

    def write(recorder, status):
        with open(args.plan + ".part", "w") as f:
            json.dump(dict(triton=triton.__version__, capability=capability, parts=list(status), status=status,
                           specializations=recorder.specializations()), f)
        os.replace(args.plan + ".part", args.plan)

    if os.path.exists(args.plan):
        os.remove(args.plan)
    recorder, status = record(capability, parts, options, after_part=write)
    specs = recorder.specializations()
    print(f"recorded {len(specs)} kernel specializations for sm_{capability} (Triton {triton.__version__}) "
          f"from {', '.join(parts)}", file=sys.stderr)
    failed = [p for p, rc in status.items() if rc]
    if failed:
        print(f"plan: parts that did not end cleanly here: {', '.join(failed)} (their launches up to "
              "the failure are recorded)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
