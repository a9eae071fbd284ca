"""Compile recorded kernel specializations into a Triton cache, with Triton alone (no torch).

    python benchmarks/build_triton_cache.py PLAN.json CACHE_DIR    # here, before a GPU session
    python benchmarks/build_triton_cache.py --relocate CACHE_DIR   # there, before the first launch

PLAN.json comes from `python -m unet_fast.gpu.plan record` (unet_fast/gpu_plan.py). Run this under
the GPU machines' own Python and Triton (3.12 and 3.6.0 today): Triton's cache key hashes its
compiled library, which differs between Python versions, so only a cache built by the same wheel
is found there. No torch is needed: the kernel modules in kernels/ import Triton alone.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a cache hit reads: the metadata and the binary. The IR Triton keeps beside them (source,
# ttir, ttgir, llir, ptx: about 80% of the bytes) is left out, so the cache fits the device
# tool's 64 MiB for carried files.
KEPT_SUFFIXES = (".json", ".cubin")


def _groups(cache_dir):
    for entry in sorted(os.listdir(cache_dir)):
        folder = os.path.join(cache_dir, entry)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith("__grp__"):
                    yield folder, os.path.join(folder, name)


def slim_and_relocate(cache_dir: str, slim: bool) -> int:
    """Point every kernel group of the cache at the files where they are now. Triton records
    absolute paths in its `__grp__*.json` files and treats a group whose files are missing as a
    miss, so a cache built in one checkout misses in another until its groups are rewritten.
    With `slim`, files other than KEPT_SUFFIXES are deleted and dropped from the groups."""
    count = 0
    for folder, group_path in _groups(os.path.abspath(cache_dir)):
        with open(group_path) as f:
            children = json.load(f)["child_paths"]
        kept = {}
        for name in children:
            path = os.path.join(folder, name)
            if slim and not name.endswith(KEPT_SUFFIXES):
                if os.path.exists(path):
                    os.remove(path)
                continue
            kept[name] = path
        with open(group_path, "w") as f:
            json.dump({"child_paths": kept}, f)
        count += 1
    return count


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


def build_launchers(compiled) -> int:
    """Build the C launcher of each compiled kernel and Triton's CUDA utilities into the cache.

    On the GPU, Triton compiles one small C extension per kernel signature with gcc at its first
    launch (about a second each), cached by a hash of its source and the platform, so it can be
    built here: linked against a stand-in libcuda.so.1 (it binds the real one when loaded on the
    GPU machine) and loaded with lazy binding (its CUDA calls are never made here). Newer
    Tritons (3.9) launch every kernel through one generic launcher: nothing to build then."""
    from triton.backends.nvidia import driver
    if not hasattr(driver, "make_launcher"):
        return 0
    if shutil.which("cc") is None:
        print("build_triton_cache: no C compiler here; the GPU will build its launchers", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as stub:
        source = os.path.join(stub, "empty.c")
        open(source, "w").close()
        subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o",
                        os.path.join(stub, "libcuda.so.1"), source], check=True)
        os.environ["TRITON_LIBCUDA_PATH"] = stub
        sys.setdlopenflags(os.RTLD_LAZY)
        driver.CudaUtils()
        for kernel in compiled:
            driver.CudaLauncher(kernel.src, kernel.metadata)
    return len(compiled)


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
    compiled = []
    with offline_target(plan["capability"]):
        for i, entry in enumerate(plan["specializations"], 1):
            compiled.append(kernels[entry["kernel"]].preload(entry["specialization"]))
            print(f"\r{i}/{len(plan['specializations'])} kernels", end="", file=sys.stderr, flush=True)
    build_launchers(compiled)
    slim_and_relocate(cache_dir, slim=True)
    print(f"\ncompiled {len(plan['specializations'])} kernels for sm_{plan['capability']} into {cache_dir} "
          f"in {time.perf_counter() - start:.0f} s (Python {sys.version.split()[0]}, Triton {triton.__version__})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--relocate":
        print(f"build_triton_cache: {slim_and_relocate(sys.argv[2], slim=False)} kernel groups now point "
              f"into {os.path.abspath(sys.argv[2])}", file=sys.stderr)
        sys.exit(0)
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
