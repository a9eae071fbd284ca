"""Compile recorded kernel specializations into a Triton cache, with Triton alone (no torch).

    python benchmarks/build_triton_cache.py PLAN.json CACHE_DIR

PLAN.json comes from `python -m unet_fast.gpu_plan record` (unet_fast/gpu_plan.py). Run this under
the GPU machines' own Python and Triton (3.12 and 3.6.0 today): Triton's cache key hashes its
compiled library, which differs between Python versions, so only a cache built by the same wheel
is found there. No torch is needed: the kernel modules in kernels/ import Triton alone.
"""
import importlib.util
import json
import os
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_kernels():
    """kernels/ as `unet_fast.kernels`, without the torch-importing `unet_fast` package around it:
    Triton checks that a specialization names the same module path it was recorded under."""
    package = types.ModuleType("unet_fast")
    package.__path__ = []
    sys.modules["unet_fast"] = package
    spec = importlib.util.spec_from_file_location(
        "unet_fast.kernels", os.path.join(REPO, "kernels", "__init__.py"),
        submodule_search_locations=[os.path.join(REPO, "kernels")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["unet_fast.kernels"] = module
    spec.loader.exec_module(module)
    return module


def main(plan_path: str, cache_dir: str) -> int:
    os.environ["TRITON_CACHE_DIR"] = os.path.abspath(cache_dir)
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    import_kernels()
    from unet_fast.kernels import up_concat_backward, up_concat_forward
    from unet_fast.kernels.offline_target import offline_target

    with open(plan_path) as f:
        plan = json.load(f)
    if plan["triton"] != triton.__version__:
        print(f"build_triton_cache: the plan was recorded with Triton {plan['triton']}, this is "
              f"{triton.__version__}; the GPU machines' cache needs one version", file=sys.stderr)
        return 2
    kernels = {name: getattr(module, name) for module in (up_concat_forward, up_concat_backward)
               for name in dir(module) if name.endswith("_kernel")}
    start = time.perf_counter()
    with offline_target(plan["capability"]):
        for i, entry in enumerate(plan["specializations"], 1):
            kernels[entry["kernel"]].preload(entry["specialization"])
            print(f"\r{i}/{len(plan['specializations'])} kernels", end="", file=sys.stderr, flush=True)
    print(f"\ncompiled {len(plan['specializations'])} kernels for sm_{plan['capability']} into {cache_dir} "
          f"in {time.perf_counter() - start:.0f} s (Python {sys.version.split()[0]}, Triton {triton.__version__})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
