"""Where a run happened: device, versions, commit, date. Every table and JSON row carries it,
because a number without its conditions cannot be compared with anything."""
import datetime
import os
import platform
import subprocess

import torch


# The devices a benchmark measures. The GPU run's plan (unet_fast/gpu/plan.py) adds "meta" while
# it records the benchmarks' launches at the GPU's sizes without their memory; nobody times it.
BENCH_DEVICE_TYPES = ("cpu", "cuda")


def pick_device(requested=None) -> torch.device:
    """The GPU when there is one, else the CPU (or what --device asks for). ValueError for a
    device no benchmark measures, or a GPU torch does not see."""
    device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type not in BENCH_DEVICE_TYPES:
        raise ValueError(f"expected {' or '.join(BENCH_DEVICE_TYPES)} (cuda:N for one GPU), got {requested!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{requested} asked for, but torch sees no GPU")
    if device.type == "cuda" and device.index is None:
        # An explicit index: torch.cuda.set_device and friends reject a bare "cuda".
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{_cpu_name()} ({threads} thread{'s' if threads != 1 else ''})"


def _git(*args):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_commit() -> str:
    """The checkout's commit, '+dirty' when the working tree has changes; 'unknown' outside git."""
    sha = _git("rev-parse", "--short=12", "HEAD")
    if not sha:
        return "unknown"
    return sha + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return "not installed"


def loadavg():
    """The 1-minute load average, or None where the OS has none. On a shared CPU a load above
    the core count means other processes took cores mid-run, and CPU timings (OpenMP threads
    wait on each other) can be several times too slow: the table says so rather than hiding it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def free_cpu_threads(default_threads: int):
    """(threads, reason): how many threads a CPU benchmark should use on this machine now.

    On a shared machine, OpenMP threads of one op wait for each other at every barrier; when
    another process holds a core, the thread sharing it stalls the rest and a call can take 10-25x
    longer (measured here: a UNet training step, 85 ms alone, 2.1 s with two threads on two cores
    beside a busy process). One thread per free core keeps the numbers stable; the choice is
    recorded with every run."""
    load, cores = loadavg(), os.cpu_count() or 1
    if load is None or default_threads <= 1:
        return default_threads, "torch's default"
    free = max(1, min(default_threads, int(cores - load + 0.5)))
    if free == default_threads:
        return free, f"torch's default (load average {load} on {cores} cores)"
    return free, f"load average {load} on {cores} cores leaves {free} free; --threads overrides"


def metadata(device: torch.device) -> dict:
    # float32 rows on a GPU use TF32 where these allow it (the fused op follows cudnn's flag, as
    # nn.ConvTranspose2d does), so a float32 number means nothing without them.
    return dict(loadavg_start=loadavg(), cpu_count=os.cpu_count(),
                cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                device=device.type, device_name=device_name(device), torch=torch.__version__,
                triton=triton_version(), cuda=torch.version.cuda or "none",
                python=platform.python_version(), commit=git_commit(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
