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

Before any model is built, a size whose training step cannot fit the device's memory is refused
(training_bytes: a lower bound traced on the meta device). Progress goes to stderr, a line per
network, mode and provider as each is measured.

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
from unet_fast.cli import positive_int
from unet_fast.errors import InputError
from unet_fast.reference import relative_error
from unet_fast.workflow.atomic_write import atomic_write, check_report_file
from unet_fast.workflow.distributed import available_memory

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


# Set by _cpu_peak in the child's environment: --memory-child is the parent's way to start it,
# not an option for people (it measures one provider in a fresh process and prints JSON).
MEMORY_CHILD_MARKER = "UNET_FAST_NETWORKS_MEMORY_CHILD"


def _check_memory_child(args) -> None:
    network, provider = args.memory_child
    if os.environ.get(MEMORY_CHILD_MARKER) != "1":
        raise InputError("--memory-child is internal to `unet-fast networks` (it starts one per provider "
                         "to measure peak memory); run `unet-fast networks` without it")
    if network not in NETWORKS or provider not in PROVIDERS:
        raise InputError(f"--memory-child takes one of {', '.join(NETWORKS)} and one of {', '.join(PROVIDERS)}, "
                         f"got {network!r} {provider!r}")


def memory_child(network: str, provider: str, setting: Setting) -> dict:
    """In this (child) process: one CPU training step's peak resident memory above its start, MiB."""
    torch.set_num_threads(int(os.environ["UNET_FAST_BENCH_THREADS"]))
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
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", UNET_FAST_BENCH_THREADS=str(threads),
               **{MEMORY_CHILD_MARKER: "1"})
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


def training_bytes(network: str, setting: Setting) -> int:
    """A lower bound on the memory a run of `network` at `setting` needs, to refuse sizes no device
    can hold (not a budget: the real need is larger). Traced on the meta device, so nothing is
    allocated: the output of every convolution and normalisation of one forward, which autograd
    keeps for the backward of a training step, plus the weights and gradients of the unfused and
    fused models, which the run holds side by side."""
    with torch.device("meta"):
        model = build(network)
    model = model.to(dtype=names.torch_dtype(setting.dtype))
    kept = [0]

    def count(module, inputs, output):
        kept[0] += output.numel() * output.element_size()
    saved = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, saved)]
    try:
        model(torch.empty(setting.batch, 1, setting.size, setting.size, setting.size, device="meta",
                          dtype=names.torch_dtype(setting.dtype)))
    finally:
        for hook in hooks:
            hook.remove()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return kept[0] + 4 * weights


def _check_memory(setting: Setting, chosen) -> None:
    """InputError, before any model is built, when a training step cannot fit the device."""
    have = available_memory(setting.device)
    if have is None:
        return
    for network in chosen:
        need = training_bytes(network, setting)
        if need > have:
            raise InputError(f"a training step of {network} on {setting.batch} patch(es) of {setting.size}^3 "
                             f"({setting.dtype}) needs at least {need / 2**30:.1f} GiB, more than the "
                             f"{have / 2**30:.1f} GiB {setting.device} has; lower --size or --batch")


def measure(setting: Setting, repeats: int, warmup: int, threads: int, networks=NETWORKS, rep_ms: int = 100,
            log=print, progress=None) -> list:
    """One record per network, mode and provider (median and quantiles, peak memory of the
    training step, the fused model's error against the unfused one). progress(line), if given,
    hears of each network and provider as it is measured."""
    records = []
    for network in networks:
        records += _measure_network(network, setting, repeats, warmup, threads, rep_ms,
                                    progress or (lambda line: None))
        log(format_records(records[-4:]))
    return records


def _measure_network(network, setting: Setting, repeats, warmup, threads, rep_ms, progress) -> list:
    """The four records of one network (its models and activations are freed on return)."""
    records = []
    progress(f"{network}: building the unfused and fused models")
    models = twins(network, setting)
    steps = fuse_report(models["fused"])
    x = setting.input()
    with torch.no_grad():
        for m in models.values():
            m.eval()
        err = relative_error(models["fused"](x), models["unfused"](x))
        infer = [(lambda m=models[p]: m(x)) for p in PROVIDERS]
        progress(f"{network}: timing inference, {' and '.join(PROVIDERS)}")
        stats = _time(infer, setting, warmup, repeats, rep_ms)
    for p, s in zip(PROVIDERS, stats):
        records.append(dict(network=network, mode="inference", provider=p, **s))
        progress(f"{network}: inference {p}: median {s['median_ms']:.1f} ms")
    records[-1]["relative_error_vs_unfused"] = err
    for m in models.values():
        m.train()
    train = [_train_step(models[p], torch.optim.SGD(models[p].parameters(), lr=1e-3), x) for p in PROVIDERS]
    progress(f"{network}: timing the training step, {' and '.join(PROVIDERS)}")
    stats = _time(train, setting, warmup, repeats, rep_ms)
    for p, fn, s in zip(PROVIDERS, train, stats):
        progress(f"{network}: train step {p}: median {s['median_ms']:.1f} ms; measuring its peak memory")
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
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads (default: one per free core)")
    parser.add_argument("--network", action="append", choices=NETWORKS,
                        help="a network to run; repeatable (default: all)")
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
    if args.memory_child:
        _check_memory_child(args)
    setting = _setting(args)
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child, setting)))
        return 0
    if args.json:
        check_report_file(args.json, "--json")
    _check_memory(setting, args.network or NETWORKS)
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
            records = measure(setting, args.repeats, args.warmup, threads, args.network or NETWORKS, args.rep_ms,
                              progress=lambda line: print(f"unet-fast networks: {line}", file=sys.stderr, flush=True))
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
