"""The decoder steps benchmarks/gpu_run.sh launches on a GPU, and the Triton cache made for them.

    python -m unet_fast.gpu.plan record PLAN.json [--arch sm_90]

records, without compiling, Triton's serialized specialization of every kernel and config those
launches compile; benchmarks/build_triton_cache.py then compiles them under the GPU machines'
Python and Triton, so the GPU's scarce minutes go to measuring. A kernel specializes on its
dtypes, its stride-1 dimensions and which integer arguments are divisible by 16, not on the sizes
themselves: the default steps at batch 8 (the benchmarks) and at batch 2 (tests/test_gpu.py)
compile the same kernels. The odd shapes below are the ones tests/test_gpu.py and
`unet-fast check` add.
"""
import argparse
import json
import sys

from unet_fast.cases import CHECK_STEP, ODD_STEPS, decoder_cases
# What each group of launches runs in (tf32: float32 with PyTorch's default cudnn.allow_tf32).
LAUNCHES = (
    (decoder_cases(batch=8), ("fp32", "tf32", "bf16", "fp16"), ("contiguous", "channels_last")),
    (ODD_STEPS, ("fp32", "bf16"), ("contiguous", "channels_last")),
    ((CHECK_STEP,), ("tf32", "fp16", "bf16", "fp64"), ("contiguous",)),
)


def record(capability: int) -> list:
    from unet_fast.gpu.static_compile import record_specializations
    specs = []
    for cases, dtypes, layouts in LAUNCHES:
        specs += record_specializations(capability, cases, dtypes, layouts)
    return list({s["specialization"]: s for s in specs}.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unet_fast.gpu.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["record"])
    parser.add_argument("plan", help="JSON file to write")
    parser.add_argument("--arch", default="sm_90")
    args = parser.parse_args(argv)
    import triton
    from unet_fast.kernels.offline_target import parse_arch
    capability = parse_arch(args.arch)
    specs = record(capability)
    with open(args.plan, "w") as f:
        json.dump(dict(triton=triton.__version__, capability=capability, specializations=specs), f)
    print(f"recorded {len(specs)} kernel specializations for sm_{capability} (Triton {triton.__version__})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
