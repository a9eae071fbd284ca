"""Whole MONAI / nnU-Net networks, fused (unet_fast.fuse) against unfused.

    unet-fast networks [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--layout contiguous|channels_last]
                       [--size 64] [--batch 2] [--json FILE]

Cases: nnU-Net's default 3d_fullres PlainConvUNet (features 32, 64, 128, 256, 320, 320; strides
1, 2, 2, 2, 2, 2; kernel 3; InstanceNorm3d, LeakyReLU, conv bias, 2 convolutions per stage) and
MONAI's BasicUNet 3D (its defaults), a batch of size^3 patches, the models' parameters and the
input in --dtype and --layout (channels_last: channels_last_3d). Modes: inference (eval, no_grad)
and one training step (forward, a float32 loss, backward, SGD step). The fused and unfused models
share weights. GPU: each provider timed alone by triton.testing.do_bench (CUDA events, median);
CPU: wall clock, the two providers in turns (timing.time_interleaved_cpu).

Peak memory of a training step, per provider, above what was allocated before it (inputs,
weights, gradients of a warm-up step): on a GPU torch.cuda.max_memory_allocated; on the CPU, in a
child process of its own (so that neither provider inherits the other's heap), the resident set's
high-water mark (VmHWM) during one step, reset just before it through /proc/self/clear_refs, minus
the resident set (VmRSS) at that point. The child runs with MALLOC_MMAP_THRESHOLD_=65536, so glibc
serves every tensor above 64 KiB with its own mapping and returns it when freed: the resident set
follows the live tensors instead of the allocator's cache. (tracemalloc does not see torch's
allocations.) Linux only; elsewhere the figure is None.

The JSON holds `meta` (device, versions, commit, date: environment.metadata) and `networks`, one
record per network, mode and provider (not `rows`: benchmarks/render_results.py tables only the
op benchmark's rows).
"""
import argparse
import copy
import json
import os
import subprocess
import sys

import torch
from torch import nn

from unet_fast import names
from unet_fast.adapters import fuse, fuse_report
from unet_fast.bench import environment
from unet_fast.bench.runner import cpu_fast_path
from unet_fast.bench.timing import time_fn, time_interleaved_cpu
from unet_fast.errors import InputError
from unet_fast.reference import relative_error
from unet_fast.workflow.atomic_write import atomic_write, check_report_file

NETWORKS = ("nnunet_3d_fullres", "monai_basicunet_3d")
PROVIDERS = ("unfused", "fused")
DTYPES = ("fp32", "bf16", "fp16")


