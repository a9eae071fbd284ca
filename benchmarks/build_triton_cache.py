"""Compile recorded kernel specializations into a Triton cache, with Triton alone (no torch).

    python benchmarks/build_triton_cache.py PLAN.json CACHE_DIR    # here, before a GPU run
    python benchmarks/build_triton_cache.py --relocate CACHE_DIR   # there, before the first launch
    python benchmarks/build_triton_cache.py --identity [CACHE_DIR] # this Triton's identity, and the cache's

PLAN.json comes from `python -m unet_fast.gpu.plan record` (unet_fast/gpu/plan.py). Run this under
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
# Written into the cache beside the kernels: who built it (IDENTITY_FILE) and what it holds (PLAN_FILE).
IDENTITY_FILE = "unet_fast_identity.json"
PLAN_FILE = "unet_fast_plan.json"


def _ptxas_path() -> str:
    import triton
    return os.environ.get("TRITON_PTXAS_PATH") or os.path.join(
        os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def identity() -> dict:
    """What Triton's cache keys depend on besides the kernel: its version, its compiled library,
    triton_key() (which hashes that library and Triton's Python files), ptxas and its version, and
    every TRITON_* variable. A cache is found only by a Triton with the same triton_key()."""
    import hashlib
    import triton
    try:
        from triton.runtime.cache import triton_key
    except ImportError:
        from triton.compiler.compiler import triton_key
    lib = os.path.join(os.path.dirname(triton.__file__), "_C", "libtriton.so")
    with open(lib, "rb") as f:
        lib_sha = hashlib.sha256(f.read()).hexdigest()
    ptxas = _ptxas_path()
    try:
        out = subprocess.run([ptxas, "--version"], capture_output=True, text=True, timeout=30).stdout
        ptxas_version = out.strip().splitlines()[-1] if out.strip() else "?"
    except OSError as e:
        ptxas_version = f"not runnable ({e.strerror})"
    return dict(python=sys.version.split()[0], triton=triton.__version__, libtriton_sha256=lib_sha,
                triton_key_sha256=hashlib.sha256(triton_key().encode()).hexdigest(),
                ptxas=ptxas, ptxas_version=ptxas_version,
                triton_env={k: v for k, v in sorted(os.environ.items()) if k.startswith("TRITON_")})


def print_identity(ident: dict, label: str, file=sys.stdout) -> None:
    print(f"{label}: Python {ident['python']}, Triton {ident['triton']}", file=file)
    print(f"{label}: sha256 of libtriton.so {ident['libtriton_sha256']}", file=file)
    print(f"{label}: sha256 of triton_key() {ident['triton_key_sha256']}", file=file)
    print(f"{label}: ptxas {ident['ptxas']}: {ident['ptxas_version']}", file=file)
    env = " ".join(f"{k}={v}" for k, v in ident["triton_env"].items()) or "(none)"
    print(f"{label}: TRITON_* variables: {env}", file=file)


def compare_identity(cache_dir: str) -> int:
    """Print this Triton's identity and the cache's; 0 when the cache was built by this Triton
    (same triton_key() and ptxas version), 1 when it is foreign, 2 when it has no identity."""
    here = identity()
    print_identity(here, "triton here")
    path = os.path.join(cache_dir, IDENTITY_FILE)
    if not os.path.exists(path):
        print(f"triton cache: {cache_dir} holds no {IDENTITY_FILE}: not a cache built by build_triton_cache.py")
        return 2
    with open(path) as f:
        built = json.load(f)
    print_identity(built, "cache built by")
    same = [k for k in ("triton_key_sha256", "ptxas_version") if here[k] == built[k]]
    if len(same) == 2:
        print("triton cache: built by this Triton (same triton_key() and ptxas): its kernels can be found")
        return 0
    differ = ", ".join(k for k in ("triton_key_sha256", "ptxas_version") if k not in same)
    print(f"triton cache: FOREIGN ({differ} differ): every carried kernel will miss")
    return 1


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
    builder = identity()  # before build_launchers sets TRITON_LIBCUDA_PATH to its stand-in
    start = time.perf_counter()
    compiled, failed = [], []
    entries = plan["specializations"]
    with offline_target(plan["capability"]):
        for i, entry in enumerate(entries, 1):
            try:
                compiled.append(kernels[entry["kernel"]].preload(entry["specialization"]))
            except Exception as e:  # one kernel that does not compile is a line, not the end of the build
                failed.append(entry)
                print(f"\nbuild_triton_cache: {entry['kernel']} ({', '.join(entry.get('parts', []))}) does not "
                      f"compile: {' '.join(f'{type(e).__name__}: {e}'.split())[:300]}", file=sys.stderr)
            print(f"\r{i}/{len(entries)} kernels", end="", file=sys.stderr, flush=True)
    launchers = build_launchers(compiled)
    slim_and_relocate(cache_dir, slim=True)
    with open(os.path.join(cache_dir, IDENTITY_FILE), "w") as f:
        json.dump(builder, f, indent=1)
    with open(os.path.join(cache_dir, PLAN_FILE), "w") as f:
        json.dump(plan, f)
    print(f"\ncompiled {len(compiled)} kernels ({launchers} launchers) for sm_{plan['capability']} into {cache_dir} "
          f"in {time.perf_counter() - start:.0f} s (Python {sys.version.split()[0]}, Triton {triton.__version__})"
          + (f"; {len(failed)} did not compile and will compile (and fail) on the GPU" if failed else ""),
          file=sys.stderr)
    return 3 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--relocate":
        print(f"build_triton_cache: {slim_and_relocate(sys.argv[2], slim=False)} kernel groups now point "
              f"into {os.path.abspath(sys.argv[2])}", file=sys.stderr)
        sys.exit(0)
    if len(sys.argv) in (2, 3) and sys.argv[1] == "--identity":
        if len(sys.argv) == 2:
            print_identity(identity(), "triton here")
            sys.exit(0)
        sys.exit(compare_identity(sys.argv[2]))
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
