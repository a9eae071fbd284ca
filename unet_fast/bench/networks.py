"""Whole networks, fused (`unet_fast.fuse`) against unfused, on the CPU:

    python -m unet_fast.bench.networks [--size 64] [--json FILE] [--repeats 3]

Cases: nnU-Net's default 3d_fullres PlainConvUNet (features 32, 64, 128, 256, 320, 320; strides
1, 2, 2, 2, 2, 2; kernel 3; InstanceNorm3d, LeakyReLU, conv bias, 2 convolutions per stage) and
MONAI's BasicUNet 3D (its defaults), batch 2, float32, a size^3 patch. Modes: inference
(eval, no_grad) and one training step (forward, loss, backward, SGD step). The fused and unfused
models share weights; providers are timed in turns (`time_interleaved_cpu`).

Peak memory of a training step, per provider, in a child process of its own (so that neither
provider inherits the other's heap): the resident set's high-water mark (VmHWM) during one step,
reset just before it through /proc/self/clear_refs, minus the resident set (VmRSS) at that point,
after a warm-up step. The child runs with MALLOC_MMAP_THRESHOLD_=65536, so glibc serves every
tensor above 64 KiB with its own mapping and returns it when freed: the resident set follows the
live tensors instead of the allocator's cache. (tracemalloc does not see torch's allocations.)
Linux only; elsewhere the figure is None.

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

from unet_fast.adapters import fuse, fuse_report
from unet_fast.bench.environment import free_cpu_threads, metadata
from unet_fast.bench.timing import time_interleaved_cpu
from unet_fast.reference import relative_error

NETWORKS = ("nnunet_3d_fullres", "monai_basicunet_3d")
PROVIDERS = ("unfused", "fused")
BATCH = 2


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


def twins(network: str):
    """{'unfused': model, 'fused': a fused deep copy} with the same weights."""
    torch.manual_seed(0)
    model = build(network)
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


def memory_child(network: str, provider: str, size: int) -> dict:
    """In this (child) process: one training step's peak resident memory above its start, MiB."""
    torch.set_num_threads(int(os.environ.get("UNET_FAST_BENCH_THREADS", "1")))
    model = twins(network)[provider].train()
    x = torch.randn(BATCH, 1, size, size, size)
    step = _train_step(model, torch.optim.SGD(model.parameters(), lr=1e-3), x)
    step()  # warm-up: lazily allocated gradients and optimizer state now exist, as in training
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    start = _proc_kib("VmRSS")
    step()
    peak = _proc_kib("VmHWM")
    return dict(start_mib=start / 1024, peak_mib=peak / 1024, step_peak_mib=(peak - start) / 1024)


def peak_train_memory(network: str, provider: str, size: int, threads: int):
    if not sys.platform.startswith("linux"):
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", UNET_FAST_BENCH_THREADS=str(threads))
    r = subprocess.run([sys.executable, "-m", "unet_fast.bench.networks", "--memory-child", network, provider,
                        "--size", str(size)], capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"memory measurement of {network}/{provider} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(size: int, repeats: int, warmup: int, threads: int, networks=NETWORKS) -> list:
    records = []
    for network in networks:
        models = twins(network)
        steps = fuse_report(models["fused"])
        x = torch.randn(BATCH, 1, size, size, size)
        with torch.no_grad():
            for m in models.values():
                m.eval()
            err = relative_error(models["fused"](x), models["unfused"](x))
            infer = [(lambda m=models[p]: m(x)) for p in PROVIDERS]  # noqa: B023 (called within this loop)
            stats = time_interleaved_cpu(infer, warmup, repeats)
        for p, s in zip(PROVIDERS, stats):
            records.append(dict(network=network, mode="inference", provider=p, **s))
        records[-1]["relative_error_vs_unfused"] = err
        for m in models.values():
            m.train()
        train = [_train_step(models[p], torch.optim.SGD(models[p].parameters(), lr=1e-3), x) for p in PROVIDERS]
        stats = time_interleaved_cpu(train, warmup, repeats)
        for p, s in zip(PROVIDERS, stats):
            records.append(dict(network=network, mode="train_step", provider=p,
                                peak_memory=peak_train_memory(network, p, size, threads), **s))
        for r in records[-4:]:
            r.update(batch=BATCH, size=[size] * 3, dtype="float32", fused_steps=len(steps.fused),
                     decoder_steps=steps.steps, fuse_report=str(steps))
        print(format_records(records[-4:]), flush=True)
    return records


def format_records(records) -> str:
    lines = []
    for r in records:
        mem = r.get("peak_memory")
        mem = f"  train-step peak {mem['step_peak_mib']:.0f} MiB" if mem else ""
        lines.append(f"{r['network']:20s} {r['mode']:10s} {r['provider']:8s} median {r['median_ms']:9.1f} ms "
                     f"(q20 {r['q20_ms']:.1f}, q80 {r['q80_ms']:.1f}, min {r['min_ms']:.1f}){mem}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m unet_fast.bench.networks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="patch edge (default 64: 2 x 64^3 float32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: one per free core)")
    parser.add_argument("--network", action="append", choices=NETWORKS, help="default: all")
    parser.add_argument("--json", help="write {meta, networks} here")
    parser.add_argument("--memory-child", nargs=2, metavar=("NETWORK", "PROVIDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child, args.size)))
        return 0
    threads, why = (args.threads, "--threads") if args.threads else free_cpu_threads(torch.get_num_threads())
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    meta = metadata(device)
    meta.update(threads=threads, threads_reason=why, kind="whole networks, fused vs unfused (unet_fast.fuse)",
                memory_method="VmHWM - VmRSS over one training step, child process, MALLOC_MMAP_THRESHOLD_=65536",
                command=" ".join(["python -m unet_fast.bench.networks"] + (argv if argv is not None else sys.argv[1:])))
    from importlib.metadata import version

    import monai
    meta.update(monai=monai.__version__, dynamic_network_architectures=version("dynamic_network_architectures"))
    records = run(args.size, args.repeats, args.warmup, threads, args.network or NETWORKS)
    common = {k: meta[k] for k in ("device", "device_name", "torch", "triton", "commit", "date")}
    records = [dict(r, **common) for r in records]
    meta["loadavg_end"] = __import__("unet_fast.bench.environment", fromlist=["loadavg"]).loadavg()
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "networks": records}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