def build(network: str) -> nn.Module:
    if network == "nnunet_3d_fullres":
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
        return PlainConvUNet(1, 6, (32, 64, 128, 256, 320, 320), nn.Conv3d, 3, (1, 2, 2, 2, 2, 2), 2, 2, 2,
                             conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                             nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    if network == "monai_basicunet_3d":
        from monai.networks.nets import BasicUNet
        return BasicUNet(3, 1, 2)
    raise ValueError(f"unknown network {network!r}; one of {', '.join(NETWORKS)}")


class Setting:
    """Where and how the networks run: device, dtype name, layout name, batch, patch edge."""

    def __init__(self, device, dtype="fp32", layout="contiguous", batch=2, size=64):
        self.device, self.dtype, self.layout, self.batch, self.size = torch.device(device), dtype, layout, batch, size

    def place(self, module_or_tensor):
        return module_or_tensor.to(device=self.device, dtype=names.torch_dtype(self.dtype),
                                   memory_format=names.memory_format(self.layout, 5))

    def input(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1)
        return self.place(torch.randn(self.batch, 1, self.size, self.size, self.size, generator=gen))


def twins(network: str, setting: Setting):
    """{'unfused': model, 'fused': a fused deep copy} with the same weights, placed by `setting`."""
    torch.manual_seed(0)
    model = setting.place(build(network))
    return {"unfused": model, "fused": fuse(copy.deepcopy(model))}


def _train_step(model, optimizer, x):
    def step():
        optimizer.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()
        optimizer.step()
    return step


def _proc_kib(field: str):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def memory_child(network: str, provider: str, setting: Setting) -> dict:
    """In this (child) process: one CPU training step's peak resident memory above its start, MiB."""
    torch.set_num_threads(int(os.environ.get("UNET_FAST_BENCH_THREADS", "1")))
    model = twins(network, setting)[provider].train()
    step = _train_step(model, torch.optim.SGD(model.parameters(), lr=1e-3), setting.input())
    step()  # warm-up: lazily allocated gradients and optimizer state now exist, as in training
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    start = _proc_kib("VmRSS")
    step()
    peak = _proc_kib("VmHWM")
    return dict(start_mib=start / 1024, peak_mib=peak / 1024, step_peak_mib=(peak - start) / 1024)


def _cpu_peak(network: str, provider: str, setting: Setting, threads: int):
    if not sys.platform.startswith("linux"):
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", UNET_FAST_BENCH_THREADS=str(threads))
    r = subprocess.run([sys.executable, "-m", "unet_fast", "networks", "--memory-child", network, provider,
                        "--size", str(setting.size), "--batch", str(setting.batch), "--dtype", setting.dtype,
                        "--layout", setting.layout], capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"memory measurement of {network}/{provider} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _gpu_peak(step, device) -> dict:
    step()  # warm-up, as in _cpu_peak's child
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return dict(start_mib=start / 2**20, peak_mib=peak / 2**20, step_peak_mib=(peak - start) / 2**20)


def peak_train_memory(network, provider, step, setting: Setting, threads: int):
    if setting.device.type == "cuda":
        return _gpu_peak(step, setting.device)
    if setting.device.type == "cpu":
        return _cpu_peak(network, provider, setting, threads)
    return None


def _time(fns, setting: Setting, warmup: int, repeats: int, rep_ms: int) -> list:
    """One statistics dict per callable: alone with do_bench on a GPU, in turns on the CPU."""
    if setting.device.type == "cuda":
        return [time_fn(fn, setting.device, gpu_warmup_ms=25, gpu_rep_ms=rep_ms) for fn in fns]
    return time_interleaved_cpu(fns, warmup, repeats)


def measure(setting: Setting, repeats: int, warmup: int, threads: int, networks=NETWORKS, rep_ms: int = 100,
            log=print) -> list:
    """One record per network, mode and provider (median and quantiles, peak memory of the
    training step, the fused model's error against the unfused one)."""
    records = []
    for network in networks:
        records += _measure_network(network, setting, repeats, warmup, threads, rep_ms)
        log(format_records(records[-4:]))
    return records


def _measure_network(network, setting: Setting, repeats, warmup, threads, rep_ms) -> list:
    """The four records of one network (its models and activations are freed on return)."""
    records = []
    models = twins(network, setting)
    steps = fuse_report(models["fused"])
    x = setting.input()
    with torch.no_grad():
        for m in models.values():
            m.eval()
        err = relative_error(models["fused"](x), models["unfused"](x))
        infer = [(lambda m=models[p]: m(x)) for p in PROVIDERS]
        stats = _time(infer, setting, warmup, repeats, rep_ms)
    for p, s in zip(PROVIDERS, stats):
        records.append(dict(network=network, mode="inference", provider=p, **s))
    records[-1]["relative_error_vs_unfused"] = err
    for m in models.values():
        m.train()
    train = [_train_step(models[p], torch.optim.SGD(models[p].parameters(), lr=1e-3), x) for p in PROVIDERS]
    stats = _time(train, setting, warmup, repeats, rep_ms)
    for p, fn, s in zip(PROVIDERS, train, stats):
        records.append(dict(network=network, mode="train_step", provider=p,
                            peak_memory=peak_train_memory(network, p, fn, setting, threads), **s))
    for r in records:
        r.update(batch=setting.batch, size=[setting.size] * 3, dtype=setting.dtype, layout=setting.layout,
                 fused_steps=len(steps.fused), decoder_steps=steps.steps, fuse_report=str(steps))
    return records


def format_records(records) -> str:
    lines = []
    for r in records:
        mem = r.get("peak_memory")
        mem = f"  train-step peak {mem['step_peak_mib']:.0f} MiB" if mem else ""
        spread = f"q20 {r['q20_ms']:.1f}, q80 {r['q80_ms']:.1f}"
        spread += f", min {r['min_ms']:.1f}" if r.get("min_ms") else ""
        lines.append(f"{r['network']:20s} {r['mode']:10s} {r['provider']:8s} median {r['median_ms']:9.1f} ms "
                     f"({spread}){mem}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: the GPU when there is one)")
    parser.add_argument("--dtype", default="fp32", help=f"one of {', '.join(DTYPES)} (or torch's spelling)")
    parser.add_argument("--layout", default="contiguous", help="contiguous or channels_last (channels_last_3d)")
    parser.add_argument("--size", type=int, default=64, help="patch edge, a multiple of 32, at least 64 (default 64)")
    parser.add_argument("--batch", type=int, default=2, help="patches per batch (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="CPU: timed calls per provider (3)")
    parser.add_argument("--warmup", type=int, default=1, help="CPU: warm-up calls per provider (1)")
    parser.add_argument("--rep-ms", type=int, default=100, help="GPU: do_bench's rep time in ms (100)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: one per free core)")
    parser.add_argument("--network", action="append", choices=NETWORKS, help="default: all")
    parser.add_argument("--json", metavar="FILE", help="write {meta, networks} here")
    parser.add_argument("--memory-child", nargs=2, metavar=("NETWORK", "PROVIDER"), help=argparse.SUPPRESS)


def _setting(args) -> Setting:
    """The run's Setting, every argument checked before a model is built."""
    for option in ("size", "batch", "repeats", "rep_ms"):
        if getattr(args, option) < 1:
            raise InputError(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    if args.warmup < 0:
        raise InputError(f"--warmup must be >= 0, got {args.warmup}")
    if args.size % 32 or args.size < 64:
        # Five 2x downsamplings, and nnU-Net's InstanceNorm needs more than one voxel at the bottom.
        raise InputError(f"--size must be a multiple of 32 and at least 64, got {args.size}")
    try:
        dtype, layout = names.dtype_name(args.dtype), names.layout_name(args.layout)
        device = torch.device("cpu") if args.memory_child else environment.pick_device(args.device)
    except (RuntimeError, ValueError) as e:
        raise InputError(str(e)) from None
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {args.dtype!r}")
    return Setting(device, dtype, layout, args.batch, args.size)


def run(args) -> int:
    setting = _setting(args)
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child, setting)))
        return 0
    if args.json:
        check_report_file(args.json, "--json")
    versions = _library_versions()
    saved_threads = torch.get_num_threads()
    threads, why = ((args.threads, "--threads") if args.threads else
                    environment.free_cpu_threads(saved_threads) if setting.device.type == "cpu" else
                    (saved_threads, "torch's default"))
    torch.set_num_threads(threads)
    if setting.device.type == "cuda":
        torch.cuda.set_device(setting.device)
    meta = environment.metadata(setting.device)
    meta.update(threads=threads, threads_reason=why, kind="whole networks, fused vs unfused (unet_fast.fuse)",
                memory_method=("torch.cuda.max_memory_allocated above the allocation before one training step"
                               if setting.device.type == "cuda" else
                               "VmHWM - VmRSS over one training step, child process, MALLOC_MMAP_THRESHOLD_=65536"),
                timer=("triton.testing.do_bench, each provider alone, median" if setting.device.type == "cuda" else
                       f"time.perf_counter, {args.warmup} warm-up + median of {args.repeats}, providers in turns"),
                command=_command(args, setting), **versions)
    try:
        with cpu_fast_path(setting.device):  # the PyTorch path on the CPU, even under TRITON_INTERPRET=1
            records = measure(setting, args.repeats, args.warmup, threads, args.network or NETWORKS, args.rep_ms)
    finally:
        torch.set_num_threads(saved_threads)
    common = {k: meta[k] for k in ("device", "device_name", "torch", "triton", "commit", "date")}
    records = [dict(r, **common) for r in records]
    meta["loadavg_end"] = environment.loadavg()
    if args.json:
        atomic_write(args.json, lambda tmp: _write_json(tmp, meta, records))
        print(f"wrote {args.json}")
    return 0


def _library_versions() -> dict:
    """The versions of the libraries whose networks run, or one line on how to install them."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return dict(monai=version("monai"), dynamic_network_architectures=version("dynamic_network_architectures"))
    except PackageNotFoundError as e:
        raise InputError(f"needs MONAI and nnU-Net's dynamic-network-architectures ({e.name} is not installed): "
                         'pip install -e ".[interop]" && pip install --no-deps '
                         "dynamic-network-architectures==0.4.4") from None


def _command(args, setting: Setting) -> str:
    """The command line that repeats this run (what the rendered tables quote)."""
    words = ["unet-fast networks", f"--device {setting.device.type}", f"--dtype {setting.dtype}",
             f"--layout {setting.layout}", f"--size {setting.size}", f"--batch {setting.batch}"]
    words += [f"--network {n}" for n in args.network or ()]
    if setting.device.type == "cuda":
        words.append(f"--rep-ms {args.rep_ms}")
    else:
        words += [f"--repeats {args.repeats}", f"--warmup {args.warmup}"]
        words += [f"--threads {args.threads}"] if args.threads else []
    return " ".join(words)


def _write_json(path, meta, records):
    with open(path, "w") as f:
        json.dump({"meta": meta, "networks": records}, f, indent=1)


if __name__ == "__main__":  # python -m unet_fast.bench.networks: the same as `unet-fast networks`
    from unet_fast.cli import main
    sys.exit(main(["networks", *sys.argv[1:]]))
